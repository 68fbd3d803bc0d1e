"""RADIO-CLIP as a :class:`core.backbone.ClipModel`: C-RADIOv3 + adaptor head / teacher text tower."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from core import ClipModel, PreprocessSpec, Tokenizer, TowerIntermediates

from backbones.radio.text import ClipText, SiglipText
from backbones.radio.vision import RadioVisionTower


class RadioClip(ClipModel):
    """Image embedding = the adaptor head on the teacher's CLS token (fp32); text embedding = the
    teacher's own text tower. Both are unnormalised; ``encode_*(normalize=True)`` normalises."""

    def __init__(self, *, model_type: str, adaptor: str, vision: RadioVisionTower, text: SiglipText | ClipText,
                 tokenizer: Tokenizer, preprocess: PreprocessSpec, logit_scale: nn.Parameter,
                 logit_bias: nn.Parameter | None):
        super().__init__()
        self.model_type, self.adaptor = model_type, adaptor
        self.embed_dim = vision.head.out_dim
        self.vision_tower, self.text_tower = vision, text
        self.tokenizer, self.preprocess = tokenizer, preprocess
        self.logit_scale, self.logit_bias = logit_scale, logit_bias
        self.export_refusal = None
        self.fsdp_wrap_classes = (type(vision.trunk.blocks[0]), text.layer_class)
        fused = any(isinstance(m, nn.MultiheadAttention) for m in text.modules())  # the CLIP teacher's tower
        text_targets = ("in_proj_weight", "c_fc", "c_proj") if fused else ("q_proj", "k_proj", "v_proj", "out_proj")
        self.lora_targets = {"vision": ("qkv", "proj"), "text": text_targets}

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.vision_tower(images)

    def text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_tower(input_ids)

    def image_intermediates(self, images: torch.Tensor, indices: Sequence[int], *, stop_early: bool,
                            features: bool) -> TowerIntermediates:
        """The backbone's own (timm) intermediates: patch tokens, and the CLS / register tokens as
        extra tokens; the features are the adaptor head on the teacher's CLS token, as ``image_features``."""
        tower = self.vision_tower
        found = tower.trunk.forward_intermediates(images, indices=list(indices), return_prefix_tokens=True,
                                                  stop_early=stop_early, output_fmt="NCHW",
                                                  intermediates_only=not features, output_dict=True)
        maps = found["image_intermediates"]
        pooled = tower.head(found["image_features"].index_select(1, tower.slot)[:, 0]) if features else None
        return TowerIntermediates(tokens=[m.flatten(2).transpose(1, 2) for m in maps],
                                  extra=found.get("image_intermediates_prefix"), grids=[tuple(m.shape[-2:]) for m in maps],
                                  features=pooled, final_norm=tower.trunk.norm)

    def text_intermediates(self, input_ids: torch.Tensor, indices: Sequence[int], *, stop_early: bool,
                           features: bool) -> TowerIntermediates:
        return self.text_tower.intermediates(input_ids, indices, stop_early=stop_early, features=features)

    def vision_blocks(self) -> Sequence[nn.Module]:
        return list(self.vision_tower.trunk.blocks)

    def text_blocks(self) -> Sequence[nn.Module]:
        return self.text_tower.blocks()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.vision_tower.trunk.set_grad_checkpointing(enable)
        self.text_tower.set_grad_checkpointing(enable)
