"""Optimizers and learning-rate schedules for training.

- :func:`param_groups`: the trainable parameters of a :class:`core.backbone.ClipModel` split into
  the image tower at ``vision_lr``, the text tower at ``text_lr`` and the logit scale/bias in their
  own group at ``text_lr``; biases, norms, 1-D and logit parameters get no weight decay; frozen
  parameters are absent.
- :class:`Lamb`: layer-wise adaptive moments (You et al. 2019), written in plain torch.
- :func:`build_scheduler`: linear warmup, then cosine / linear / constant over the exact total
  number of optimizer steps.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from core.errors import ConfigError


def _no_decay(name: str, param: nn.Parameter) -> bool:
    leaf = name.rsplit(".", 1)[-1]
    return param.ndim < 2 or leaf == "bias" or "norm" in name.lower() or "logit_" in leaf


def param_groups(model: nn.Module, optim_cfg: Any) -> list[dict[str, Any]]:
    """Optimizer parameter groups of ``model`` (a ClipModel, possibly FSDP-sharded in place).

    Each group carries a ``name`` (``vision``, ``vision_no_decay``, ``text``, ``text_no_decay``,
    ``logit``) for logging; empty groups are left out.
    """
    lrs = {"vision": optim_cfg.vision_lr, "text": optim_cfg.text_lr, "other": optim_cfg.text_lr}
    groups: list[dict[str, Any]] = []
    for tower, named in model.parameter_groups().items():
        if tower == "other":
            params = [p for _, p in named]
            if params:
                groups.append({"name": "logit", "params": params, "lr": lrs[tower], "weight_decay": 0.0})
            continue
        decay = [p for n, p in named if not _no_decay(n, p)]
        no_decay = [p for n, p in named if _no_decay(n, p)]
        if decay:
            groups.append({"name": tower, "params": decay, "lr": lrs[tower],
                           "weight_decay": optim_cfg.weight_decay})
        if no_decay:
            groups.append({"name": f"{tower}_no_decay", "params": no_decay, "lr": lrs[tower],
                           "weight_decay": 0.0})
    if not groups:
        raise ConfigError("nothing to train: every parameter is frozen",
                          where="model.freeze_vision_encoder / model.freeze_text_encoder",
                          fix="unfreeze a tower, or set vision_unlocked_layers / text_unlocked_layers > 0")
    return groups


class Lamb(torch.optim.Optimizer):
    """LAMB: Adam moments with bias correction, decoupled weight decay added to the update, and the
    step scaled per parameter tensor by the trust ratio ``||w|| / ||update||`` (1 when either is 0)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-6, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"].item()
                exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
                exp_avg.lerp_(p.grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
                update = (exp_avg / (1 - beta1 ** step)) / (
                    (exp_avg_sq / (1 - beta2 ** step)).sqrt_().add_(group["eps"]))
                if group["weight_decay"]:
                    update.add_(p, alpha=group["weight_decay"])
                w_norm, u_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(update)
                trust = torch.where((w_norm > 0) & (u_norm > 0), w_norm / u_norm, torch.ones_like(w_norm))
                p.sub_(update * (trust * group["lr"]))
        return loss


def build_optimizer(model: nn.Module, optim_cfg: Any) -> torch.optim.Optimizer:
    """AdamW or :class:`Lamb` over :func:`param_groups` (``train.optim``)."""
    groups = param_groups(model, optim_cfg)
    kwargs = {"betas": tuple(optim_cfg.betas), "eps": optim_cfg.eps}
    if optim_cfg.optimizer_type == "adamw":
        params = [p for group in groups for p in group["params"]]
        # the fused kernel (CPU and CUDA) is several times faster than torch's per-tensor default
        # on CPU; sharded (DTensor) parameters take the multi-tensor path
        fused = all(p.device.type in ("cpu", "cuda") and not hasattr(p, "placements") for p in params)
        return torch.optim.AdamW(groups, fused=fused, foreach=None if fused else True, **kwargs)
    if optim_cfg.optimizer_type == "lamb":
        return Lamb(groups, **kwargs)
    raise ConfigError(f"unknown optimizer {optim_cfg.optimizer_type!r}", where="train.optim.optimizer_type",
                      fix="use adamw or lamb")


def lr_factor(step: int, *, warmup_steps: int, total_steps: int, scheduler: str) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based).

    Warmup: ``(step + 1) / warmup_steps`` for the first ``warmup_steps`` steps; then, with
    ``progress`` going from 0 at the first step after warmup to 1 at ``total_steps`` (just past the
    last step), ``cosine`` is ``(1 + cos(π·progress)) / 2``, ``linear`` is ``1 − progress`` and
    ``constant`` stays at 1.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if scheduler == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if scheduler == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress  # linear


SCHEDULERS = ("cosine", "linear", "constant")


def build_scheduler(optimizer: torch.optim.Optimizer, optim_cfg: Any, total_steps: int) -> LambdaLR:
    """A per-step schedule (call ``step()`` after every optimizer step) over ``total_steps``."""
    if optim_cfg.scheduler not in SCHEDULERS:
        raise ConfigError(f"unknown scheduler {optim_cfg.scheduler!r}", where="train.optim.scheduler",
                          fix="use " + ", ".join(SCHEDULERS))

    def factor(step: int) -> float:
        return lr_factor(step, warmup_steps=optim_cfg.warmup_steps, total_steps=total_steps,
                         scheduler=optim_cfg.scheduler)

    return LambdaLR(optimizer, factor)
