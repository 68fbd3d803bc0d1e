"""An open_clip model (vision tower + text tower, ``CustomTextCLIP`` layout) behind the clipcore contract."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from core import ClipcoreError, ClipModel, PreprocessSpec, TowerIntermediates

from backbones.openclip.tokenizer import OpenClipTokenizer


def tower_blocks(tower: nn.Module) -> list[nn.Module]:
    """The ordered transformer blocks of an open_clip tower (open_clip ViT / text transformer,
    timm ViT trunk, Hugging Face text encoder); empty when the tower has none clipcore knows."""
    for path in ("transformer.resblocks", "trunk.blocks", "transformer.encoder.layer"):
        module = tower
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module):
            return list(module)
    return []


class OpenClipModel(ClipModel):
    """open_clip towers: ``vision_tower`` is ``model.visual``, ``text_tower`` is ``model.text``
    (the ``CustomTextCLIP`` layout; CLIP-layout state dicts are converted on load).
    Logit scale and bias are 0-d parameters here (open_clip keeps shape [] or [1])."""

    def __init__(self, clip: nn.Module, *, model_type: str, embed_dim: int, tokenizer: OpenClipTokenizer,
                 preprocess: PreprocessSpec):
        super().__init__()
        self.model_type, self.embed_dim = model_type, embed_dim
        self.vision_tower, self.text_tower = clip.visual, clip.text
        self.logit_scale = nn.Parameter(clip.logit_scale.detach().reshape(()).clone())
        bias = getattr(clip, "logit_bias", None)
        self.logit_bias = None if bias is None else nn.Parameter(bias.detach().reshape(()).clone())
        self.tokenizer, self.preprocess = tokenizer, preprocess
        blocks = {"image": tower_blocks(self.vision_tower), "text": tower_blocks(self.text_tower)}
        for name, found in blocks.items():
            if not found:
                tower = self.vision_tower if name == "image" else self.text_tower
                raise ClipcoreError(
                    f"{model_type}: clipcore does not know the blocks of its {name} tower "
                    f"({type(tower).__name__}), needed for tower locking, FSDP and checkpointing",
                    where="model.type", fix="use an open_clip model with a ViT/timm-ViT image tower and a "
                                            "transformer or Hugging Face text tower")
        self.fsdp_wrap_classes = tuple(dict.fromkeys(type(b) for b in blocks["image"] + blocks["text"]))
        # nn.MultiheadAttention reads out_proj.weight itself: peft adapts the fused in_proj weight
        self.lora_targets = dict.fromkeys(("vision", "text"), ("in_proj_weight", "c_fc", "c_proj"))

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.vision_tower(images)

    def text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_tower(input_ids)

    def image_intermediates(self, images: torch.Tensor, indices: Sequence[int], *, stop_early: bool,
                            features: bool) -> TowerIntermediates:
        """open_clip's own ``forward_intermediates`` of the image tower (ViT or timm trunk)."""
        found = self._tower_intermediates(self.vision_tower, images, indices, stop_early, features, "NCHW")
        maps = found["image_intermediates"]
        return TowerIntermediates(tokens=[m.flatten(2).transpose(1, 2) for m in maps],
                                  extra=found.get("image_intermediates_prefix"), grids=[tuple(m.shape[-2:]) for m in maps],
                                  features=found.get("image_features"),
                                  final_norm=_final_norm(self.vision_tower))

    def text_intermediates(self, input_ids: torch.Tensor, indices: Sequence[int], *, stop_early: bool,
                           features: bool) -> TowerIntermediates:
        """open_clip's own ``forward_intermediates`` of the text tower (a CoCa class token is the suffix)."""
        found = self._tower_intermediates(self.text_tower, input_ids, indices, stop_early, features, "NLC")
        return TowerIntermediates(tokens=found["text_intermediates"], extra=found.get("text_intermediates_suffix"),
                                  features=found.get("text_features"),
                                  final_norm=getattr(self.text_tower, "ln_final", None))

    def _tower_intermediates(self, tower: nn.Module, inputs: torch.Tensor, indices: Sequence[int], stop_early: bool,
                             features: bool, fmt: str) -> dict:
        if not hasattr(tower, "forward_intermediates"):
            raise ClipcoreError(f"{self.model_type}: open_clip's {type(tower).__name__} has no forward_intermediates",
                                where="model.type", fix="use a model whose towers are open_clip ViT / timm ViT / "
                                                        "open_clip text transformers")
        return tower.forward_intermediates(inputs, indices=list(indices), stop_early=stop_early,
                                           intermediates_only=not features, output_fmt=fmt, output_extra_tokens=True)

    def vision_blocks(self) -> Sequence[nn.Module]:
        return tower_blocks(self.vision_tower)

    def text_blocks(self) -> Sequence[nn.Module]:
        return tower_blocks(self.text_tower)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.vision_tower.set_grad_checkpointing(enable)
        self.text_tower.set_grad_checkpointing(enable)


def _final_norm(visual: nn.Module) -> nn.Module | None:
    """The image tower's last norm: open_clip ViT's ``ln_post``, a timm trunk's ``norm``."""
    for found in (getattr(visual, "ln_post", None), getattr(getattr(visual, "trunk", None), "norm", None)):
        if isinstance(found, nn.Module) and not isinstance(found, nn.Identity):
            return found
    return None
