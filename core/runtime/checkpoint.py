"""clipcore checkpoints: atomic writes and safe (``weights_only``) reads.

A checkpoint is a dict of tensors and plain Python values only::

    {"format": "clipcore", "version": 1, "model_type": str, "model": state_dict, ...}

Training adds optimizer, schedule, scaler, progress, data-stream and RNG state (:mod:`core.train.rng`)
under further keys.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch

from core.errors import file_system_error
from core.weights import FORMAT, VERSION

TEMP_SUFFIX = ".tmp"  # the suffix of an atomic write's temp file: .<name>.<random>.tmp


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``.

    A crash during the write leaves the previous file (if any) intact.
    """
    return _write_atomic(path, lambda f: torch.save(obj, f))


def write_text_atomic(text: str, path: str | os.PathLike) -> Path:
    """Write UTF-8 ``text`` to ``path`` with the same guarantee as :func:`save_atomic`."""
    return _write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def _write_atomic(path: str | os.PathLike, write: Callable[[Any], Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # as open() would create it (mkstemp makes it 0600)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        err = file_system_error(exc, path)
        if err is None:
            raise
        raise err from exc
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete the temp files of atomic writes that a killed process left in ``directory``."""
    stale = [p for p in Path(directory).glob(f".*{TEMP_SUFFIX}") if p.is_file()]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def model_checkpoint(model: torch.nn.Module, **extra: Any) -> dict[str, Any]:
    """A weights-only checkpoint dict for ``model`` (plus ``extra`` plain values)."""
    return {"format": FORMAT, "version": VERSION, "model_type": model.model_type,
            "model": model.state_dict(), **extra}


# --------------------------------------------------------------------------- training state
def link_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make ``dst`` a hard link to ``src`` (a copy where links are unsupported), replacing ``dst``
    atomically: a reader sees the old or the new file, never a partial one."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return dst


LATEST, BEST = "latest.pth", "best.pth"
_PERIODIC = re.compile(r"^(epoch|step)_(\d+)\.pth$")


def metric_mode(name: str) -> str:
    """``min`` for ranks and losses (lower is better), ``max`` for everything else."""
    return "min" if any(k in name for k in ("MedR", "MeanR", "loss")) else "max"


class CheckpointManager:
    """Where and when training checkpoints are written (rank 0 writes; the caller gathers state).

    Periodic files are ``epoch_N.pth`` (``unit="epoch"``, N = epochs completed) or ``step_N.pth``
    (``unit="step"``, N = optimizer steps completed), every ``interval`` units. ``latest.pth`` is
    re-pointed (hard link, atomic) at every save; ``best.pth`` at the checkpoint with the best
    value of ``best_metric``. ``keep_last`` limits the periodic files (latest and best survive:
    they are links). Every write is atomic: a kill mid-save leaves the previous files intact.
    """

    def __init__(self, directory: str | os.PathLike, *, interval: int, unit: str,
                 keep_last: int | None, best_metric: str):
        self.directory = Path(directory)
        self.interval, self.unit, self.keep_last = interval, unit, keep_last
        self.best_metric, self.mode = best_metric, metric_mode(best_metric)
        self.best_value: float | None = None

    def due(self, *, epoch: int, step: int, epoch_end: bool) -> bool:
        """Whether a periodic checkpoint is due after ``step`` steps / at the end of epoch ``epoch``."""
        if self.unit == "step":
            return not epoch_end and step % self.interval == 0
        return epoch_end and epoch % self.interval == 0

    def periodic_name(self, *, epoch: int, step: int) -> str:
        return f"step_{step}.pth" if self.unit == "step" else f"epoch_{epoch}.pth"

    def improved(self, metrics: dict[str, float]) -> bool:
        """Record ``metrics``; True when ``best_metric`` beats every value seen before."""
        value = metrics.get(self.best_metric)
        if value is None or not math.isfinite(value):
            return False
        if self.best_value is not None and (value <= self.best_value if self.mode == "max"
                                            else value >= self.best_value):
            return False
        self.best_value = value
        return True

    def save(self, state: dict[str, Any], name: str) -> Path:
        """Write ``state`` as ``name``, re-point ``latest.pth`` and apply ``keep_last``."""
        path = save_atomic(state, self.directory / name)
        link_atomic(path, self.directory / LATEST)
        self._prune()
        return path

    def save_best(self, state: dict[str, Any] | None, saved: Path | None) -> Path:
        """Point ``best.pth`` at ``saved`` (just written) or write ``state`` there."""
        if saved is not None:
            return link_atomic(saved, self.directory / BEST)
        return save_atomic(state, self.directory / BEST)

    def periodic(self) -> list[Path]:
        """Periodic checkpoint files, oldest first."""
        found = [(int(m.group(2)), p) for p in self.directory.glob("*.pth") if (m := _PERIODIC.match(p.name))]
        return [p for _, p in sorted(found)]

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        for path in self.periodic()[: -self.keep_last or None]:
            path.unlink(missing_ok=True)

    def latest(self) -> Path | None:
        path = self.directory / LATEST
        return path if path.is_file() else None
