"""Optimizer parameter groups, the torch-native LAMB and the learning-rate schedule."""

from __future__ import annotations

import math

import attrs
import pytest
import torch

from clipcore_example_backbone.plugin import TinyClip
from core.spec.config import OptimConfig
from core.errors import ConfigError
from core.train.optim import Lamb, build_optimizer, build_scheduler, lr_factor, param_groups


def _groups_by_name(model, **optim):
    return {g["name"]: g for g in param_groups(model, OptimConfig(**optim))}


def test_param_groups_lrs_weight_decay_and_frozen_params():
    model = TinyClip("example-tiny")
    model.lock_image_tower(unlocked_groups=1)
    groups = _groups_by_name(model, vision_lr=1e-3, text_lr=2e-4, weight_decay=0.1)
    assert set(groups) == {"vision", "vision_no_decay", "text", "text_no_decay", "logit"}
    assert groups["vision"]["lr"] == 1e-3 and groups["text"]["lr"] == 2e-4
    assert groups["logit"]["lr"] == 2e-4 and groups["logit"]["weight_decay"] == 0.0
    assert {id(p) for p in groups["logit"]["params"]} == {id(model.logit_scale), id(model.logit_bias)}
    for name, group in groups.items():
        assert group["weight_decay"] == (0.1 if name in ("vision", "text") else 0.0)
        if name in ("vision", "text"):
            assert all(p.ndim >= 2 for p in group["params"]), name
    in_groups = {id(p) for g in groups.values() for p in g["params"]}
    frozen = [p for p in model.parameters() if not p.requires_grad]
    assert frozen and not any(id(p) in in_groups for p in frozen)
    last_block = {id(p) for p in model.vision_blocks()[-1].parameters()}
    assert last_block <= in_groups
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_groups == trainable


def test_everything_frozen_is_a_config_error():
    model = TinyClip("example-tiny", logit_bias=None)
    model.lock_image_tower()
    model.lock_text_tower()
    model.logit_scale.requires_grad_(False)
    with pytest.raises(ConfigError, match="nothing to train"):
        param_groups(model, OptimConfig())


def test_lamb_matches_the_reference_update():
    torch.manual_seed(0)
    w0, grad = torch.randn(4, 3), torch.randn(4, 3)
    p = torch.nn.Parameter(w0.clone())
    opt = Lamb([p], lr=0.1, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.01)
    p.grad = grad.clone()
    opt.step()
    m, v = 0.1 * grad / (1 - 0.9), 0.01 * grad**2 / (1 - 0.99)
    update = m / (v.sqrt() + 1e-6) + 0.01 * w0
    expected = w0 - 0.1 * (w0.norm() / update.norm()) * update
    torch.testing.assert_close(p.detach(), expected, rtol=1e-5, atol=1e-6)
    zero = torch.nn.Parameter(torch.zeros(3))
    opt = Lamb([zero], lr=0.1)
    zero.grad = torch.ones(3)
    opt.step()  # ||w|| = 0: trust ratio 1, plain Adam-like step
    torch.testing.assert_close(zero.detach(), torch.full((3,), -0.1), rtol=1e-4, atol=1e-5)


def test_build_optimizer_types():
    model = TinyClip("example-tiny")
    assert isinstance(build_optimizer(model, OptimConfig(optimizer_type="lamb")), Lamb)
    opt = build_optimizer(model, OptimConfig(optimizer_type="adamw", betas=[0.8, 0.9], eps=1e-8))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.8, 0.9)


@pytest.mark.parametrize("scheduler", ["cosine", "linear", "constant"])
def test_schedule_warmup_then_decay_over_the_exact_total(scheduler):
    total, warmup = 20, 4
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = build_scheduler(opt, OptimConfig(warmup_steps=warmup, scheduler=scheduler), total)
    used = []
    for _ in range(total):
        used.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert used[:warmup] == pytest.approx([0.5 * (i + 1) / warmup for i in range(warmup)])
    assert used[warmup] == pytest.approx(0.5)
    last_progress = (total - 1 - warmup) / (total - warmup)
    expected_last = {"cosine": 0.5 * 0.5 * (1 + math.cos(math.pi * last_progress)),
                     "linear": 0.5 * (1 - last_progress), "constant": 0.5}[scheduler]
    assert used[-1] == pytest.approx(expected_last)
    if scheduler != "constant":
        assert all(a >= b for a, b in zip(used[warmup:], used[warmup + 1:]))
        assert lr_factor(total, warmup_steps=warmup, total_steps=total, scheduler=scheduler) == pytest.approx(0)


def test_unknown_scheduler_is_a_config_error():
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    bad = attrs.evolve(OptimConfig(), scheduler="step")
    with pytest.raises(ConfigError, match="train.optim.scheduler"):
        build_scheduler(opt, bad, 10)


def test_negative_unlocked_counts_are_refused():
    from clipcore_example_backbone.plugin import TinyClip

    from core.errors import ClipcoreError

    model = TinyClip("example-tiny")
    with pytest.raises(ClipcoreError, match="cannot leave -1 blocks unlocked"):
        model.lock_text_tower(-1)
