"""What clipcore knows about each C-RADIOv3 size and its adaptors, without any file.

Backbone architectures are timm's ``naflexvit_*_patch16_radio_v3`` (Apache-2.0). The adaptor
(``model.adaptor_name``) picks a teacher: ``siglip`` → the SigLIP2 text tower the size was
distilled from, ``clip`` → the DFN5B CLIP ViT-H/14-378 text tower (open_clip). Which CLS token
and which head belong to a teacher is read from the checkpoint's ``args.teachers``; the table
here only names the teacher family and the published text tower to look for.
"""

from __future__ import annotations

from typing import Literal

import attrs

from core import ConfigError

TextKind = Literal["siglip", "clip"]


@attrs.frozen(kw_only=True)
class TextTowerSpec:
    """A teacher text tower: where it is published and the architecture it has there.

    ``config`` is the architecture used when no weights are loaded (``model.pretrained = false``):
    transformers ``SiglipTextConfig`` fields for ``siglip``, open_clip ``CLIPTextCfg`` fields plus
    ``embed_dim``/``quick_gelu`` for ``clip``.
    """

    kind: TextKind
    hf_repo: str
    embed_dim: int
    teacher_type: str  # the ``type`` of the teacher entry in the checkpoint's ``args.teachers``
    config: dict


SIGLIP2_SO400M_TEXT = TextTowerSpec(
    kind="siglip", hf_repo="google/siglip2-so400m-patch16-naflex", embed_dim=1152, teacher_type="siglip2",
    config=dict(vocab_size=256000, hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                num_attention_heads=16, max_position_embeddings=64, projection_size=1152,
                hidden_act="gelu_pytorch_tanh", layer_norm_eps=1e-6, pad_token_id=0, eos_token_id=1,
                bos_token_id=2))
# width 1152 with a 1536-wide head (MODEL_FAMILIES.md §3.7); depth/heads as so400m [to confirm].
SIGLIP2_GIANT_TEXT = attrs.evolve(
    SIGLIP2_SO400M_TEXT, hf_repo="google/siglip2-giant-opt-patch16-384", embed_dim=1536,
    config={**SIGLIP2_SO400M_TEXT.config, "projection_size": 1536})
DFN_CLIP_TEXT = TextTowerSpec(
    kind="clip", hf_repo="apple/DFN5B-CLIP-ViT-H-14-378", embed_dim=1024, teacher_type="open_clip",
    config=dict(embed_dim=1024, quick_gelu=True, context_length=77, vocab_size=49408, width=1024,
                heads=16, layers=24))


@attrs.frozen(kw_only=True)
class RadioSize:
    """One C-RADIOv3 size.

    ``align_corners`` is the position-grid resize mode the released weights were trained with
    (timm ``_RADIO_ALIGN_CORNERS``: True for B and H, False for L and g). ``siglip_names`` are the
    ``model.adaptor_name`` spellings TAO accepts for this size's SigLIP2 teacher.
    """

    key: str
    timm_name: str
    width: int
    depth: int
    heads: int
    layer_scale: bool
    align_corners: bool
    hf_repo: str
    hub_file: str
    siglip_text: TextTowerSpec
    siglip_names: tuple[str, ...]

    @property
    def model_type(self) -> str:
        return f"c-radio_v3-{self.key}"

    def text_tower(self, adaptor: str) -> TextTowerSpec:
        return self.siglip_text if adaptor == "siglip" else DFN_CLIP_TEXT


SIZES: dict[str, RadioSize] = {s.model_type: s for s in (
    RadioSize(key="b", timm_name="naflexvit_base_patch16_radio_v3", width=768, depth=12, heads=12,
              layer_scale=True, align_corners=True, hf_repo="nvidia/C-RADIOv3-B",
              hub_file="c-radio_v3-b_half.pth.tar", siglip_text=SIGLIP2_SO400M_TEXT, siglip_names=("siglip2",)),
    RadioSize(key="l", timm_name="naflexvit_large_patch16_radio_v3", width=1024, depth=24, heads=16,
              layer_scale=True, align_corners=False, hf_repo="nvidia/C-RADIOv3-L",
              hub_file="c-radio-v3_l_half.pth.tar", siglip_text=SIGLIP2_SO400M_TEXT, siglip_names=("siglip2",)),
    RadioSize(key="h", timm_name="naflexvit_huge_patch16_radio_v3", width=1280, depth=32, heads=16,
              layer_scale=False, align_corners=True, hf_repo="nvidia/C-RADIOv3-H",
              hub_file="c-radio_v3-h_half.pth.tar", siglip_text=SIGLIP2_GIANT_TEXT, siglip_names=("siglip2-g",)),
    RadioSize(key="g", timm_name="naflexvit_giant_patch16_radio_v3", width=1536, depth=40, heads=24,
              layer_scale=False, align_corners=False, hf_repo="nvidia/C-RADIOv3-g",
              hub_file="c-radio_v3-g_half.pth.tar", siglip_text=SIGLIP2_GIANT_TEXT,
              siglip_names=("siglip2", "siglip2-g")),
)}

CLIP_NAMES = ("clip", "dfn", "dfn_clip")


def adaptor_names(size: RadioSize) -> dict[str, str]:
    """Every accepted ``model.adaptor_name`` for ``size`` → the canonical adaptor (``siglip``/``clip``)."""
    names = {"siglip": "siglip", **{n: "siglip" for n in size.siglip_names}}
    names.update({n: "clip" for n in CLIP_NAMES})
    return names


def resolve_adaptor(size: RadioSize, name: str | None) -> str:
    """The canonical adaptor for ``model.adaptor_name``, or a ConfigError listing the valid names."""
    names = adaptor_names(size)
    valid = ", ".join(names)
    if name is None or not str(name).strip():
        raise ConfigError(f"{size.model_type} needs a text adaptor", where="model.adaptor_name",
                          fix=f"set model.adaptor_name to one of: {valid}")
    canonical = names.get(str(name).strip().lower())
    if canonical is None:
        raise ConfigError(f"adaptor {name!r} is not available for {size.model_type}", where="model.adaptor_name",
                          fix=f"valid for {size.model_type}: {valid}")
    return canonical


def size_of(model_type: str) -> RadioSize:
    try:
        return SIZES[model_type]
    except KeyError:
        raise ConfigError(f"unknown RADIO model type {model_type!r}", where="model.type",
                          fix="valid: " + ", ".join(SIZES)) from None
