"""The siglip and clip loss plugins, the loss conformance checks and exact accumulation.

open_clip is imported inside the tests that compare with it: the spawned ranks import this
module, and should not pay for it.
"""

from __future__ import annotations

import math
import socket

import attrs
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import losses.clip
import losses.siglip
from core.train.accumulate import accumulated_step
from core.spec.config import ExperimentConfig
from core.errors import ConfigError
from core.loss import MAX_LOGIT_SCALE, LossSpec, clamp_logit_scale
from core.registry import Provider, load_registry
from core.testing.loss_checks import (LOSS_CHECKS, check_compatible_positives, check_gradients_finite,
                                      check_identity_value, check_logit_params_used, distributed_equivalence)
from losses.siglip import SiglipLossConfig

torch.set_num_threads(1)
PROVIDER = Provider("test", "clipcore", "0")


@pytest.fixture(scope="module")
def registry():
    return load_registry(plugins=[(Provider("siglip_loss", "clipcore", "0"), losses.siglip),
                                  (Provider("clip_loss", "clipcore", "0"), losses.clip)], use_entry_points=False)


def siglip_cfg(**section) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.plugins["train.siglip"] = SiglipLossConfig(**section)
    return cfg


def random_problem(n=12, dim=8, dtype=torch.float64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    image = F.normalize(torch.randn(n, dim, generator=generator, dtype=dtype), dim=-1)
    text = F.normalize(image + torch.randn(n, dim, generator=generator, dtype=dtype), dim=-1)
    return image, text, torch.tensor(2.3, dtype=dtype), torch.tensor(-3.0, dtype=dtype)


def loss_and_grads(loss_fn, image, text, log_scale, bias):
    leaves = [t.clone().requires_grad_() for t in (image, text, log_scale, bias)]
    loss = loss_fn(leaves[0], leaves[1], leaves[2].exp(), leaves[3])
    loss.backward()
    return [loss.detach()] + [t.grad for t in leaves]


def open_clip_loss(name: str) -> nn.Module:
    from open_clip import loss

    return {"siglip": loss.SigLipLoss, "clip": loss.ClipLoss}[name]()


# --------------------------------------------------------------------------- values
@pytest.mark.parametrize("ours, theirs", [
    (losses.siglip.SigLipLoss(), "siglip"),
    (losses.siglip.SigLipLoss(chunk_size=5), "siglip"),
    (losses.clip.ClipLoss(), "clip"),
], ids=["siglip", "siglip-chunked", "clip"])
def test_single_process_matches_open_clip(ours, theirs):
    problem, theirs = random_problem(), open_clip_loss(theirs)
    for a, b in zip(loss_and_grads(ours, *problem), loss_and_grads(theirs, *problem)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("module, reference", [(losses.siglip, "siglip"), (losses.clip, "clip")])
def test_identity_value_is_the_closed_form(module, reference):
    reference = open_clip_loss(reference)
    for batch, scale, bias in ((1, 1.0, -10.0), (6, 10.0, -10.0), (9, 100.0, 0.5)):
        features = torch.eye(batch, batch + 2, dtype=torch.float64)
        expected = reference(features, features, torch.tensor(scale, dtype=torch.float64),
                             torch.tensor(bias, dtype=torch.float64))
        assert module.identity_value(batch, scale, bias) == pytest.approx(float(expected), rel=1e-12)


def test_siglip_chunks_and_bf16_autocast_give_fp32_results():
    image, text, log_scale, bias = (t.float() for t in random_problem(n=10))
    reference = loss_and_grads(losses.siglip.SigLipLoss(), image, text, log_scale, bias)
    for chunk in (0, 1, 3, 10, 64):
        for a, b in zip(loss_and_grads(losses.siglip.SigLipLoss(chunk_size=chunk), image, text, log_scale, bias),
                        reference):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    leaves = [image.bfloat16().requires_grad_(), text.bfloat16().requires_grad_()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = losses.siglip.SigLipLoss()(*leaves, log_scale.exp(), bias)
    loss.backward()
    assert loss.dtype == torch.float32 and leaves[0].grad.dtype == torch.bfloat16
    torch.testing.assert_close(loss, reference[0], rtol=2e-2, atol=0)


# --------------------------------------------------------------------------- config
def test_siglip_section_is_declared_and_honoured(registry):
    spec = registry.get("losses", "siglip", key="train.loss_type")
    assert [s.path for s in spec.config_sections] == ["train.siglip"]
    assert (spec.init_logit_scale, spec.init_logit_bias) == (pytest.approx(math.log(10)), -10.0)
    built = spec.build(siglip_cfg(dist_impl="gather", chunk_size=256))
    assert (built.config.dist_impl, built.config.chunk_size) == ("gather", 256)
    assert spec.build(ExperimentConfig()).config == SiglipLossConfig()
    clip = registry.get("losses", "clip", key="train.loss_type")
    assert (clip.init_logit_scale, clip.init_logit_bias) == (pytest.approx(math.log(1 / 0.07)), None)


@pytest.mark.parametrize("section, message", [
    ({"dist_impl": "ring"}, "train.siglip.dist_impl: unknown siglip distributed implementation 'ring'"),
    ({"chunk_size": -1}, "train.siglip.chunk_size: chunk size must be an integer >= 0, got -1"),
])
def test_bad_siglip_section_is_one_clear_error(section, message):
    with pytest.raises(ConfigError) as err:
        SiglipLossConfig(**section)
    assert str(err.value).startswith(message) and "fix:" in str(err.value)


def test_clamp_logit_scale_keeps_log_scale_in_range():
    outer = nn.Sequential(nn.Module(), nn.Module())
    outer[0].logit_scale, outer[1].logit_scale = nn.Parameter(torch.tensor(9.0)), nn.Parameter(torch.tensor(-1.0))
    outer[0].logit_bias = nn.Parameter(torch.tensor(-20.0))
    clamp_logit_scale(outer)
    assert outer[0].logit_scale.item() == pytest.approx(MAX_LOGIT_SCALE)
    assert outer[1].logit_scale.item() == 0.0 and outer[0].logit_bias.item() == -20.0


# --------------------------------------------------------------------------- conformance checks
@pytest.mark.parametrize("name", ["siglip", "clip"])
def test_builtin_losses_pass_the_local_checks(registry, name):
    entry = registry.entries["losses"][name]
    for check in LOSS_CHECKS[:-1]:  # the distributed check runs below, batched in one spawn
        check(entry, registry)


def build_biasless_siglip(cfg):
    """A broken plugin: a sigmoid loss that ignores the bias."""
    return lambda image, text, scale, bias, match_keys=None: losses.siglip.SigLipLoss()(
        image, text, scale, None, match_keys=match_keys)


def build_local_only_siglip(cfg):
    """A broken plugin: a sigmoid loss that sees only this rank's pairs."""
    return lambda image, text, scale, bias, match_keys=None: losses.siglip.sigmoid_pair_sum(
        image, text, scale, bias, positive_offset=0, chunk=0) / len(image)


def build_keyless_siglip(cfg):
    """A broken plugin: a sigmoid loss that ignores the match keys (compatible positives are negatives)."""
    return lambda image, text, scale, bias, match_keys=None: losses.siglip.SigLipLoss()(image, text, scale, bias)


def build_local_keys_clip(cfg):
    return LocalKeysClip()


class LocalKeysClip(nn.Module):
    """A broken plugin: clip that matches keys only against this rank's pairs (no gather)."""

    def forward(self, image, text, scale, bias, match_keys=None):
        rank, size = losses.clip.world()
        if match_keys is None or size == 1:
            return losses.clip.ClipLoss()(image, text, scale, bias, match_keys=match_keys)
        padding = torch.full_like(match_keys, -1)
        keys = torch.cat([match_keys if r == rank else padding for r in range(size)])
        mask = losses.clip.positive_mask(match_keys, keys, rows=len(image), columns=len(keys),
                                         diagonal=rank * len(image)).float()
        all_image, all_text = (losses.clip.all_gather_with_grad(t) for t in (image, text))
        target = mask / mask.sum(1, keepdim=True)
        return (F.cross_entropy(scale * image @ all_text.T + bias, target)
                + F.cross_entropy(scale * text @ all_image.T + bias, target)) / 2


def build_naive_siglip(cfg):
    """A broken plugin: log(sigmoid(x)) underflows to log(0) for confident wrong pairs."""

    def loss(image, text, scale, bias, match_keys=None):
        labels = 2 * torch.eye(len(image)) - 1
        logits = scale * image @ text.T + (0 if bias is None else bias)
        return -torch.log(torch.sigmoid(labels * logits)).sum() / len(image)

    return loss


def broken(build) -> LossSpec:
    return LossSpec(name="broken", build=build, init_logit_scale=0.0, init_logit_bias=0.0,
                    identity_value=losses.siglip.identity_value)


def test_checks_name_the_plugin_and_the_rule(registry):
    entry = attrs.evolve(registry.entries["losses"]["siglip"], obj=broken(build_biasless_siglip), name="broken")
    with pytest.raises(AssertionError, match=r"plugin 'siglip_loss', loss 'broken': rule identity value: batch 4"):
        check_identity_value(entry, registry)
    with pytest.raises(AssertionError, match="loss 'broken': rule logit parameters used: the logit bias"):
        check_logit_params_used(entry, registry)
    entry = attrs.evolve(entry, obj=broken(build_naive_siglip))
    with pytest.raises(AssertionError, match="loss 'broken': rule finite loss: .* gave inf"):
        check_gradients_finite(entry, registry)


def test_a_loss_ignoring_match_keys_fails_the_compatible_positives_check(registry):
    entry = attrs.evolve(registry.entries["losses"]["siglip"], obj=broken(build_keyless_siglip), name="broken")
    with pytest.raises(AssertionError, match=r"loss 'broken': rule compatible positives: pairs 0 and 5 share the "
                                             r"group key, yet the loss pushes image 0 and text 5 .* apart"):
        check_compatible_positives(entry, registry)


def dense_mask(keys, n):
    same = (keys[:, None, :] == keys[None, :, :]) & (keys[:, None, :] >= 0)
    return same.any(-1) | torch.eye(n, dtype=torch.bool)


@pytest.mark.parametrize("chunk", [0, 5])
def test_siglip_labels_compatible_positives_plus_one(chunk):
    image, text, log_scale, bias = random_problem()
    keys = torch.arange(36).reshape(12, 3)
    keys[7, 0], keys[2, 1], keys[11, 2], keys[3, 2] = keys[1, 0], keys[9, 1], keys[4, 2], keys[4, 2]
    labels = 2 * dense_mask(keys, 12).to(image.dtype) - 1

    def reference(image, text, scale, bias, match_keys=None):
        return F.softplus(-labels * (scale * image @ text.T + bias)).sum() / len(image)

    got = loss_and_grads(lambda *a: losses.siglip.SigLipLoss(chunk_size=chunk)(*a, match_keys=keys),
                         image, text, log_scale, bias)
    for a, b in zip(got, loss_and_grads(reference, image, text, log_scale, bias)):
        torch.testing.assert_close(a, b)


def test_clip_targets_every_compatible_positive_equally():
    image, text, log_scale, bias = random_problem()
    keys = torch.arange(36).reshape(12, 3)
    keys[7, 0], keys[2, 1], keys[11, 2], keys[3, 2] = keys[1, 0], keys[9, 1], keys[4, 2], keys[4, 2]
    mask = dense_mask(keys, 12).to(image.dtype)

    def reference(image, text, scale, bias):
        per_row = lambda logits: -(mask * logits.log_softmax(-1)).sum(-1) / mask.sum(-1)
        return (per_row(scale * image @ text.T).mean() + per_row(scale * text @ image.T).mean()) / 2

    got = loss_and_grads(lambda *a: losses.clip.ClipLoss()(*a, match_keys=keys), image, text, log_scale, bias)
    expected = loss_and_grads(reference, image, text, log_scale, bias)
    for a, b in zip(got[:4], expected[:4]):  # the bias does not change a softmax: its gradient is 0 (or None)
        torch.testing.assert_close(a, b)


@pytest.mark.distributed
def test_two_ranks_equal_one_process(registry):
    """siglip (bidir, gather, chunked) and clip pass; a local-only loss is caught, alone."""
    siglip, clip = (registry.entries["losses"][n].obj for n in ("siglip", "clip"))
    cases = [("siglip bidir", siglip, None), ("siglip gather", siglip, siglip_cfg(dist_impl="gather")),
             ("siglip bidir chunked", siglip, siglip_cfg(chunk_size=2)),
             ("siglip gather chunked", siglip, siglip_cfg(dist_impl="gather", chunk_size=2)),
             ("clip", clip, None), ("local-only", broken(build_local_only_siglip), None),
             ("local-keys", broken(build_local_keys_clip), None)]
    with pytest.raises(AssertionError) as err:
        distributed_equivalence(cases, world_size=2)
    lines = [line for line in str(err.value).splitlines() if "rule distributed equivalence" in line]
    failed = {line.split(": rule")[0] for line in lines}
    assert failed == {"local-only", "local-only (with match keys)", "local-keys (with match keys)"}, lines
    assert all("(2 gloo processes vs one)" in line for line in lines)


@pytest.mark.distributed
def test_four_ranks_equal_one_process(registry):
    """Four ranks exercise the bidirectional ring rounds and the final one-way hop."""
    siglip, clip = (registry.entries["losses"][n].obj for n in ("siglip", "clip"))
    distributed_equivalence([("siglip bidir", siglip, siglip_cfg(chunk_size=1)),
                             ("siglip gather", siglip, siglip_cfg(dist_impl="gather")), ("clip", clip, None)],
                            world_size=4, batch=2)


# --------------------------------------------------------------------------- accumulation
def tiny_model(dropout: float = 0.0) -> nn.Module:
    from clipcore_example_backbone.plugin import TinyClip

    torch.manual_seed(0)
    model = TinyClip("example-tiny")
    if dropout:
        model.text_tower["proj"] = nn.Sequential(nn.Dropout(dropout), model.text_tower["proj"])
    return model


def batches(k: int, size: int):
    """k micro-batches whose match keys pair samples across micro-batches (and ranks, split in halves)."""
    generator = torch.Generator().manual_seed(1)
    keys = torch.arange(k * size * 3).reshape(k * size, 3)
    keys[-1, 2], keys[size, 1], keys[1, 0] = keys[0, 2], keys[1, 1], -1
    return [{"image": torch.randn(size, 3, 32, 32, generator=generator),
             "input_ids": torch.randint(2, 258, (size, 32), generator=generator),
             "match_keys": keys[i * size:(i + 1) * size]} for i in range(k)]


BATCH_KEYS = ("image", "input_ids", "match_keys")


def grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss_fn", [losses.siglip.SigLipLoss(), losses.clip.ClipLoss()], ids=["siglip", "clip"])
def test_accumulation_over_k_micro_batches_equals_one_big_batch(loss_fn):
    micro = batches(3, 4)
    whole = [{key: torch.cat([b[key] for b in micro]) for key in BATCH_KEYS}]
    results = []
    for split in (whole, micro):
        model = tiny_model()
        loss = accumulated_step(model, loss_fn, split)
        results.append((loss, grads(model)))
    (big_loss, big_grads), (acc_loss, acc_grads) = results
    torch.testing.assert_close(acc_loss, big_loss, rtol=1e-5, atol=1e-6)
    assert acc_grads.keys() == big_grads.keys() and "logit_scale" in acc_grads
    for name in big_grads:
        torch.testing.assert_close(acc_grads[name], big_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    model = tiny_model()
    assert torch.allclose(accumulated_step(model, loss_fn, micro, backward=False), big_loss, atol=1e-6)
    assert not grads(model)


def test_accumulation_replays_dropout_masks():
    """Pass 2 sees the features pass 1 cached: the gradients are those of one forward in order."""
    loss_fn, micro = losses.siglip.SigLipLoss(), batches(2, 4)
    model = tiny_model(dropout=0.5).train()
    torch.manual_seed(7)
    out = [model(b["image"], b["input_ids"], output_dict=True) for b in micro]
    loss = loss_fn(*(torch.cat([o[k] for o in out]) for k in ("image_features", "text_features")),
                   out[0]["logit_scale"], out[0]["logit_bias"], match_keys=torch.cat([b["match_keys"] for b in micro]))
    loss.backward()
    expected, after = grads(model), torch.get_rng_state()
    model.zero_grad()
    torch.manual_seed(7)
    torch.testing.assert_close(accumulated_step(model, loss_fn, micro), loss.detach(), rtol=1e-5, atol=1e-6)
    for name, grad in grads(model).items():
        torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)
    assert torch.equal(torch.get_rng_state(), after)


def ddp_accumulation_rank(rank: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        results = []
        for loss_fn in (losses.siglip.SigLipLoss(), losses.clip.ClipLoss()):
            model = nn.parallel.DistributedDataParallel(tiny_model())
            loss = accumulated_step(model, loss_fn, batches(6, 2)[rank * 3:(rank + 1) * 3])
            results.append((loss, grads(model.module)))
        torch.save(results, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.distributed
def test_ddp_accumulation_equals_one_process_on_the_whole_batch(tmp_path):
    """2 DDP ranks × 3 micro-batches of 2 pairs (gradient sync in the last pass only) = 12 pairs at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.start_processes(ddp_accumulation_rank, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    whole = [{key: torch.cat([b[key] for b in batches(6, 2)]) for key in BATCH_KEYS}]
    for case, loss_fn in enumerate((losses.siglip.SigLipLoss(), losses.clip.ClipLoss())):
        model = tiny_model()
        loss = accumulated_step(model, loss_fn, whole)
        torch.testing.assert_close((ranks[0][case][0] + ranks[1][case][0]) / 2, loss, rtol=1e-5, atol=1e-6)
        for name, grad in grads(model).items():
            for rank in ranks:  # DDP averaged the gradients: every rank holds the single-process ones
                torch.testing.assert_close(rank[case][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)
