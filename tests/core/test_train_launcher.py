"""Killing `core train -g 2` (the launcher) ends its torchrun and every worker: none run on as
orphans writing checkpoints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


pytestmark = pytest.mark.distributed


def processes_mentioning(marker: str) -> list[int]:
    """Pids of live processes whose command line contains ``marker``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            pids.append(int(entry.name))
    return pids


def wait_for(condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_killing_the_launcher_ends_all_ranks(tmp_path, sig, training):
    spec = training.write_spec(tmp_path / "tiny.toml", tmp_path / "unused")
    results = tmp_path / f"launcher-{sig.name}"
    marker = str(results)
    launcher = subprocess.Popen(
        [sys.executable, "-m", "core.cli.main", "train", "-c", str(spec), "-r", str(results), "-g", "2",
         "train.num_epochs=50"],
        env=training.env(CLIPCORE_TEST_BATCH_DELAY="0.3"), stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    try:
        # the launcher, torchrun and two workers all carry the override on their command lines
        wait_for(lambda: len(processes_mentioning(marker)) >= 4, 120, "the workers never started")
        wait_for(lambda: (results / "train" / "logs").is_dir(), 120, "training never started")
        launcher.send_signal(sig)
        launcher.wait(timeout=30)
        wait_for(lambda: not processes_mentioning(marker), 15,
                 f"ranks still running after the launcher got {sig.name}: {processes_mentioning(marker)}")
    finally:
        launcher.kill()
        for pid in processes_mentioning(marker):
            os.kill(pid, signal.SIGKILL)
