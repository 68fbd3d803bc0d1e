"""One trial: the real trainer (``core train``, which starts torchrun when the trial needs several
processes) in its own process and results folder, followed from its ``metrics.jsonl``.

Every validation's metric is reported to the study; when the pruner says stop, the run is
terminated (SIGTERM, then SIGKILL after a grace period) and its folder marked ``PRUNED``.
Threads per trial (``OMP_NUM_THREADS``) and devices (``CUDA_VISIBLE_DEVICES``) come from the
slot the trial runs in. The trial process dies with the worker (``PR_SET_PDEATHSIG``), so a
killed ``core hpo`` leaves no orphan training behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from core.runtime.checkpoint import metric_mode

POLL_S = 0.5
TERMINATE_GRACE_S = 30
MARKERS = ("PRUNED", "FAILED")


class TrialFailed(RuntimeError):
    """The training run of a trial exited with an error (its log's tail is the message)."""


def _die_with_parent() -> None:  # runs in the child between fork and exec
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def command(spec: Path, overrides: list[str], out: Path) -> list[str]:
    return [sys.executable, "-m", "core.cli.main", "train", "-c", str(spec), *overrides, f"results_dir={out}"]


def follow(metrics: Path, seen: int) -> tuple[list[dict[str, Any]], int]:
    """Records of ``metrics`` past the first ``seen`` complete lines, and the new count."""
    if not metrics.is_file():
        return [], seen
    lines = metrics.read_text(encoding="utf-8").split("\n")[:-1]  # a last line without "\n" is incomplete
    return [json.loads(line) for line in lines[seen:] if line.strip()], len(lines)


def run(spec: Path, overrides: list[str], out: Path, metric: str, *, env: dict[str, str],
        report: Callable[[float, int], bool]) -> float | None:
    """Train with ``overrides`` into ``out``; call ``report(value, step)`` at every validation that
    logs ``metric`` (True: prune). Returns the best value over validations, ``None`` when pruned;
    raises :class:`TrialFailed` when the run fails."""
    out.mkdir(parents=True, exist_ok=True)
    metrics, best, seen = out / "train" / "metrics.jsonl", None, 0
    better = max if metric_mode(metric) == "max" else min
    with open(out / "trial.log", "w", encoding="utf-8") as log:
        process = subprocess.Popen(command(spec, overrides, out), stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **env}, preexec_fn=_die_with_parent)
        try:
            while True:
                finished = process.poll() is not None
                records, seen = follow(metrics, seen)
                for record in records:
                    if metric not in record:
                        continue
                    best = record[metric] if best is None else better(best, record[metric])
                    if report(record[metric], int(record.get("step", 0))):
                        _stop(process)
                        (out / "PRUNED").write_text(f"pruned after step {record.get('step')}\n")
                        return None
                if finished:
                    break
                time.sleep(POLL_S)
        except BaseException:
            _stop(process)
            raise
    if process.returncode != 0 or best is None:
        (out / "FAILED").write_text(f"exit status {process.returncode}\n")
        tail = (out / "trial.log").read_text(encoding="utf-8", errors="replace").strip().splitlines()[-8:]
        why = "exited with status %d" % process.returncode if process.returncode else f"never logged {metric}"
        raise TrialFailed(f"the training run {why}; {out / 'trial.log'} ends:\n" + "\n".join(tail))
    return best


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(TERMINATE_GRACE_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def remove_checkpoints(out: Path) -> None:
    """Free a trial's disk: its checkpoints go, its metrics and logs stay."""
    for path in out.rglob("*.pth"):
        path.unlink(missing_ok=True)
