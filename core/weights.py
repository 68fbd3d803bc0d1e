"""Where a backbone's weights come from: logit initialisation, safe reading of weight files and of
clipcore checkpoints, strict loading into a model, and the one error raised when weights cannot be
found.

Backbone plugins use these helpers so that every family reports missing weights, unsafe files
and foreign checkpoints the same way.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Callable, Sequence, TypeVar

import attrs
import torch

from core.errors import ClipcoreError

T = TypeVar("T")
FORMAT = "clipcore"  # the marker of a clipcore checkpoint: {"format": FORMAT, "version": VERSION, ...}
VERSION = 1


def init_logit_values(cfg: Any) -> tuple[float, float | None]:
    """Logit scale (log space) and bias for a model that starts from scratch, as core resolved them
    before ``build()`` from the spec and the loss (:mod:`core.runtime.build`): a bias of ``None``
    means the model has none, unless its pretrained weights bring one. A scale left unset (no loss
    declares one) is 0 (a multiplier of 1)."""
    scale, bias = cfg.model.init_logit_scale, cfg.model.init_logit_bias
    return float(0.0 if scale is None else scale), None if bias is None else float(bias)


def hf_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) forbids network access."""
    return any(os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"}
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (``HF_HUB_CACHE``, else
    ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    return Path(home).expanduser() / "hub"


WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".tar")


def load_hf(load: Callable[..., T], source: str, looked: list[str]) -> T | None:
    """Run a Hugging Face ``from_pretrained``-style ``load`` on ``source`` (a local directory or a
    hub id): the directory, else the HF cache (``local_files_only``), else, unless offline, the
    hub. Returns ``None`` when nothing was found, after appending every place tried to ``looked``."""
    if Path(source).expanduser().is_dir():
        try:
            return load(str(Path(source).expanduser()), local_files_only=True)
        except OSError as exc:
            looked.append(f"the directory {source} ({_first_line(exc)})")
            return None
    if looks_like_path(source):
        looked.append(f"{source} (no such directory)")
        return None
    cache = hf_cache_dir()
    try:
        return load(source, local_files_only=True, cache_dir=str(cache))
    except OSError:
        looked.append(f"the Hugging Face cache {cache / ('models--' + source.replace('/', '--'))}")
    if hf_offline():
        looked.append(f"the Hugging Face hub ({source}; skipped: HF_HUB_OFFLINE is set)")
        return None
    try:
        return load(source, cache_dir=str(cache))
    except OSError as exc:
        looked.append(f"the Hugging Face hub ({source}: {_first_line(exc)})")
        return None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]


def looks_like_path(source: str) -> bool:
    """Whether ``source`` names a local file or directory rather than a hub id (``org/name``) or
    a pretrained tag: it exists, starts with ``/``, ``.`` or ``~``, has several ``/`` or a
    weights-file suffix."""
    return (Path(source).expanduser().exists() or source.startswith(("/", ".", "~"))
            or source.count("/") > 1 or source.endswith(WEIGHT_SUFFIXES))


def missing_weights_error(model_type: str, looked: Sequence[str], ways: Sequence[str]) -> ClipcoreError:
    """The error for weights that are not available: names the model, every place looked and
    every way to provide them (``model.pretrained = false`` always among them)."""
    ways = [*ways, "set train.pretrained_model_path (training) or evaluate/inference/export.checkpoint "
                   "to a clipcore checkpoint of this model type",
            "set model.pretrained = false to start from random weights"]
    return ClipcoreError(
        f"no weights for model type {model_type!r} are available; looked in: " + "; ".join(looked),
        where="model.pretrained",
        fix="provide them one of these ways: " + "; ".join(f"({i}) {w}" for i, w in enumerate(ways, 1)))


PICKLED_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
SAFE_LOADER_DETAIL = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


def load_torch_file(path: Path, *, where: str, allow: Sequence[type] = (), mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, allowing the globals ``allow`` besides
    tensors and plain values (memory-mapped when ``mmap`` and the file is a zip archive).

    Nothing in the file runs. A file the safe loader rejects is refused naming the global it needs
    (:func:`_refused_pickle_error`); an unreadable one with its cause. Both raise ClipcoreError
    with ``where`` (the config key the path came from).
    """
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
    except pickle.UnpicklingError as exc:
        raise _refused_pickle_error(path, exc, where=where) from None
    except Exception as exc:
        raise ClipcoreError(f"cannot read {path}: {_first_line(exc)}", where=where,
                            fix="the file is truncated, corrupt or not a PyTorch file; copy or download it again") from None


def _refused_pickle_error(path: Path, exc: pickle.UnpicklingError, *, where: str) -> ClipcoreError:
    """The error for a file torch's safe loader rejected (``exc``): names the global it needs
    (e.g. ``posix.system``), says how to inspect the file without running it, and to re-save its
    tensors only if the file is trusted. Never advises turning the safe loader off."""
    text = str(exc)
    found = PICKLED_GLOBAL.search(text)
    if found:
        what = (f"{path} needs the Python global `{found[1]}` to unpickle; clipcore refuses it, because "
                "unpickling anything but tensors and plain values can run code")
    else:
        detail = SAFE_LOADER_DETAIL.search(text)
        what = (f"{path} is refused by torch's safe loader ({detail[1].strip() if detail else 'unknown reason'}): "
                "it is corrupt, not a PyTorch file, or a pickle using more than tensors and plain values")
    return ClipcoreError(
        what, where=where,
        fix=f"inspect it without running it: `python -m zipfile -l {path}` lists its members, and "
            f"`python -m zipfile -e {path} DIR` then `python -m pickletools DIR/*/data.pkl` prints every global "
            f"it calls (a file that is not a zip archive: `python -m pickletools {path}`). Only if you trust the "
            "file and its source, re-save just its tensors (a state dict with torch.save, or safetensors) with the "
            "software that wrote it, and point clipcore at the new file")


@attrs.frozen
class WeightsFile:
    """A weights file read safely: its state dict and, for a clipcore checkpoint, its model type."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    clipcore_type: str | None = None


def read_weights_file(path: str | os.PathLike, *, key: str = "model.pretrained") -> WeightsFile:
    """Read a state dict from ``.safetensors`` or a PyTorch file with ``weights_only=True``.

    Accepts a bare state dict, one under ``state_dict`` or ``model``, or a clipcore checkpoint,
    and strips a DDP ``module.`` prefix. A file that needs arbitrary unpickling is refused
    (:func:`load_torch_file`).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ClipcoreError(f"weights file not found: {path}", where=key,
                            fix="point it at an existing .pth/.pt/.ckpt/.bin/.safetensors file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return WeightsFile(path, _strip_module(load_file(str(path), device="cpu")))
        except Exception as exc:
            raise ClipcoreError(f"cannot read safetensors file {path}: {exc}", where=key,
                                fix="the file is corrupt or not a safetensors file") from None
    obj = load_torch_file(path, where=key)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return WeightsFile(path, obj["model"], obj.get("model_type"))
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ClipcoreError(f"{path} holds no state dict (a mapping of names to tensors)", where=key,
                            fix="save the model's state_dict() (optionally under 'state_dict' or 'model')")
    return WeightsFile(path, _strip_module(obj))


def _strip_module(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module."):]: v for k, v in state_dict.items()}
    return dict(state_dict)


# --------------------------------------------------------------------------- clipcore checkpoints
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
               "(sigmoid losses train a bias, softmax ones do not)")
    if missing or unexpected:
        raise ClipcoreError(
            f"{path} does not match the {model_type} architecture: "
            f"{len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})",
            where=key, fix=fix)
    return ckpt
