"""The loss contract: what ``register_losses`` registers, and the logit-scale clamp."""

from __future__ import annotations

import math
from typing import Any, Callable

import attrs
import torch
from torch import nn

MAX_LOGIT_SCALE = math.log(100.0)


@attrs.frozen(kw_only=True)
class LossSpec:
    """A contrastive loss, selected by ``train.loss_type``.

    - ``name``: the value of ``train.loss_type`` (``mine``); unique across plugins.
    - ``build(cfg) -> nn.Module``: from the whole experiment config. The module is called as
      ``loss(image_features, text_features, logit_scale, logit_bias, match_keys=None)`` with this
      rank's L2-normalised ``[B, D]`` features (``B`` equal on every rank), the exponentiated scale
      (0-d tensor), the bias (0-d tensor or ``None``) and, keyword only, the pairs' match keys
      (int64 ``[B, K]`` or ``None``), and returns a scalar. When ``torch.distributed`` is
      initialised it communicates itself (every rank must call it), and:

      * **compatible positives**: image ``i`` and text ``j`` are a positive pair when ``i == j``
        or, with ``match_keys``, when :func:`positive_mask` says so (the same image, the same
        text, the same user group: the trainer's ``train.compatible_positives``). Positives are
        never treated as negatives, across ranks too (gather the keys with
        :func:`core.collectives.all_gather_with_grad`). Without ``match_keys`` only ``i == j``
        is positive.

      * **value**: the mean over ranks of the returned values equals the loss of one process on
        the concatenated global batch (log the all-reduced mean; a single rank's value is its share);
      * **gradients**: the gradient reaching a rank's features is ``∂(Σ_ranks loss_r)/∂(its
        features)`` and the logit parameters get ``∂loss_r/∂(scale, bias)``, so after DDP/FSDP
        *average* the parameter gradients over ranks they equal the single-process gradients
        exactly. The trainer therefore backpropagates the returned loss as is: no multiplication
        or division by the world size (nor by the accumulation steps, see :mod:`core.train.accumulate`).
    - ``init_logit_scale`` / ``init_logit_bias``: log-space scale and bias for models started from
      scratch with this loss (``model.init_logit_*`` unset).
    - ``identity_value(batch, scale, bias) -> float``: the exact loss for ``batch`` matched pairs
      whose logits matrix is ``scale·I + bias`` (identical, mutually orthogonal unit features);
      the conformance kit checks the module against it.
    - ``config_sections``: plugin-owned config tables (:class:`core.registry.ConfigSection`).

    Logit scale: losses never clamp. The trainer calls :func:`clamp_logit_scale` after every
    optimizer step (log scale kept in ``[0, ln 100]``, as open_clip and TAO do).
    """

    name: str
    build: Callable[[Any], nn.Module]
    init_logit_scale: float
    init_logit_bias: float | None
    identity_value: Callable[[int, float, float | None], float] | None = None
    description: str = ""
    config_sections: tuple[Any, ...] = ()


def positive_mask(row_keys: torch.Tensor | None, column_keys: torch.Tensor | None, *, rows: int, columns: int,
                  diagonal: int | None, device: torch.device | str | None = None) -> torch.Tensor:
    """Bool ``[rows, columns]``: True where row pair ``i`` and column pair ``j`` are positives.

    That is ``j == i + diagonal`` (the pair itself; ``diagonal=None``: never) or, with keys, any
    column ``k`` of the int64 ``[rows, K]`` / ``[columns, K]`` match keys equal and ``>= 0``
    (``-1``: no key). Keys are what :func:`core.batching.finish_batch` puts in ``match_keys``.
    """
    mask = torch.zeros(rows, columns, dtype=torch.bool, device=device)
    if diagonal is not None:
        mask.diagonal(diagonal).fill_(True)
    if row_keys is not None and column_keys is not None:
        for k in range(row_keys.shape[1]):
            row, column = row_keys[:, k, None], column_keys[None, :, k]
            mask |= (row == column) & (row >= 0)
    return mask


@torch.no_grad()
def clamp_logit_scale(model: nn.Module, max_value: float = MAX_LOGIT_SCALE) -> None:
    """Clamp every ``logit_scale`` parameter of ``model`` (log space, wrappers such as DDP, FSDP or
    ``torch.compile`` included) to ``[0, max_value]`` in place; call after each optimizer step."""
    for name, param in model.named_parameters():
        if name.rsplit(".", 1)[-1] == "logit_scale":
            param.clamp_(0.0, max_value)
