"""The experiment-logger contract: what ``register_loggers`` registers, and the run it opens.

``train.loggers`` names the loggers a training run reports to (unset: those registered
``on_by_default``); :func:`logger_names` resolves it. Only rank 0 opens them. For each,
the trainer calls ``open(run)`` once, then:

- ``log_metrics(metrics, step=, epoch=)`` for every logged training step and every validation
  (``train/...``, ``val/...``, ``ref/...`` scalars; a resumed run logs on from its step);
- ``log_file(path)`` for a file worth keeping with the run (``training_curves.png`` at the end);
- ``log_checkpoint(path, metrics)`` when ``best.pth`` is written (its path and the validation
  metrics that made it best: trackers record the path, they do not upload weights);
- ``close(failed=)`` at the end, ``failed`` when training stopped with an error.

A logger that raises, in ``open`` or later, is reported once as a warning and not called again:
trackers never stop training (the run's ``metrics.jsonl`` keeps everything). A logger owns its settings through ``config_sections`` (e.g. ``[train.mine]``).

``metrics.jsonl`` (always written, beside the checkpoints) is the run record the training curves and
``core hpo`` read: one JSON object
per line, ``{"step", "epoch", "time", <metric>: value, ...}``; :func:`metrics_line` makes a line
and :func:`read_metrics` reads the file back.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Protocol

import attrs

METRICS_FILE = "metrics.jsonl"


@attrs.frozen(kw_only=True)
class Run:
    """The training run a logger is opened for.

    - ``cfg``: the loaded experiment config (a logger reads its own table with
      ``ConfigSection.of(cfg)``);
    - ``config``: the resolved spec as a plain nested table (what to record as the run's parameters);
    - ``out_dir``: the training output folder (``<results_dir>/train``);
    - ``name``: a name for the run (the results folder's name);
    - ``resumed``: whether training resumed from a checkpoint (the logger may continue its run).
    """

    cfg: Any
    config: dict[str, Any]
    out_dir: Path
    name: str
    resumed: bool = False


class Tracker(Protocol):
    """An open logger run (see the module doc for when each method is called)."""

    def log_metrics(self, metrics: dict[str, float], *, step: int, epoch: int) -> None: ...
    def log_file(self, path: Path) -> None: ...
    def log_checkpoint(self, path: Path, metrics: dict[str, float]) -> None: ...
    def close(self, *, failed: bool) -> None: ...


@attrs.frozen(kw_only=True)
class LoggerSpec:
    """What ``register_loggers`` registers.

    - ``name``: the logger's name in ``train.loggers``; unique across plugins.
    - ``open(run) -> Tracker``: starts logging a :class:`Run`.
    - ``config_sections``, ``check(cfg)``: as on :class:`core.data.DatasetFormat`, checked for
      ``core train`` when the logger is in ``train.loggers``.
    - ``on_by_default``: used when ``train.loggers`` is unset.
    - ``kit_overrides``: dotted overrides under which ``open`` works on any machine, with no server
      or account (``{tmp}`` stands for a temporary folder); the conformance kit runs the logger so.
    """

    name: str
    open: Callable[[Run], Tracker]
    description: str = ""
    config_sections: tuple[Any, ...] = ()
    check: Callable[[Any], None] | None = None
    on_by_default: bool = False
    kit_overrides: tuple[str, ...] = ()


def logger_names(cfg: Any, registry: Any) -> list[str]:
    """``train.loggers``, or when unset the registered loggers that are on by default."""
    if cfg.train.loggers is not None:
        return list(cfg.train.loggers)
    return [name for name, entry in registry.entries["loggers"].items() if entry.obj.on_by_default]


def metrics_line(metrics: dict[str, float], *, step: int, epoch: int) -> str:
    """One line of ``metrics.jsonl`` (with its newline)."""
    return json.dumps({"step": step, "epoch": epoch, "time": time.time(), **metrics}) + "\n"


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl; for a step logged twice (a resumed run) the last one wins."""
    records: dict[tuple[int, bool], dict[str, Any]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            record = json.loads(line)
            records[(record["step"], any(k.startswith("val/") for k in record))] = record
    return sorted(records.values(), key=lambda r: r["step"])
