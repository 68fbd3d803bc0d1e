"""THE resume test: a CPU run killed with SIGKILL in the middle of an epoch and resumed with
``train.resume_training_checkpoint_path=auto`` ends with the same weights as a run that was never
interrupted (data position, optimizer, schedule and RNG streams all restored)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import torch

from core.checkpoint import load_checkpoint
from tests.train_support import install_test_plugins, subprocess_env, write_tiny_spec

STEPS_PER_EPOCH = 4
COMMON = ["train.num_epochs=3", "train.checkpoint_interval_unit=step", "train.checkpoint_interval=1"]


def _train(spec, results_dir, env, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "core.train", "--config", str(spec), f"results_dir={results_dir}", *COMMON, *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output[-3000:]
    return output


def test_sigkill_mid_epoch_then_auto_resume_matches_the_uninterrupted_run(tmp_path):
    plugins = install_test_plugins(tmp_path / "plugins")
    spec = write_tiny_spec(tmp_path / "tiny.toml", tmp_path / "unused")
    reference = _train(spec, tmp_path / "reference", subprocess_env(plugins))
    killed = _train(spec, tmp_path / "killed", subprocess_env(plugins, CLIPCORE_TEST_BATCH_DELAY="0.4"))
    out = tmp_path / "killed" / "train"
    deadline = time.monotonic() + 240
    while not (out / "step_6.pth").exists():
        assert killed.poll() is None, killed.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "the run to kill never reached step 6"
        time.sleep(0.02)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert killed.returncode == -signal.SIGKILL
    state = load_checkpoint(out / "latest.pth")["train_state"]
    assert state["step"] < 3 * STEPS_PER_EPOCH and state["step_in_epoch"] != 0, state  # mid-epoch

    output = _finish(_train(spec, tmp_path / "killed", subprocess_env(plugins),
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
