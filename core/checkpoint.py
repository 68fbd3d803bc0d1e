"""clipcore checkpoints: atomic writes and safe (``weights_only``) reads.

A checkpoint is a dict of tensors and plain Python values only::

    {"format": "clipcore", "version": 1, "model_type": str, "model": state_dict, ...}

Training adds optimizer, schedule, scaler, progress, data-stream and RNG state under further keys.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from core.errors import ClipcoreError, file_system_error
from core.weights import load_torch_file

FORMAT = "clipcore"
VERSION = 1
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


def load_checkpoint(path: str | os.PathLike, *, key: str = "checkpoint") -> dict[str, Any]:
    """Read a clipcore checkpoint with ``torch.load(weights_only=True)``.

    ``key`` names the config key the path came from, for error messages.
    """
    path = Path(path)
    if not path.is_file():
        raise ClipcoreError(f"checkpoint not found: {path}", where=key,
                            fix="point it at an existing clipcore checkpoint (.pth)")
    ckpt = load_torch_file(path, where=key)
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ClipcoreError(f"{path} is not a clipcore checkpoint (no format={FORMAT!r} marker)", where=key,
                            fix="use a checkpoint written by `core train`, or set model.pretrained to "
                                "load published weights")
    return ckpt


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike, *, key: str,
                       checkpoint: dict[str, Any] | None = None, keep_initial_bias: bool = False) -> dict[str, Any]:
    """Load a clipcore checkpoint's weights into ``model``, refusing one saved for another type.

    ``checkpoint`` is the file's content when the caller read it already. ``keep_initial_bias``
    (training with a loss that adds a bias) lets a file without ``logit_bias`` keep the model's."""
    ckpt = load_checkpoint(path, key=key) if checkpoint is None else checkpoint
    saved_type, model_type = ckpt.get("model_type"), getattr(model, "model_type", None)
    if saved_type != model_type:
        raise ClipcoreError(
            f"{path} was saved for model type {saved_type!r}, but model.type is {model_type!r}",
            where=key, fix=f"set model.type = {saved_type!r}, or use a checkpoint of {model_type!r}")
    fix = "check that the checkpoint and the model config (size, adaptor, image size) belong together"
    try:
        missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    except RuntimeError as exc:  # size mismatches, reported by torch one per line
        mismatches = [line.strip() for line in str(exc).splitlines() if "size mismatch" in line]
        raise ClipcoreError(f"{path} does not match the {model_type} architecture built from the config: "
                            + ("; ".join(mismatches[:3]) or str(exc).splitlines()[0]), where=key, fix=fix) from None
    if keep_initial_bias:
        missing = [k for k in missing if k != "logit_bias"]
    if "logit_bias" in missing + unexpected:
        fix = ("a logit bias comes with the loss: train.loss_type must be the loss the checkpoint was trained with "
               "(siglip-style losses train a bias, clip-style ones do not)")
    if missing or unexpected:
        raise ClipcoreError(
            f"{path} does not match the {model_type} architecture: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})",
            where=key, fix=fix)
    return ckpt


def model_checkpoint(model: torch.nn.Module, **extra: Any) -> dict[str, Any]:
    """A weights-only checkpoint dict for ``model`` (plus ``extra`` plain values)."""
    return {"format": FORMAT, "version": VERSION, "model_type": model.model_type,
            "model": model.state_dict(), **extra}


# --------------------------------------------------------------------------- training state
def rng_state() -> dict[str, Any]:
    """This process's torch, CUDA, numpy and python RNG states as tensors and plain lists
    (loadable with ``weights_only=True``)."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    py_version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
        "python": [py_version, list(py_state), py_gauss],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured (CUDA states only when the device count matches)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    np.random.set_state((np_state["name"], np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Run a block (validation) without changing any RNG stream of the training run."""
    saved = rng_state()
    try:
        yield
    finally:
        set_rng_state(saved)


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
