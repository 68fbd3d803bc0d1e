"""Training with 2 gloo processes on CPU (one torchrun launch runs every scenario): DDP and FSDP2
give the same weights as one process on the concatenated batch, frozen towers work under both,
validation runs on the sharded model, and an FSDP checkpoint loads into a single process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from core.runtime.build import build_model
from core.weights import load_checkpoint
from core.train.trainer import Trainer

pytestmark = pytest.mark.distributed
SCENARIOS = ["ddp", "fsdp", "fsdp_frozen_vision_lamb", "ddp_frozen_text_unlocked", "ddp_lora", "fsdp_lora",
             "ddp_reg"]
WORKER = Path(__file__).with_name("dist_train_worker.py")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, training) -> Path:
    from core.runtime.checkpoint import model_checkpoint, save_atomic

    root = tmp_path_factory.mktemp("dist")
    spec = training.write_spec(root / "tiny.toml", root / "unused")
    save_atomic(model_checkpoint(build_model(training.config(root / "unused"))), root / "base.pth")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           str(spec), str(root), *SCENARIOS]
    done = subprocess.run(cmd, env=training.env(), capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    return root


def single_process(training, tmp_path: Path, *overrides: str, **train) -> Trainer:
    """The reference: one process, batch 32 = the 2 × 16 global batch of the distributed runs."""
    from core.spec.load import load_config

    cfg = load_config(None, [*training.overrides(tmp_path, num_epochs=1, **train), "dataset.train.type=synthetic_fixed",
                             "dataset.train.batch_size=32", *overrides])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer = Trainer(cfg)
        trainer.train()
    finally:
        torch.set_num_threads(threads)
    return trainer


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def _train_records(out: Path) -> list[dict]:
    import json

    return [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "train/loss" in r]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp", "ddp_lora", "fsdp_lora", "ddp_reg"])
def test_two_processes_match_one_process_on_the_global_batch(runs, tmp_path, strategy, training):
    """Same losses and gradient norms at every step (Adam would hide a wrong gradient scale in the
    weights), and the same weights up to float noise that Adam amplifies on tiny gradients; LoRA
    runs (adapters added before wrapping) included."""
    extra = {"ddp_lora": ["model.peft.enabled=true", "model.peft.vision.dropout=0", "model.peft.text.dropout=0"],
             "ddp_reg": ["model.regularization.enabled=true", f"train.pretrained_model_path={runs / 'base.pth'}"]}
    extra["fsdp_lora"] = extra["ddp_lora"]
    reference = single_process(training, tmp_path, *extra.get(strategy, []))
    assert_matches_one_process(runs / strategy / "train", tmp_path / "train", reference)


def assert_matches_one_process(out: Path, reference_dir: Path, reference: Trainer) -> None:
    """The 2-process run in ``out`` logged the losses, gradient norms and scales of the reference
    (one process on the global batch) at every step, and ends with its weights."""
    ckpt = load_checkpoint(out / "latest.pth")
    assert ckpt["train_state"]["step"] == 2 and ckpt["train_state"]["world_size"] == 2
    assert len(ckpt["rng"]) == 2 and len(ckpt["data"]) == 2
    for ours, expected in zip(_train_records(out), _train_records(reference_dir), strict=True):
        for key in ("train/loss", "train/grad_norm", "train/logit_scale", "train/lr/vision",
                    *(k for k in expected if k.startswith("train/reg/"))):
            assert ours[key] == pytest.approx(expected[key], rel=1e-5), key
    assert _max_diff(ckpt["model"], reference.clip.state_dict()) < 1e-4


def test_frozen_towers_under_ddp_and_fsdp(runs, tmp_path, training):
    initial = Trainer(training.config(tmp_path, num_epochs=1)).clip.state_dict()  # same seed, same init
    fsdp = load_checkpoint(runs / "fsdp_frozen_vision_lamb" / "train" / "latest.pth")
    ddp = load_checkpoint(runs / "ddp_frozen_text_unlocked" / "train" / "latest.pth")
    unlocked = "text_tower.blocks.1."
    for name, value in initial.items():
        frozen_by_fsdp = name.startswith("vision_tower.")
        frozen_by_ddp = name.startswith("text_tower.") and not name.startswith(unlocked)
        assert torch.equal(fsdp["model"][name], value) == frozen_by_fsdp, name
        if name.startswith(unlocked) or name.startswith("vision_tower.") and "weight" in name:
            assert not torch.equal(ddp["model"][name], value), name
        if frozen_by_ddp:
            assert torch.equal(ddp["model"][name], value), name
    assert not any(name.startswith("vision_tower.") for name in fsdp["optimizer"]["state"])
    assert not any(name.startswith("text_tower.") and not name.startswith(unlocked)
                   for name in ddp["optimizer"]["state"])


def test_validation_runs_on_the_sharded_model_mid_training(runs):
    import json

    out = runs / "fsdp_frozen_vision_lamb" / "train"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val/t2i_R@1" in r] == [1, 2]
    assert (out / "best.pth").is_file()
    assert "loss on this rank" in (out / "logs" / "rank1.log").read_text()


def test_fsdp_checkpoint_loads_into_one_process_for_evaluation_and_resume(runs, tmp_path, training):
    path = runs / "fsdp" / "train" / "latest.pth"
    cfg = training.config(tmp_path, num_epochs=2, resume_training_checkpoint_path=str(path))
    model = build_model(cfg, checkpoint=str(path))
    assert _max_diff(model.state_dict(), load_checkpoint(path)["model"]) == 0
    trainer = Trainer(cfg)  # world size 2 -> 1
    assert trainer.step == 2 and trainer.epoch == 1
    trainer.train()
    assert trainer.step == 2 + 4
    log = (tmp_path / "train" / "logs" / "rank0.log").read_text()
    assert "written by 2 processes, this run has 1" in log


@pytest.mark.slow
def test_core_train_launches_torchrun_itself(tmp_path, training):
    spec = training.write_spec(tmp_path / "tiny.toml", tmp_path / "results")
    cmd = [sys.executable, "-m", "core.cli.main", "train", "-c", str(spec), "-g", "2", "train.num_epochs=1"]
    done = subprocess.run(cmd, env=training.env(), capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    out = tmp_path / "results" / "train"
    ckpt = load_checkpoint(out / "latest.pth")
    assert ckpt["train_state"]["world_size"] == 2 and ckpt["train_state"]["step"] == 2
    assert "loss on this rank" in (out / "logs" / "rank1.log").read_text()
