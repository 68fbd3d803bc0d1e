"""clipcore checkpoints: atomic writes and safe (``weights_only``) reads.

A checkpoint is a dict of tensors and plain Python values only::

    {"format": "clipcore", "version": 1, "model_type": str, "model": state_dict, ...}

Training adds optimizer, schedule, scaler, progress, data-stream and RNG state under further keys.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch

from core.errors import ClipcoreError

FORMAT = "clipcore"
VERSION = 1


def save_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file in the same folder, fsync, then rename over ``path``.

    A crash during the write leaves the previous file (if any) intact.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path: str | os.PathLike, *, key: str = "checkpoint") -> dict[str, Any]:
    """Read a clipcore checkpoint with ``torch.load(weights_only=True)``.

    ``key`` names the config key the path came from, for error messages.
    """
    path = Path(path)
    if not path.is_file():
        raise ClipcoreError(f"checkpoint not found: {path}", where=key,
                            fix="point it at an existing clipcore checkpoint (.pth)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ClipcoreError(
            f"{path} needs arbitrary unpickling, which clipcore refuses (it can run code): {exc}".split("\n")[0],
            where=key, fix="re-save it as a plain state dict (tensors and plain types only) or as safetensors") from None
    except Exception as exc:
        raise ClipcoreError(f"cannot read checkpoint {path}: {exc}", where=key,
                            fix="the file is corrupt or not a PyTorch checkpoint") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ClipcoreError(f"{path} is not a clipcore checkpoint (no format={FORMAT!r} marker)", where=key,
                            fix="use a checkpoint written by `core train`, or set model.pretrained to "
                                "load published weights")
    return ckpt


def load_model_weights(model: torch.nn.Module, path: str | os.PathLike, *, key: str) -> dict[str, Any]:
    """Load a clipcore checkpoint's weights into ``model``, refusing one saved for another type."""
    ckpt = load_checkpoint(path, key=key)
    saved_type, model_type = ckpt.get("model_type"), getattr(model, "model_type", None)
    if saved_type != model_type:
        raise ClipcoreError(
            f"{path} was saved for model type {saved_type!r}, but model.type is {model_type!r}",
            where=key, fix=f"set model.type = {saved_type!r}, or use a checkpoint of {model_type!r}")
    missing, unexpected = model.load_state_dict(ckpt["model"], strict=False)
    if missing or unexpected:
        raise ClipcoreError(
            f"{path} does not match the {model_type} architecture: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})",
            where=key, fix="check that the checkpoint and the model config (size, adaptor) belong together")
    return ckpt


def model_checkpoint(model: torch.nn.Module, **extra: Any) -> dict[str, Any]:
    """A weights-only checkpoint dict for ``model`` (plus ``extra`` plain values)."""
    return {"format": FORMAT, "version": VERSION, "model_type": model.model_type,
            "model": model.state_dict(), **extra}
