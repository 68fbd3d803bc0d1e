"""A transformers SigLIP (fixed resolution) or SigLIP2 NaFlex model behind the clipcore contract."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from transformers import Siglip2Model, SiglipModel
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.siglip.modeling_siglip import SiglipEncoderLayer
from transformers.models.siglip2.modeling_siglip2 import Siglip2EncoderLayer

from core import ClipcoreError, ClipModel, PreprocessSpec, TowerIntermediates, run_blocks

from backbones.siglip2.tokenizer import SiglipTokenizer

NAFLEX_EXPORT_REFUSAL = (
    "SigLIP2 NaFlex resizes its position grid per image and takes data-dependent patch counts, which "
    "a static ONNX graph cannot express; export a fixed-resolution SigLIP2 type instead "
    "(e.g. siglip2-so400m-patch16-256)")


class SiglipClip(ClipModel):
    """SigLIP2 towers from transformers.

    Text: no attention mask (mask policy ``none``), last-position pooling, see
    :mod:`backbones.siglip2.tokenizer`. Images: ``[B, 3, H, W]`` normalised tensors at the size in
    ``preprocess``. For NaFlex (``Siglip2Model``) the tensor is cut into 16x16 patches here (row
    major, each patch flattened as (row, column, channel) like ``Siglip2ImageProcessor``) with an
    all-ones patch mask and spatial shape ``(H/16, W/16)``: every image of a batch has the same
    patch grid, so no padding is needed.
    """

    def __init__(self, hf_model: SiglipModel | Siglip2Model, *, model_type: str, tokenizer: SiglipTokenizer,
                 preprocess: PreprocessSpec):
        super().__init__()
        self.model_type = model_type
        self.naflex = isinstance(hf_model, Siglip2Model)
        self.vision_tower = hf_model.vision_model
        self.text_tower = hf_model.text_model
        self.logit_scale = nn.Parameter(hf_model.logit_scale.detach().reshape(()).clone())
        self.logit_bias = nn.Parameter(hf_model.logit_bias.detach().reshape(()).clone())
        self.embed_dim = hf_model.config.text_config.projection_size
        self.patch_size = hf_model.config.vision_config.patch_size
        self.tokenizer, self.preprocess = tokenizer, preprocess
        self.fsdp_wrap_classes = (Siglip2EncoderLayer,) if self.naflex else (SiglipEncoderLayer,)
        self.lora_targets = dict.fromkeys(("vision", "text"), ("q_proj", "k_proj", "v_proj", "out_proj"))
        self.export_refusal = NAFLEX_EXPORT_REFUSAL if self.naflex else None

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        if self.naflex:
            patches, mask, shapes = self.patchify(images)
            out = self.vision_tower(pixel_values=patches, pixel_attention_mask=mask, spatial_shapes=shapes)
        else:
            expected = (self.preprocess.height, self.preprocess.width)
            if tuple(images.shape[-2:]) != expected:
                raise ClipcoreError(f"{self.model_type} takes {expected[0]}x{expected[1]} images, got "
                                    f"{images.shape[-2]}x{images.shape[-1]}", where="model.type",
                                    fix="resize images with the model's preprocessing spec")
            out = self.vision_tower(pixel_values=images)
        return out.pooler_output

    def patchify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """NaFlex inputs for same-size images: patches ``[B, N, p*p*3]``, mask ``[B, N]``, shapes ``[B, 2]``."""
        b, c, h, w = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ClipcoreError(f"{self.model_type} takes images whose sides are multiples of {p}, got {h}x{w}",
                                where="model.image_size", fix=f"set model.image_size to a multiple of {p}")
        gh, gw = h // p, w // p
        patches = images.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, p * p * c)
        mask = torch.ones(b, gh * gw, dtype=torch.long, device=images.device)
        shapes = torch.tensor([[gh, gw]] * b, dtype=torch.long, device=images.device)
        return patches, mask, shapes

    def text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_tower(input_ids=input_ids).pooler_output

    def image_intermediates(self, images: torch.Tensor, indices: Sequence[int], *, stop_early: bool,
                            features: bool) -> TowerIntermediates:
        """The encoder layers' outputs (SigLIP has no class token: every token is a patch); the
        features are the attention-pooling head's output, as in ``image_features``."""
        tower, mask = self.vision_tower, None
        grid = (images.shape[-2] // self.patch_size, images.shape[-1] // self.patch_size)
        if self.naflex:
            patches, mask, shapes = self.patchify(images)
            x = tower.embeddings(patches, shapes)
            attention = create_bidirectional_mask(config=tower.config, inputs_embeds=x, attention_mask=mask)
        else:
            x, attention = tower.embeddings(images), None
        x, taken = run_blocks(tower.encoder.layers, x, indices, stop_early=stop_early, args=(attention,))
        pooled = None
        if features:
            pooled = tower.head(tower.post_layernorm(x), mask) if self.naflex else tower.head(tower.post_layernorm(x))
        return TowerIntermediates(tokens=taken, grids=[grid] * len(taken), mask=None if mask is None else mask.bool(),
                                  features=pooled, final_norm=tower.post_layernorm)

    def text_intermediates(self, input_ids: torch.Tensor, indices: Sequence[int], *, stop_early: bool,
                           features: bool) -> TowerIntermediates:
        """The encoder layers' outputs; the features pool the last position after the final norm."""
        tower = self.text_tower
        x = tower.embeddings(input_ids=input_ids)
        attention = create_bidirectional_mask(config=tower.config, inputs_embeds=x, attention_mask=None)
        x, taken = run_blocks(tower.encoder.layers, x, indices, stop_early=stop_early, args=(attention,))
        pooled = tower.head(tower.final_layer_norm(x)[:, -1, :]) if features else None
        return TowerIntermediates(tokens=taken, features=pooled, final_norm=tower.final_layer_norm)

    def vision_blocks(self) -> Sequence[nn.Module]:
        return list(self.vision_tower.encoder.layers)

    def text_blocks(self) -> Sequence[nn.Module]:
        return list(self.text_tower.encoder.layers)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for tower in (self.vision_tower, self.text_tower):
            # transformers >= 5.2x names it activation_checkpointing_*; earlier 5.x gradient_checkpointing_*
            if hasattr(tower, "activation_checkpointing_enable"):
                if enable:
                    tower.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                else:
                    tower.activation_checkpointing_disable()
            elif enable:
                tower.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            else:
                tower.gradient_checkpointing_disable()

