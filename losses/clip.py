"""The ``clip`` loss: symmetric softmax InfoNCE (image→text and text→image cross-entropy, averaged).

Distributed as open_clip's ``--local-loss --gather-with-grad``: both feature sets are all-gathered
with autograd, each rank scores its ``B`` rows against all ``N = W·B`` columns (``B×N`` logits,
never ``N×N``) with labels offset by ``rank·B``, and returns the mean cross-entropy of its rows.

Compatible positives (``match_keys``): a row's target is uniform over all its positives (its own
pair and every pair sharing a match key, on any rank), a multi-positive soft-target cross-entropy;
without other positives it is the one-hot target above.

Gradient convention (what the trainer relies on): the mean over ranks of the returned losses is
the single-process loss of the concatenated batch, and the gradient reaching a rank's features is
``∂(Σ_ranks loss_r)/∂(its features)``, so DDP/FSDP averaging of parameter gradients (÷W) gives
exactly the single-process gradients. Do not rescale by the world size; log the all-reduced mean.

``logit_bias`` is added when given (the softmax ignores it, its gradient is 0, but the parameter
is used, so DDP never reports it unused).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from core import LossSpec, all_gather_with_grad, hookimpl, positive_mask, world

INIT_LOGIT_SCALE = math.log(1 / 0.07)  # CLIP's init: temperature 0.07


class ClipLoss(nn.Module):
    """Softmax InfoNCE of this rank's rows against the global batch (see the module docstring)."""

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor, logit_bias: torch.Tensor | None = None, *,
                match_keys: torch.Tensor | None = None) -> torch.Tensor:
        rank, size = world()
        if size > 1:
            all_image, all_text = all_gather_with_grad(image_features), all_gather_with_grad(text_features)
        else:
            all_image, all_text = image_features, text_features
        per_image = logit_scale * image_features @ all_text.T
        per_text = logit_scale * text_features @ all_image.T
        if logit_bias is not None:
            per_image, per_text = per_image + logit_bias, per_text + logit_bias
        batch = image_features.shape[0]
        if match_keys is None:
            target = torch.arange(rank * batch, (rank + 1) * batch, device=image_features.device)
        else:
            mask = positive_mask(match_keys, all_gather_with_grad(match_keys), rows=batch, columns=all_text.shape[0],
                                 diagonal=rank * batch, device=per_image.device).to(per_image.dtype)
            target = mask / mask.sum(1, keepdim=True)
        return (F.cross_entropy(per_image, target) + F.cross_entropy(per_text, target)) / 2


def identity_value(batch: int, scale: float, bias: float | None) -> float:
    """Loss for ``batch`` matched pairs whose logits are ``scale·I + bias`` (the bias cancels)."""
    return math.log1p((batch - 1) * math.exp(-scale))


def build(cfg) -> ClipLoss:
    return ClipLoss()


@hookimpl
def register_losses(register):
    register(LossSpec(
        name="clip", build=build, init_logit_scale=INIT_LOGIT_SCALE, init_logit_bias=None,
        identity_value=identity_value,
        description="Softmax InfoNCE (CLIP), local B×N logits with gather-with-grad across ranks."))
