"""The loss contract: what ``register_losses`` registers."""

from __future__ import annotations

from typing import Any, Callable

import attrs
from torch import nn


@attrs.frozen(kw_only=True)
class LossSpec:
    """A contrastive loss, selected by ``train.loss_type``.

    - ``name``: the value of ``train.loss_type`` (``siglip``, ``clip``); unique across plugins.
    - ``build(cfg) -> nn.Module``: from the whole experiment config. The module is called as
      ``loss(image_features, text_features, logit_scale, logit_bias)`` with this rank's L2-normalised
      ``[B, D]`` features, the exponentiated scale (0-d tensor) and the bias (0-d tensor or ``None``)
      and returns the scalar loss of the *global* batch as seen from this rank: when
      ``torch.distributed`` is initialised it communicates itself, and its gradients, summed over
      ranks by DDP/FSDP averaging, equal the single-process gradients of the concatenated batch.
    - ``init_logit_scale`` / ``init_logit_bias``: log-space scale and bias for models started from
      scratch with this loss (``model.init_logit_*`` unset).
    - ``config_sections``: plugin-owned config tables (:class:`core.registry.ConfigSection`).
    """

    name: str
    build: Callable[[Any], nn.Module]
    init_logit_scale: float
    init_logit_bias: float | None
    description: str = ""
    config_sections: tuple[Any, ...] = ()
