"""The six SigLIP2 So400m types: where their weights live and their architecture, known offline.

Fixed-resolution checkpoints are ``model_type: siglip`` (``SiglipModel``, Conv2d patch embedding);
NaFlex is ``model_type: siglip2`` (``Siglip2Model``, linear embedding of flattened patches).
"""

from __future__ import annotations

from typing import Any

import attrs

CONTEXT_LENGTH = 64
NAFLEX_PATCH_BUDGET = 256  # the published NaFlex checkpoint's 16x16 learned position grid


@attrs.frozen
class Siglip2Type:
    """One ``model.type``: its Hugging Face repository, patch size and (fixed) image size;
    ``image_size`` is ``None`` for NaFlex, whose input size is ``model.image_size``."""

    name: str
    hf_id: str
    patch_size: int
    image_size: int | None

    @property
    def naflex(self) -> bool:
        return self.image_size is None


def _type(suffix: str, patch: int, size: int | None) -> Siglip2Type:
    name = f"siglip2-so400m-{suffix}"
    return Siglip2Type(name, f"google/{name}", patch, size)


TYPES: dict[str, Siglip2Type] = {t.name: t for t in (
    _type("patch14-224", 14, 224),
    _type("patch14-384", 14, 384),
    _type("patch16-256", 16, 256),
    _type("patch16-384", 16, 384),
    _type("patch16-512", 16, 512),
    _type("patch16-naflex", 16, None),
)}

SO400M = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27, "num_attention_heads": 16}
SO400M_VOCAB = 256_000
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
TINY_PATCHES_PER_SIDE = 2


def hf_config(arch: Siglip2Type, *, tiny: bool = False, vocab_size: int = SO400M_VOCAB) -> Any:
    """The transformers ``SiglipConfig`` (``Siglip2Config`` for NaFlex) of ``arch`` at full
    (So400m) or tiny size."""
    from transformers import Siglip2Config, SiglipConfig

    dims = TINY if tiny else SO400M
    text = {**dims, "vocab_size": vocab_size, "max_position_embeddings": CONTEXT_LENGTH,
            "projection_size": dims["hidden_size"], "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2}
    if arch.naflex:
        side = TINY_PATCHES_PER_SIDE if tiny else int(NAFLEX_PATCH_BUDGET ** 0.5)
        vision = {**dims, "patch_size": arch.patch_size, "num_patches": side * side}
        return Siglip2Config(text_config=text, vision_config=vision)
    size = arch.patch_size * TINY_PATCHES_PER_SIDE if tiny else arch.image_size
    vision = {**dims, "patch_size": arch.patch_size, "image_size": size}
    return SiglipConfig(text_config=text, vision_config=vision)
