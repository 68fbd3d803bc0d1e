"""Deploy-time models for ``core evaluate`` / ``core inference``: ``<action>.onnx_file`` (an
exporter's runner, ONNX Runtime) or ``<action>.trt_engine`` (an engine builder's runner,
TensorRT) in place of a checkpoint.

The runner (:class:`core.exporter.Runner`) preprocesses and tokenises from the export's sidecars,
finds a separate export's ``_vision`` / ``_text`` files from a base path and opens only the tower
a call needs.
"""

from __future__ import annotations

from pathlib import Path

from core.errors import ConfigError
from core.exporter import Runner
from core.registry import get_registry


def deployed_path(cfg, action: str) -> tuple[str, str] | None:
    """``(kind, path)`` of the deployed model an action runs (``onnx_file`` or ``trt_engine``),
    or ``None`` for the PyTorch path. Refuses ambiguous settings."""
    section = getattr(cfg, action)
    given = [(key, getattr(section, key)) for key in ("onnx_file", "trt_engine", "checkpoint") if getattr(section, key)]
    if len(given) > 1:
        raise ConfigError(f"{' and '.join(f'{action}.{k}' for k, _ in given)} are all set; one model per run",
                          where=f"{action}.{given[0][0]}", fix="keep one of them")
    if given and given[0][0] != "checkpoint":
        return given[0]
    return None


def open_deployed(cfg, action: str, **options) -> Runner | None:
    """The runner for ``<action>.onnx_file`` / ``<action>.trt_engine``, or ``None`` when neither is
    set. ``options`` go to the plugin's ``open_runner`` (e.g. ``batch_size``)."""
    found = deployed_path(cfg, action)
    if found is None:
        return None
    key, path = found
    kind = "exporters" if key == "onnx_file" else "engine_builders"
    candidates = [e.obj for e in get_registry().entries[kind].values() if e.obj.open_runner is not None]
    suffix = Path(path).suffix
    matching = [c for c in candidates if suffix in c.suffixes or (not suffix and len(candidates) == 1)]
    if not matching:
        known = sorted({s for c in candidates for s in c.suffixes})
        raise ConfigError(f"no installed plugin runs {path!r}", where=f"{action}.{key}",
                          fix="use a file with one of the suffixes " + (", ".join(known) or "(none installed)"))
    return matching[0].open_runner(path, key=f"{action}.{key}", **options)
