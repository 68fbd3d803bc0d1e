"""``train.compile``: per-block torch.compile gives eager's losses, gradients and weights (within
1e-4 in fp32) under DDP (with gradient checkpointing and exact accumulation) and FSDP2, with 2 gloo
processes; its checkpoints resume in eager; and where it cannot work, training runs eager after one
warning saying why."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from core.train.trainer import Trainer
from core.weights import load_checkpoint
from tests.core.test_train_distributed import WORKER, single_process

pytestmark = pytest.mark.distributed
TOLERANCE = 1e-4
SETUPS = {"ddp_compile": ["train.grad_checkpointing=true", "train.accum_steps=2"], "fsdp_compile": []}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, training):
    root = tmp_path_factory.mktemp("compiled")
    spec = training.write_spec(root / "tiny.toml", root / "unused")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           str(spec), str(root), *SETUPS]
    done = subprocess.run(cmd, env=training.env(), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return root


def _records(out):
    import json

    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r]


@pytest.mark.parametrize("setup", list(SETUPS))
def test_compiled_training_matches_eager(compiled, tmp_path, setup, training):
    out = compiled / setup / "train"
    assert "blocks compiled" in (out / "logs" / "rank0.log").read_text()
    reference = single_process(training, tmp_path, *SETUPS[setup])  # eager, one process, the global batch
    ours, eager = _records(out), _records(tmp_path / "train")
    assert ours and len(ours) == len(eager)
    for a, b in zip(ours, eager):
        for key in ("train/loss", "train/grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=TOLERANCE, abs=TOLERANCE), key
    weights, expected = load_checkpoint(out / "latest.pth")["model"], reference.clip.state_dict()
    assert weights.keys() == expected.keys()  # compiled blocks keep the eager state-dict keys
    assert max((weights[k].float() - expected[k].float()).abs().max().item() for k in weights) < TOLERANCE


def test_a_compiled_checkpoint_resumes_in_eager(compiled, tmp_path, training):
    path = compiled / "fsdp_compile" / "train" / "latest.pth"
    trainer = Trainer(training.config(tmp_path, num_epochs=2, resume_training_checkpoint_path=str(path)))
    assert trainer.step == 2 and trainer.epoch == 1
    trainer.train()
    assert trainer.step == 2 + 4


def test_without_a_compiler_training_runs_eager_after_a_warning(tmp_path, training, monkeypatch):
    import shutil

    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    trainer = Trainer(training.config(tmp_path, num_epochs=1, compile=True))
    trainer.train()
    log = (tmp_path / "train" / "logs" / "rank0.log").read_text()
    assert "train.compile: training runs eager: the inductor CPU backend needs a C++ compiler" in log
    assert all(getattr(block, "_compiled_call_impl", None) is None for block in trainer.clip.vision_blocks())
    assert torch.isfinite(torch.tensor(_records(tmp_path / "train")[-1]["train/loss"]))


def test_compiled_bf16_training_tracks_eager(tmp_path, training):
    from torch._dynamo.utils import counters

    counters.clear()
    losses = {}
    for compile_ in (False, True):
        out = tmp_path / str(compile_)
        Trainer(training.config(out, num_epochs=1, precision="bf16", compile=compile_)).train()
        losses[compile_] = [r["train/loss"] for r in _records(out / "train")]
    assert len(losses[True]) == len(losses[False]) > 0
    assert losses[True] == pytest.approx(losses[False], rel=2e-2)  # bf16 rounding differs between kernels
    assert counters["stats"]["unique_graphs"] > 0 and not counters["graph_break"]  # compiled code ran
