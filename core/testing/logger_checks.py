"""Checks every logger plugin passes (the contract is :mod:`core.tracking`).

Each check runs the logger with its ``kit_overrides`` in a temporary folder, through a whole run:
metrics by step (a non-finite value included: a diverging run must not break the tracker), a
file, the best checkpoint, and the close; then a resumed run continuing it."""

from __future__ import annotations

import tempfile
from pathlib import Path

from PIL import Image

from core.registry import Entry, Registry
from core.spec.load import load_config
from core.tracking import Run

METHODS = ("log_metrics", "log_file", "log_checkpoint", "close")


def _run(entry: Entry, tmp: str, *, resumed: bool) -> Run:
    overrides = [f'train.loggers=["{entry.name}"]', *(o.replace("{tmp}", tmp) for o in entry.obj.kit_overrides)]
    out = Path(tmp) / "train"
    out.mkdir(exist_ok=True)
    return Run(cfg=load_config(None, overrides), config={"model": {"type": "kit"}, "train": {"loss_type": "kit"}},
               out_dir=out, name="kit", resumed=resumed)


def _open(entry: Entry, run: Run):
    tracker = entry.obj.open(run)
    missing = [m for m in METHODS if not callable(getattr(tracker, m, None))]
    assert not missing, (f"plugin {entry.provider.plugin!r}, logger {entry.name!r}: open() returned "
                         f"{type(tracker).__name__} without {', '.join(missing)} (see core.tracking.Tracker)")
    return tracker


def check_logger_logs_a_run(entry: Entry, registry: Registry) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = _run(entry, tmp, resumed=False)
        tracker = _open(entry, run)
        tracker.log_metrics({"train/loss": 1.5, "train/lr/vision": 1e-4}, step=1, epoch=1)
        tracker.log_metrics({"train/loss": float("nan"), "val/t2i_R@1": 0.5, "val/t2i_mAP": 0.25}, step=2, epoch=1)
        curves = run.out_dir / "training_curves.png"
        Image.new("RGB", (32, 24), (40, 80, 120)).save(curves)
        tracker.log_file(curves)
        tracker.log_checkpoint(run.out_dir / "best.pth", {"val/t2i_mAP": 0.25})
        tracker.close(failed=False)


def check_logger_continues_a_resumed_run(entry: Entry, registry: Registry) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        first = _open(entry, _run(entry, tmp, resumed=False))
        first.log_metrics({"train/loss": 1.0}, step=1, epoch=1)
        first.close(failed=True)
        again = _open(entry, _run(entry, tmp, resumed=True))
        again.log_metrics({"train/loss": 0.9}, step=2, epoch=1)
        again.close(failed=False)


LOGGER_CHECKS = [check_logger_logs_a_run, check_logger_continues_a_resumed_run]
