"""The ``siglip`` loss: pairwise sigmoid loss with a learnable scale and bias (Zhai et al. 2023).

For logits ``z = s · image @ textᵀ + b`` with label ``+1`` for a matched pair (the pair itself
and, with ``match_keys``, every compatible positive, on any rank) and ``−1`` for every other pair, each rank returns ``Σ softplus(−label · z) / B`` over its ``B`` images against all
``N = W·B`` texts of the global batch (open_clip's normalisation: sum over pairs / local batch).

Gradient convention (what the trainer relies on): the mean over ranks of the returned losses is
the single-process loss of the concatenated batch, and the gradient reaching a rank's features is
``∂(Σ_ranks loss_r)/∂(its features)``, so DDP/FSDP averaging of parameter gradients (÷W) gives
exactly the single-process gradients. Do not rescale by the world size; log the all-reduced mean.

Memory: no ``B×N`` (let alone ``N×N``) tensor is kept for backward. Each block of logits is
computed, turned into its loss and its gradients, and freed (:class:`_SigmoidPairSum`), so the
peak is ``~3·chunk·M`` fp32 values for the block being processed, with ``M = B`` (``bidir``) or
``N`` (``gather``) and ``chunk`` = ``train.siglip.chunk_size`` image rows (default 4096; 0: all
``B``); chunking costs no measurable time (``bench/bench_siglip_loss.py``, README "Losses"). Texts reach the
other ranks either by ``bidir`` neighbour exchange (one ``B×D`` block in flight per direction) or
by ``gather`` (an all-gather of ``N×D`` text features, fewer and larger messages).
"""

from __future__ import annotations

import math
from typing import Literal

import attrs
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from core import (ConfigError, ConfigSection, LossSpec, all_gather_with_grad, hookimpl, positive_mask, ring_neighbours,
                  world)

INIT_LOGIT_SCALE = math.log(10.0)  # SigLIP's init: scale 10, bias -10

DIST_IMPLS = ("bidir", "gather")


def _check_dist_impl(_, attribute, value):
    if value not in DIST_IMPLS:
        raise ConfigError(f"unknown siglip distributed implementation {value!r}", where=f"train.siglip.{attribute.name}",
                          fix="use `bidir` (ring exchange of text features, least memory) or `gather` "
                              "(all-gather of text features, fewer messages)")


def _check_chunk_size(_, attribute, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"chunk size must be an integer >= 0, got {value!r}", where=f"train.siglip.{attribute.name}",
                          fix="use 0 to process the whole local batch at once, or e.g. 1024 to bound memory")


@attrs.define(kw_only=True)
class SiglipLossConfig:
    """How the sigmoid loss is computed across ranks (the siglip loss's own section)."""

    dist_impl: Literal["bidir", "gather"] = attrs.field(
        default="bidir", validator=_check_dist_impl,
        metadata={"help": "How text features reach the other ranks: bidir (ring exchange in both directions, "
                          "B×B logits per step) | gather (all-gather with grad, B×N logits per step)."})
    chunk_size: int = attrs.field(
        default=4096, validator=_check_chunk_size,
        metadata={"help": "Image rows per logits block: bounds the loss's peak memory at ~3·chunk_size·M fp32 "
                          "values (M: local batch for bidir, global batch for gather); 0: the whole local batch."})


SECTION = ConfigSection("train.siglip", SiglipLossConfig)


class _SigmoidPairSum(torch.autograd.Function):
    """``Σ_ij softplus(z_ij) − Σ_pos z_ij`` for ``z = s·I·Tᵀ + b`` (``= Σ softplus(−label·z)``),
    positives where :func:`core.positive_mask` of the keys and ``offset`` says so.

    The loss is a scalar, so forward computes the gradients too, block by block, and keeps only
    those (inputs-sized); backward multiplies them by the incoming scalar. Math runs in fp32 at least.
    """

    @staticmethod
    def forward(ctx, image, text, scale, bias, row_keys, column_keys, offset: int | None, chunk: int):
        need_grad = any(ctx.needs_input_grad[:4])
        with torch.autocast(image.device.type, enabled=False):
            dtype = torch.promote_types(image.dtype, torch.float32)
            img, txt, s = image.to(dtype), text.to(dtype), scale.to(dtype)
            b = bias.to(dtype) if bias is not None else s.new_zeros(())
            total = s.new_zeros(())
            if need_grad:
                grad_img, grad_txt = torch.empty_like(img), torch.zeros_like(txt)
                grad_s, grad_b = s.new_zeros(()), s.new_zeros(())
            rows = chunk or img.shape[0]
            for start in range(0, img.shape[0], rows):
                block = img[start:start + rows]
                dot = block @ txt.T
                z = torch.addcmul(b, dot, s)
                positives = _positives(None if row_keys is None else row_keys[start:start + rows], column_keys,
                                       z, None if offset is None else offset + start)
                total += F.softplus(z).sum() - z[positives].sum()
                if not need_grad:
                    continue
                g = z.sigmoid_()  # ∂/∂z of the summed loss: sigmoid(z) − [positive]
                g[positives] -= 1
                torch.mm(g, txt, out=grad_img[start:start + rows])
                grad_txt.addmm_(g.T, block)
                grad_s += dot.mul_(g).sum()  # dot is not needed after this
                grad_b += g.sum()
        if need_grad:
            grad_img.mul_(s)
            grad_txt.mul_(s)
            ctx.save_for_backward(grad_img.to(image.dtype), grad_txt.to(text.dtype),
                                  grad_s.reshape(scale.shape).to(scale.dtype),
                                  None if bias is None else grad_b.reshape(bias.shape).to(bias.dtype))
        return total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grads = [g * grad_out if g is not None else None for g in ctx.saved_tensors]
        return (*grads, None, None, None, None)


def _positives(row_keys: torch.Tensor | None, column_keys: torch.Tensor | None, z: torch.Tensor,
               diagonal: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column indices of the positives in the logits block ``z``."""
    rows, columns = z.shape
    if row_keys is None:  # the diagonal only: no mask needed
        first, stop = (0, 0) if diagonal is None else (max(0, -diagonal), max(0, min(rows, columns - diagonal)))
        index = torch.arange(first, max(first, stop), device=z.device)
        return index, index + (diagonal or 0)
    return positive_mask(row_keys, column_keys, rows=rows, columns=columns, diagonal=diagonal,
                         device=z.device).nonzero(as_tuple=True)


def sigmoid_pair_sum(image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None, *,
                     row_keys: torch.Tensor | None = None, column_keys: torch.Tensor | None = None,
                     positive_offset: int | None, chunk: int) -> torch.Tensor:
    """Summed sigmoid loss of ``image`` rows against ``text`` rows (see :class:`_SigmoidPairSum`)."""
    return _SigmoidPairSum.apply(image, text, scale, bias, row_keys, column_keys, positive_offset, chunk)


class SigLipLoss(nn.Module):
    """Sigmoid loss of this rank's pairs against the global batch; see the module docstring for
    normalisation, the gradient convention, compatible positives and memory."""

    def __init__(self, dist_impl: str = "bidir", chunk_size: int = 4096):
        super().__init__()
        self.config = SiglipLossConfig(dist_impl=dist_impl, chunk_size=chunk_size)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                logit_scale: torch.Tensor, logit_bias: torch.Tensor | None = None, *,
                match_keys: torch.Tensor | None = None) -> torch.Tensor:
        chunk = self.config.chunk_size
        rank, size = world()
        batch = text_features.shape[0]
        all_keys = all_gather_with_grad(match_keys) if match_keys is not None else None
        if size > 1 and self.config.dist_impl == "gather":
            all_text = all_gather_with_grad(text_features)
            total = sigmoid_pair_sum(image_features, all_text, logit_scale, logit_bias, row_keys=match_keys,
                                     column_keys=all_keys, positive_offset=rank * batch, chunk=chunk)
        else:
            total = sigmoid_pair_sum(image_features, text_features, logit_scale, logit_bias, row_keys=match_keys,
                                     column_keys=match_keys, positive_offset=0, chunk=chunk)
            for source, other in ring_neighbours(text_features) if size > 1 else ():
                their_keys = None if all_keys is None else all_keys[source * batch:(source + 1) * batch]
                total = total + sigmoid_pair_sum(image_features, other, logit_scale, logit_bias, row_keys=match_keys,
                                                 column_keys=their_keys, positive_offset=None, chunk=chunk)
        return total / image_features.shape[0]


def identity_value(batch: int, scale: float, bias: float | None) -> float:
    """Loss for ``batch`` matched pairs whose logits are ``scale·I + bias``."""
    b = bias or 0.0
    return _softplus(-(scale + b)) + (batch - 1) * _softplus(b)


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def build(cfg) -> SigLipLoss:
    """The loss for ``cfg`` (its ``[train.siglip]`` section, defaults when absent)."""
    section = SECTION.of(cfg)
    return SigLipLoss(dist_impl=section.dist_impl, chunk_size=section.chunk_size)


@hookimpl
def register_losses(register):
    register(LossSpec(
        name="siglip", build=build, init_logit_scale=INIT_LOGIT_SCALE, init_logit_bias=-10.0,
        identity_value=identity_value,
        description="Pairwise sigmoid loss (SigLIP), bidir ring exchange or gather across ranks, chunkable.",
        config_sections=(SECTION,)))
