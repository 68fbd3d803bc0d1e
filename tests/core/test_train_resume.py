"""THE resume test: a CPU run killed with SIGKILL in the middle of an epoch and resumed with
``train.resume_training_checkpoint_path=auto`` ends with the same weights as a run that was never
interrupted (data position, optimizer, schedule and RNG streams all restored)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from core.weights import load_checkpoint

STEPS_PER_EPOCH = 4
COMMON = ["train.num_epochs=3", "train.checkpoint_interval_unit=step", "train.checkpoint_interval=1"]


def _train(spec, results_dir, env, *extra) -> subprocess.Popen:
    processes = next((int(e.split("=")[1]) for e in extra if e.startswith("train.num_gpus=")), 1)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    cmd = [sys.executable, *launcher, "-m", "core.train", "--config", str(spec), f"results_dir={results_dir}", *COMMON,
           *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    return output


def _sigkill_once_written(proc: subprocess.Popen, checkpoint) -> None:
    """SIGKILL ``proc`` as soon as ``checkpoint`` exists."""
    deadline = time.monotonic() + 240
    while not checkpoint.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"the run to kill never wrote {checkpoint.name}"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_mid_epoch_then_auto_resume_matches_the_uninterrupted_run(tmp_path, training):
    spec = training.write_spec(tmp_path / "tiny.toml", tmp_path / "unused")
    reference = _train(spec, tmp_path / "reference", training.env())
    killed = _train(spec, tmp_path / "killed", training.env(CLIPCORE_TEST_BATCH_DELAY="0.4"))
    out = tmp_path / "killed" / "train"
    _sigkill_once_written(killed, out / "step_6.pth")
    state = load_checkpoint(out / "latest.pth")["train_state"]
    assert state["step"] < 3 * STEPS_PER_EPOCH and state["step_in_epoch"] != 0, state  # mid-epoch

    output = _finish(_train(spec, tmp_path / "killed", training.env(),
                            "train.resume_training_checkpoint_path=auto"))
    assert "RESUMING from" in output and f"step {state['step']}" in output
    _finish(reference)

    final = load_checkpoint(out / "latest.pth")
    expected = load_checkpoint(tmp_path / "reference" / "train" / "latest.pth")
    assert final["train_state"]["step"] == expected["train_state"]["step"] == 3 * STEPS_PER_EPOCH
    assert final["model"].keys() == expected["model"].keys()
    worst = max((final["model"][k].float() - expected["model"][k].float()).abs().max().item()
                for k in expected["model"])
    assert worst <= 1e-6, f"resumed weights differ from the uninterrupted run by {worst}"
    for key in ("exp_avg", "exp_avg_sq"):
        for name, state_ in expected["optimizer"]["state"].items():
            assert torch.equal(final["optimizer"]["state"][name][key], state_[key]), (name, key)


@pytest.mark.parametrize("processes", [1, 2])
def test_wds_with_workers_and_augmentation_resumes_bitwise(tmp_path, processes, data_kit, training):
    """The wds format, 2 loader workers, random augmentation, 1 or 2 processes: SIGKILL after an odd
    number of steps, resume, and the final weights equal the uninterrupted run's exactly."""
    from plugins.wds.writer import write_shards
    from core.data import RawSample

    shards = tmp_path / "shards"
    write_shards(shards, [RawSample(key=f"s{i:03d}", image=data_kit.image_bytes(size=(40, 40), seed=i),
                                    caption=f"caption {i}".encode()) for i in range(70)], shards=4)
    spec = training.write_spec(tmp_path / "tiny.toml", tmp_path / "unused")
    wds = ["dataset.train.type=wds", f"dataset.train.wds.root_dir={shards}", "dataset.train.wds.samples_per_shard=17",
           "dataset.train.num_workers=2", "dataset.train.batch_size=6", "dataset.augmentation.scale=[0.3, 1.0]",
           f"train.num_gpus={processes}"]
    env = training.env()
    env["CLIPCORE_PLUGINS"] += ",wds"
    reference = _train(spec, tmp_path / "reference", env, *wds)
    killed = _train(spec, tmp_path / "killed", env, *wds)
    out = tmp_path / "killed" / "train"
    _sigkill_once_written(killed, out / "step_5.pth")
    step = load_checkpoint(out / "latest.pth")["train_state"]["step"]
    _finish(_train(spec, tmp_path / "killed", env, *wds, "train.resume_training_checkpoint_path=auto"))
    _finish(reference)
    final = load_checkpoint(out / "latest.pth")
    expected = load_checkpoint(tmp_path / "reference" / "train" / "latest.pth")
    assert 0 < step < final["train_state"]["step"] == expected["train_state"]["step"]
    for key in expected["model"]:
        assert torch.equal(final["model"][key], expected["model"][key]), key
