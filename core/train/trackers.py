"""What a training run logs to, on rank 0 only: its own record ``metrics.jsonl`` (always; the
curves, ``core hpo`` and people read it), and the loggers of ``train.loggers`` (the contract is
:mod:`core.tracking`), of which one that raises is warned about once and dropped, never stopping
training."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from core.tracking import METRICS_FILE, Run, Tracker, logger_names, metrics_line


class MetricsRecord:
    """``metrics.jsonl``, appended and flushed line by line (a resumed run appends to it)."""

    def __init__(self, out_dir: Path):
        self._file = open(out_dir / METRICS_FILE, "a", encoding="utf-8")

    def log_metrics(self, metrics: dict[str, float], *, step: int, epoch: int) -> None:
        self._file.write(metrics_line(metrics, step=step, epoch=epoch))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class Trackers:
    """The run record and every open logger of the run, called in ``train.loggers`` order."""

    def __init__(self, run: Run, *, main: bool, warn: Callable[[str], None]):
        from core.registry import get_registry

        self._warn, self._open = warn, {}
        self._record = MetricsRecord(run.out_dir) if main else None
        if not main:
            return
        registry = get_registry()
        for name in logger_names(run.cfg, registry):
            spec = registry.get("loggers", name, key="train.loggers")
            try:
                self._open[name] = spec.open(run)
            except Exception as exc:  # noqa: BLE001 - a tracker never stops training
                self._drop(name, "could not start", exc)

    @property
    def names(self) -> list[str]:
        """The loggers still running."""
        return list(self._open)

    def log_metrics(self, metrics: dict[str, float], *, step: int, epoch: int) -> None:
        if self._record is not None:
            self._record.log_metrics(metrics, step=step, epoch=epoch)
        self._each("log_metrics", lambda t: t.log_metrics(metrics, step=step, epoch=epoch))

    def log_file(self, path: Path) -> None:
        self._each("log_file", lambda t: t.log_file(path))

    def log_checkpoint(self, path: Path, metrics: dict[str, float]) -> None:
        self._each("log_checkpoint", lambda t: t.log_checkpoint(path, metrics))

    def close(self, *, failed: bool) -> None:
        self._each("close", lambda t: t.close(failed=failed))
        self._open.clear()
        if self._record is not None:
            self._record.close()
            self._record = None

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for name, tracker in list(self._open.items()):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - a tracker never stops training
                self._drop(name, f"failed in {what}", exc)

    def _drop(self, name: str, what: str, exc: Exception) -> None:
        self._open.pop(name, None)
        self._warn(f"logger {name!r} {what} ({type(exc).__name__}: {exc}); it is off for the rest of this run "
                   "and training goes on")
