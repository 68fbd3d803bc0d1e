"""The RADIO-CLIP image tower: timm's C-RADIOv3 backbone, one CLS token, the adaptor head.

The backbone is timm ``naflexvit_*_patch16_radio_v3`` (Apache-2.0): a ViT/16 with 8 prefix tokens
(one CLS per teacher, then registers) and a 128×128 position grid ("CPE") that is resized to a
square of side max(h, w) patches and cropped top-left. Only the summary path runs: the per-patch
feature heads of the RADIO release are never built.
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from timm.models.naflexvit import NaFlexEmbeds, NaFlexVit
from torch import nn

from backbones.radio.adaptor import AdaptorHead


def create_trunk(timm_name: str, *, align_corners: bool, cpe_train_augment: bool = False,
                 **arch: object) -> NaFlexVit:
    """timm's RADIO backbone (random weights) with the given position-grid resize mode.

    ``arch`` overrides timm ``NaFlexVitCfg`` fields (tiny test sizes). With ``cpe_train_augment``
    the position embedding uses :class:`RandomWindowCPE` in training mode.
    """
    trunk = timm.create_model(timm_name, pretrained=False, num_classes=0,
                              pos_embed_align_corners=align_corners, **arch)
    if cpe_train_augment:
        trunk.embeds.__class__ = RandomWindowCPE  # same parameters and state dict, train-time behaviour added
    return trunk


class RandomWindowCPE(NaFlexEmbeds):
    """Train-time CPE augmentation, clipcore's implementation of the behaviour RADIO describes.

    In training mode each sample's position embedding comes from a random window of the grid
    (area fraction uniform in ``AREA``, aspect ratio log-uniform in ``ASPECT``) instead of the whole
    grid, and is zeroed with probability ``DROP``. The window is sampled exactly like the eval path
    samples the whole grid (bilinear, this size's ``align_corners``, square of side max(h, w),
    top-left crop), so a full window with no drop reproduces eval. Eval mode is timm's path.
    """

    AREA = (0.1, 1.0)
    ASPECT = (3 / 4, 4 / 3)
    DROP = 0.1

    def _apply_learned_pos_embed(self, x: torch.Tensor, grid_size: list[int]) -> None:
        if not self.training:
            return super()._apply_learned_pos_embed(x, grid_size)
        batch = x.shape[0]
        area = torch.empty(batch, device=x.device).uniform_(*self.AREA)
        log_aspect = torch.empty(batch, device=x.device).uniform_(*(math.log(a) for a in self.ASPECT))
        height = (area * log_aspect.exp()).sqrt().clamp(max=1.0)
        width = (area / log_aspect.exp()).sqrt().clamp(max=1.0)
        top = torch.rand(batch, device=x.device) * (1 - height)
        left = torch.rand(batch, device=x.device) * (1 - width)
        keep = (torch.rand(batch, device=x.device) >= self.DROP).to(x.dtype)
        pos = self.window_pos_embed(grid_size, top, left, height, width)
        x.add_(pos.to(x.dtype) * keep[:, None, None])

    def window_pos_embed(self, grid_size: list[int], top: torch.Tensor, left: torch.Tensor,
                         height: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
        """``[B, h*w, C]`` position embeddings read from per-sample windows of the grid, given as
        fractions of its extent (``top``/``left`` offsets, ``height``/``width`` sizes)."""
        h, w = grid_size
        side = max(h, w)
        steps = torch.arange(side, device=top.device, dtype=torch.float32)
        unit = steps / max(side - 1, 1) if self.pos_embed_align_corners else (steps + 0.5) / side
        ys = top[:, None] + height[:, None] * unit[None, :h]      # [B, h]
        xs = left[:, None] + width[:, None] * unit[None, :w]      # [B, w]
        grid = torch.stack(torch.broadcast_tensors(xs[:, None, :], ys[:, :, None]), dim=-1) * 2 - 1
        table = self.pos_embed.permute(0, 3, 1, 2).float().expand(top.shape[0], -1, -1, -1)
        pos = F.grid_sample(table, grid, mode="bilinear", padding_mode="border",
                            align_corners=self.pos_embed_align_corners)  # [B, C, h, w]
        return pos.flatten(2).transpose(1, 2)


class RadioVisionTower(nn.Module):
    """``forward(images [B, 3, H, W] normalised) -> [B, D]``: the adaptor head on CLS token ``slot``.

    H and W must be multiples of 16 (at most 2048). ``slot`` is a persistent buffer, so a
    checkpoint carries which CLS token its head reads.
    """

    def __init__(self, trunk: NaFlexVit, head: AdaptorHead, slot: int):
        super().__init__()
        self.trunk, self.head = trunk, head
        self.register_buffer("slot", torch.tensor([slot], dtype=torch.long))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.trunk.forward_features(images)
        return self.head(tokens.index_select(1, self.slot)[:, 0])
