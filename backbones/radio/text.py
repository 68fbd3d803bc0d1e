"""The teacher text towers RADIO-CLIP pairs with its adaptor heads.

``siglip``: the text model of a SigLIP2 checkpoint (transformers ``SiglipTextModel``; last-position
pooling, no attention mask). ``clip``: the text tower of open_clip's DFN5B ViT-H-14-378 (open_clip
``TextTransformer``, causal mask, EOT pooling, QuickGELU). Only the text weights of the teacher
checkpoint are read; its image tower is never built.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

import torch
from open_clip.transformer import QuickGELU, ResidualAttentionBlock, TextTransformer
from torch import nn
from transformers import SiglipTextConfig, SiglipTextModel
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer

from core import ClipcoreError, TowerIntermediates, read_weights_file, run_blocks


class SiglipText(nn.Module):
    """``forward(input_ids [B, 64]) -> [B, D]``: SigLIP2 text model pooled output (head applied)."""

    layer_class = SiglipEncoderLayer

    def __init__(self, config: SiglipTextConfig):
        super().__init__()
        self.model = SiglipTextModel(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).pooler_output

    def blocks(self) -> Sequence[nn.Module]:
        return list(self.model.encoder.layers)

    def intermediates(self, input_ids: torch.Tensor, indices: Sequence[int], *, stop_early: bool,
                      features: bool) -> TowerIntermediates:
        """The encoder layers' outputs (no mask, as ``forward``); features: last position after the final norm."""
        model = self.model
        x = model.embeddings(input_ids=input_ids)
        x, taken = run_blocks(model.encoder.layers, x, indices, stop_early=stop_early, args=(None,))
        pooled = model.head(model.final_layer_norm(x)[:, -1, :]) if features else None
        return TowerIntermediates(tokens=taken, features=pooled, final_norm=model.final_layer_norm)

    def set_grad_checkpointing(self, enable: bool) -> None:
        if enable:
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            self.model.activation_checkpointing_disable()

    @property
    def out_dim(self) -> int:
        return self.model.config.projection_size or self.model.config.hidden_size


class ClipText(nn.Module):
    """``forward(input_ids [B, 77]) -> [B, D]``: open_clip CLIP text tower, pooled at the EOT token."""

    layer_class = ResidualAttentionBlock

    def __init__(self, *, embed_dim: int, context_length: int, vocab_size: int, width: int, heads: int,
                 layers: int, quick_gelu: bool):
        super().__init__()
        self.model = TextTransformer(context_length=context_length, vocab_size=vocab_size, width=width,
                                     heads=heads, layers=layers, output_dim=embed_dim,
                                     act_layer=QuickGELU if quick_gelu else nn.GELU)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids)

    def blocks(self) -> Sequence[nn.Module]:
        return list(self.model.transformer.resblocks)

    def intermediates(self, input_ids: torch.Tensor, indices: Sequence[int], *, stop_early: bool,
                      features: bool) -> TowerIntermediates:
        """open_clip's own ``forward_intermediates`` of the text transformer."""
        found = self.model.forward_intermediates(input_ids, indices=list(indices), stop_early=stop_early,
                                                 intermediates_only=not features, output_fmt="NLC")
        return TowerIntermediates(tokens=found["text_intermediates"], features=found.get("text_features"),
                                  final_norm=self.model.ln_final)

    def set_grad_checkpointing(self, enable: bool) -> None:
        self.model.set_grad_checkpointing(enable)

    @property
    def out_dim(self) -> int:
        return self.model.output_dim


def load_siglip_text(directory: Path) -> tuple[SiglipText, dict[str, float]]:
    """The text tower of the SigLIP/SigLIP2 model directory ``directory`` and its learned
    ``logit_scale``/``logit_bias`` (those present). Only text tensors are read."""
    tower = SiglipText(siglip_text_config(read_json(directory / "config.json")))
    files = _siglip_weight_files(directory)
    keys = set(tower.model.state_dict())
    state = read_tensors(files, lambda k: k.removeprefix(TEXT_PREFIX) in keys or k in LOGIT_KEYS)
    _load_strict(tower.model, {k.removeprefix(TEXT_PREFIX): v for k, v in state.items()}, files[0])
    return tower, _logits(state)


def load_clip_text(path: Path, *, quick_gelu: bool) -> tuple[ClipText, dict[str, float]]:
    """The text tower of an open_clip ``CLIP`` checkpoint (text keys at the top level) and its learned
    ``logit_scale``/``logit_bias``. The architecture is read from tensor shapes (heads = width / 64,
    open_clip's rule for OpenAI-layout weights); the activation cannot be, so ``quick_gelu`` says it."""
    state = read_tensors([path], lambda key: not key.startswith("visual."))
    try:
        width = state["token_embedding.weight"].shape[1]
        arch = dict(vocab_size=state["token_embedding.weight"].shape[0], width=width, heads=max(width // 64, 1),
                    context_length=state["positional_embedding"].shape[0],
                    embed_dim=state["text_projection"].shape[1],
                    layers=len({k.split(".")[2] for k in state if k.startswith("transformer.resblocks.")}))
    except KeyError as exc:
        raise ClipcoreError(f"{path} is not an open_clip CLIP state dict (no {exc.args[0]})",
                            where="model.radio.text_tower",
                            fix="point it at open_clip_model.safetensors / open_clip_pytorch_model.bin of "
                                "apple/DFN5B-CLIP-ViT-H-14-378") from None
    tower = ClipText(**arch, quick_gelu=quick_gelu)
    _load_strict(tower.model, state, path)
    return tower, _logits(state)


LOGIT_KEYS = ("logit_scale", "logit_bias")
TEXT_PREFIX = "text_model."  # SigLIP checkpoints store the text model under this prefix


def read_tensors(files: Sequence[Path], wanted: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """The tensors of ``files`` whose names ``wanted`` accepts (safetensors read selectively;
    PyTorch files with ``weights_only=True``)."""
    out: dict[str, torch.Tensor] = {}
    for file in files:
        if file.suffix == ".safetensors":
            from safetensors import safe_open

            try:
                with safe_open(str(file), framework="pt", device="cpu") as f:
                    out.update({k: f.get_tensor(k) for k in f.keys() if wanted(k)})
            except Exception as exc:
                raise ClipcoreError(f"cannot read {file}: {exc}", where="model.radio.text_tower",
                                    fix="the file is truncated or corrupt; download it again") from None
        else:
            state = read_weights_file(file, key="model.radio.text_tower").state_dict
            out.update({k: v for k, v in state.items() if wanted(k)})
    return out


def _siglip_weight_files(directory: Path) -> list[Path]:
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        return [directory / name for name in sorted(set(read_json(index)["weight_map"].values()))]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return [directory / name]
    raise ClipcoreError(f"{directory} has no weights (model.safetensors, its index, or pytorch_model.bin)",
                        where="model.radio.text_tower", fix="download the complete teacher repository")


def _load_strict(module: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or wrong:
        raise ClipcoreError(
            f"{source} does not hold the expected text tower: {len(missing)} tensors missing (e.g. {missing[:3]}), "
            f"{len(wrong)} of another shape (e.g. {wrong[:2]})", where="model.radio.text_tower",
            fix="point model.radio.text_tower at the teacher named in the README's RADIO-CLIP table")
    module.load_state_dict({k: state[k] for k in expected}, strict=True)


def _logits(state: dict[str, torch.Tensor]) -> dict[str, float]:
    return {k: float(state[k].reshape(())) for k in LOGIT_KEYS if k in state}


def siglip_text_config(config_json: dict) -> SiglipTextConfig:
    """The text config inside a SigLIP/SigLIP2 ``config.json`` (full model or text model alone)."""
    kind = config_json.get("model_type")
    if kind in ("siglip", "siglip2"):
        return SiglipTextConfig(**config_json.get("text_config", {}))
    if kind in ("siglip_text_model", "siglip2_text_model"):
        return SiglipTextConfig(**{k: v for k, v in config_json.items() if k != "model_type"})
    raise ClipcoreError(f"config.json has model_type {kind!r}; a SigLIP2 text tower needs 'siglip' or 'siglip2'",
                        where="model.radio.text_tower", fix="point it at a SigLIP2 Hugging Face model directory")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ClipcoreError(f"cannot read {path}: {exc}", where="model.radio.text_tower",
                            fix="the teacher directory is incomplete; download it again") from None
