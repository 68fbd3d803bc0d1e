"""Checks every loss plugin passes (the contract is :class:`core.loss.LossSpec`).

Each ``check_<rule>(entry, registry)`` raises ``AssertionError`` naming the plugin, the loss and
the rule. :func:`distributed_equivalence` is public so a plugin can also check its own
non-default configurations or other world sizes.

Gradient convention checked (see :class:`core.loss.LossSpec`): the mean of the per-rank losses is
the single-process loss, and DDP-averaged gradients are the single-process gradients. The logit
scale is never clamped by a loss; the trainer clamps it (:func:`core.loss.clamp_logit_scale`).
"""

from __future__ import annotations

import math
import socket
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from core.spec.config import ExperimentConfig
from core.loss import MAX_LOGIT_SCALE, LossSpec
from core.registry import Entry, Registry

TOLERANCE = 1e-5  # fp32, absolute and relative


def _where(entry: Entry) -> str:
    return f"plugin {entry.provider.plugin!r}, loss {entry.name!r}"


def _build(spec: LossSpec, cfg: Any = None) -> torch.nn.Module:
    return spec.build(cfg if cfg is not None else ExperimentConfig())


def _logit_params(log_scale: float, bias: float | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Leaf log scale and bias, as a model holds them."""
    return (torch.tensor(log_scale, requires_grad=True),
            None if bias is None else torch.tensor(bias, requires_grad=True))


def check_identity_value(entry: Entry, registry: Registry) -> None:
    """Rule: matched pairs of identical, mutually orthogonal unit features (logits ``s·I + b``)
    give the closed-form value the plugin states in ``LossSpec.identity_value``."""
    spec, where = entry.obj, _where(entry)
    assert spec.identity_value is not None, (
        f"{where}: rule identity value: LossSpec.identity_value is not set; state the exact loss for "
        "logits s·I + b so the kit can check the value")
    loss_fn = _build(spec)
    for batch, log_scale, bias in ((1, 0.0, None), (4, math.log(10), -10.0), (8, MAX_LOGIT_SCALE, 0.0),
                                   (16, math.log(1 / 0.07), None), (5, 1.0, 2.0)):
        features = torch.eye(batch, batch + 3)
        scale = torch.tensor(math.exp(log_scale))
        got = float(loss_fn(features, features.clone(), scale, None if bias is None else torch.tensor(bias)))
        expected = spec.identity_value(batch, math.exp(log_scale), bias)
        assert math.isclose(got, expected, rel_tol=TOLERANCE, abs_tol=TOLERANCE), (
            f"{where}: rule identity value: batch {batch}, scale {math.exp(log_scale):.4g}, bias {bias}: "
            f"loss {got:.7g}, closed form {expected:.7g}")


def check_gradients_finite(entry: Entry, registry: Registry) -> None:
    """Rule: loss and gradients (features, log scale, bias) are finite, including at the largest
    scale the trainer allows, for a batch of one and for identical features."""
    spec, where = entry.obj, _where(entry)
    loss_fn = _build(spec)
    generator = torch.Generator().manual_seed(0)
    random = F.normalize(torch.randn(8, 16, generator=generator), dim=-1)
    cases = {"random features": (random, random.flip(0)), "a batch of one": (random[:1], random[1:2]),
             "identical features": (random[:1].expand(8, -1), random[:1].expand(8, -1))}
    for label, (image, text) in cases.items():
        for log_scale, bias in ((0.0, None), (MAX_LOGIT_SCALE, -10.0), (MAX_LOGIT_SCALE, 10.0)):
            image_leaf, text_leaf = image.clone().requires_grad_(), text.clone().requires_grad_()
            log_s, b = _logit_params(log_scale, bias)
            loss = loss_fn(image_leaf, text_leaf, log_s.exp(), b)
            assert loss.dim() == 0 and torch.isfinite(loss), f"{where}: rule finite loss: {label} gave {loss}"
            loss.backward()
            for name, tensor in (("image features", image_leaf), ("text features", text_leaf),
                                 ("logit scale", log_s), ("logit bias", b)):
                if tensor is not None:
                    assert tensor.grad is not None and torch.isfinite(tensor.grad).all(), (
                        f"{where}: rule finite gradients: {label}, scale {math.exp(log_scale):.4g}, "
                        f"bias {bias}: the gradient of the {name} is {tensor.grad}")


def check_logit_params_used(entry: Entry, registry: Registry) -> None:
    """Rule: the logit scale and, when given, the bias take part in the loss (each gets a
    gradient), so DDP never reports an unused parameter; a ``None`` bias is accepted."""
    spec, where = entry.obj, _where(entry)
    loss_fn = _build(spec)
    features = F.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
    for bias in (None, -5.0):
        log_s, b = _logit_params(2.0, bias)
        loss_fn(features, features.roll(1, 0), log_s.exp(), b).backward()
        assert log_s.grad is not None, f"{where}: rule logit parameters used: the logit scale gets no gradient"
        assert b is None or b.grad is not None, (
            f"{where}: rule logit parameters used: the logit bias gets no gradient (add it to the logits "
            "when present, or DDP fails with an unused parameter)")


def check_pair_order_invariance(entry: Entry, registry: Registry) -> None:
    """Rule: permuting the pairs of a batch (image i stays with text i) leaves the loss unchanged."""
    spec, where = entry.obj, _where(entry)
    loss_fn = _build(spec)
    generator = torch.Generator().manual_seed(2)
    image = F.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    text = F.normalize(image + 0.5 * torch.randn(6, 8, generator=generator), dim=-1)
    scale, bias = torch.tensor(10.0), torch.tensor(-3.0)
    order = torch.randperm(6, generator=generator)
    before, after = float(loss_fn(image, text, scale, bias)), float(loss_fn(image[order], text[order], scale, bias))
    assert math.isclose(before, after, rel_tol=TOLERANCE, abs_tol=TOLERANCE), (
        f"{where}: rule pair order invariance: loss {before:.7g} becomes {after:.7g} when the pairs are shuffled")


def check_compatible_positives(entry: Entry, registry: Registry) -> None:
    """Rule: pairs sharing a match key are positives, never negatives. Keys that match nothing
    change nothing (loss and gradients); a marked pair whose logit is low is pulled together (its
    gradient is negative) where, unmarked, it would be pushed apart."""
    spec, where = entry.obj, _where(entry)
    loss_fn = _build(spec)
    batch = 6
    unique = torch.arange(batch * 3).reshape(batch, 3)
    marked = unique.clone()
    marked[5, 2] = marked[0, 2]  # same group: pair 0 and pair 5
    marked[3, 1] = marked[1, 1]  # identical text: pair 1 and pair 3
    marked[4, 0] = -1  # no image key

    def run(keys: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = torch.eye(batch, batch + 2)  # logits s·I + b: the off-diagonal logit is b
        image, text = features.clone().requires_grad_(), features.clone().requires_grad_()
        loss = loss_fn(image, text, torch.tensor(10.0), torch.tensor(-2.0), match_keys=keys)
        loss.backward()
        return loss.detach(), image.grad, text.grad

    plain, with_unique = run(None), run(unique)
    for name, a, b in zip(("loss", "image gradient", "text gradient"), plain, with_unique):
        assert torch.allclose(a, b, rtol=TOLERANCE, atol=TOLERANCE), (
            f"{where}: rule compatible positives: match keys that match nothing change the {name}")
    _, image_grad, text_grad = run(marked)
    features = torch.eye(batch, batch + 2)
    for i, j, kind in ((0, 5, "group"), (1, 3, "text")):
        # orthonormal features: ∂loss/∂text_j · image_i = s·∂loss/∂z_ij, ∂loss/∂image_j · text_i = s·∂loss/∂z_ji
        pull = float(text_grad[j] @ features[i]) + float(image_grad[j] @ features[i])
        assert pull < 0, (f"{where}: rule compatible positives: pairs {i} and {j} share the {kind} key, yet the "
                          f"loss pushes image {i} and text {j} (or image {j} and text {i}) apart "
                          f"(∂loss/∂z summed: {pull:.4g} >= 0)")


def check_distributed_equivalence(entry: Entry, registry: Registry) -> None:
    """Rule: 2 gloo processes give the single-process loss and gradients of the concatenated batch,
    with and without match keys (see :func:`distributed_equivalence`)."""
    distributed_equivalence([(_where(entry), entry.obj, None)])


# --------------------------------------------------------------------------- distributed
def _problem(world_size: int, batch: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A global batch of raw inputs, two linear "towers" and logit parameters."""
    generator = torch.Generator().manual_seed(seed)
    n = world_size * batch
    keys = torch.arange(n * 3).reshape(n, 3)
    keys[n - 1, 2] = keys[0, 2]  # compatible positives across ranks: a shared group,
    keys[n - 2, 1] = keys[1, 1]  # an identical text,
    keys[n // 2, 0] = keys[0, 0]  # the same image
    keys[1, 2] = -1  # and a missing key
    return {"match_keys": keys, "images": torch.randn(n, 12, generator=generator), "texts": torch.randn(n, 10, generator=generator),
            "image_proj": torch.randn(12, 8, generator=generator), "text_proj": torch.randn(10, 8, generator=generator),
            "log_scale": torch.tensor(math.log(10.0)), "bias": torch.tensor(-4.0)}


def _step(loss_fn: torch.nn.Module, problem: dict[str, torch.Tensor], rows: slice, keyed: bool
          ) -> dict[str, torch.Tensor]:
    """Forward + backward on ``rows`` of the problem (``keyed``: with its match keys); the loss and
    every gradient."""
    leaves = {k: problem[k].clone().requires_grad_() for k in ("image_proj", "text_proj", "log_scale", "bias")}
    image = F.normalize(problem["images"][rows] @ leaves["image_proj"], dim=-1)
    text = F.normalize(problem["texts"][rows] @ leaves["text_proj"], dim=-1)
    image.retain_grad()
    text.retain_grad()
    loss = loss_fn(image, text, leaves["log_scale"].exp(), leaves["bias"],
                   match_keys=problem["match_keys"][rows] if keyed else None)
    loss.backward()
    return {"loss": loss.detach(), "image_features": image.grad, "text_features": text.grad,
            **{k: v.grad for k, v in leaves.items()}}


KEYED = (False, True)  # every case runs without and with match keys


def _rank_main(rank: int, world_size: int, port: int, cases: list, problem: dict, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=60))
    try:
        batch = problem["images"].shape[0] // world_size
        rows = slice(rank * batch, (rank + 1) * batch)
        results = [_step(_build(spec, cfg), problem, rows, keyed) for _, spec, cfg in cases for keyed in KEYED]
        torch.save(results, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def distributed_equivalence(cases: Sequence[tuple[str, LossSpec, Any]], *, world_size: int = 2,
                            batch: int = 3) -> None:
    """For each ``(label, spec, cfg)`` case (``cfg`` ``None``: defaults), run the loss on
    ``world_size`` spawned gloo processes with ``batch`` pairs each (one spawn for all cases) and on
    one process with the concatenated batch; raise one ``AssertionError`` naming the label of
    every case that breaks a rule. In fp32, to 1e-5:

    - the mean over ranks of the losses equals the single-process loss;
    - the tower and logit-parameter gradients averaged over ranks (what DDP does) equal the
      single-process gradients;
    - each rank's feature gradients divided by the world size equal the single-process ones.
    """
    cases = list(cases)
    problem = _problem(world_size, batch)
    with tempfile.TemporaryDirectory(prefix="clipcore-loss-") as out:
        try:
            mp.start_processes(_rank_main, args=(world_size, _free_port(), cases, problem, out),
                               nprocs=world_size, start_method="spawn")
        except mp.ProcessRaisedException as exc:
            labels = ", ".join(label for label, _, _ in cases)
            raise AssertionError(f"{labels}: rule distributed equivalence: a rank raised:\n{exc}") from None
        ranks = [torch.load(Path(out) / f"rank{r}.pt", weights_only=True) for r in range(world_size)]
    failures = []
    variants = [(label + (" (with match keys)" if keyed else ""), spec, cfg, keyed)
                for label, spec, cfg in cases for keyed in KEYED]
    for index, (label, spec, cfg, keyed) in enumerate(variants):
        try:
            _compare(label, _step(_build(spec, cfg), problem, slice(None), keyed), [r[index] for r in ranks])
        except AssertionError as exc:
            failures.append(str(exc))
    assert not failures, "\n".join(failures)


def _compare(label: str, reference: dict, ranks: list[dict]) -> None:
    size = len(ranks)
    for name, value in reference.items():
        missing = [r for r, result in enumerate(ranks) if result[name] is None]
        assert value is not None and not missing, (
            f"{label}: rule distributed equivalence: no {name} gradient "
            f"{'on one process' if value is None else f'on rank(s) {missing}'}")
    combined = {
        "loss": torch.stack([r["loss"] for r in ranks]).mean(),
        **{k: torch.stack([r[k] for r in ranks]).mean(0) for k in ("image_proj", "text_proj", "log_scale", "bias")},
        **{k: torch.cat([r[k] for r in ranks]) / size for k in ("image_features", "text_features")},
    }
    for name, expected in reference.items():
        got = combined[name]
        assert torch.allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE), (
            f"{label}: rule distributed equivalence ({size} gloo processes vs one): {name} differs by "
            f"{(got - expected).abs().max().item():.3g} (mean of per-rank losses / DDP-averaged gradients "
            "must equal the single-process values of the concatenated batch)")


LOSS_CHECKS = [check_identity_value, check_gradients_finite, check_logit_params_used, check_pair_order_invariance,
               check_compatible_positives, check_distributed_equivalence]
