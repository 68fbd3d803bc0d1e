"""The exporter and engine-builder contracts, and the runner both hand back for deploy-time work."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, Union

import attrs
import numpy as np


class Runner(Protocol):
    """A deployed model (an ONNX Runtime session, an engine) that computes embeddings.

    ``has_vision`` / ``has_text`` say which towers are loaded. ``encode_images(images)`` takes
    image paths or PIL images (preprocessed from the sidecars alone) or an already preprocessed
    float32 ``[N, 3, H, W]`` array; ``encode_texts(texts)`` tokenises from the sidecars. Both
    return L2-normalised float32 ``[N, D]`` arrays. ``max_batch`` is the largest batch one call
    may run (``None``: any). ``logit_scale`` (the multiplier) and ``logit_bias`` (0 without one)
    are the exported model's.
    """

    has_vision: bool
    has_text: bool
    max_batch: int | None
    logit_scale: float
    logit_bias: float

    def encode_images(self, images: Union[np.ndarray, Sequence[Any]]) -> np.ndarray: ...
    def encode_texts(self, texts: Sequence[str]) -> np.ndarray: ...


@attrs.frozen(kw_only=True)
class Exporter:
    """What ``register_exporters`` registers.

    - ``name``: the exporter's name (``onnx``); unique across plugins.
    - ``export(model, cfg) -> list[Path]``: writes the model (a :class:`core.backbone.ClipModel`)
      as ``cfg.export`` asks, with its sidecars, and returns the written model files. Refuses
      models whose ``export_refusal`` is set, and existing outputs unless ``cfg.export.force``.
    - ``suffixes``: file suffixes of its artifacts (``.onnx``).
    - ``open_runner(path) -> Runner``: optional; loads an artifact (or the base path of a separate
      export) for deploy-time evaluate/inference.
    - ``precisions``: the ``export.precision`` values it writes (core refuses the others up front).
      A reduced precision is scored with :func:`core.accuracy_gate` before its files are kept, and
      ``int8`` calibrated on :func:`core.calibration_data`.
    - ``config_sections``, ``check(cfg)``: as on :class:`core.data.DatasetFormat`, for ``core export``.
    """

    name: str
    export: Callable[[Any, Any], list[Path]]
    suffixes: tuple[str, ...]
    open_runner: Callable[[Path], Runner] | None = None
    precisions: tuple[str, ...] = ("fp32",)
    description: str = ""
    config_sections: tuple[Any, ...] = ()
    check: Callable[[Any], None] | None = None


@attrs.frozen(kw_only=True)
class EngineBuilder:
    """What ``register_engine_builders`` registers.

    - ``name``: the builder's name (``mine``); unique across plugins.
    - ``unavailable() -> str | None``: why it cannot run on this machine (library or GPU
      missing), or ``None``.
    - ``build(cfg) -> list[Path]``: builds engines as ``cfg.gen_trt_engine`` asks (both towers
      for a separate export's base path) and copies the sidecars beside them.
    - ``suffixes``: engine file suffixes; ``open_runner(path) -> Runner`` loads one.
    - ``config_sections``, ``check(cfg)``: as on :class:`core.data.DatasetFormat`, for ``core
      gen_trt_engine`` (checked on any machine, before ``unavailable()``).
    """

    name: str
    unavailable: Callable[[], str | None]
    build: Callable[[Any], list[Path]]
    suffixes: tuple[str, ...]
    open_runner: Callable[[Path], Runner] | None = None
    description: str = ""
    config_sections: tuple[Any, ...] = ()
    check: Callable[[Any], None] | None = None
