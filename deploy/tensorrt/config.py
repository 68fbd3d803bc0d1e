"""The ``[gen_trt_engine.tensorrt]`` config section, owned by the ``tensorrt`` builder, and its rules."""

from __future__ import annotations

from typing import Any, Literal

import attrs

from core import ConfigError, ConfigSection, Rule, at_least, opt

LAYER_PRECISION = Rule(
    lambda v: all(isinstance(x, str) and x.rpartition(":")[0] and x.rpartition(":")[2] in ("fp32", "fp16")
                  for x in v),
    'items "layer_name:fp32" or "layer_name:fp16"', {"items": {"type": "string", "pattern": ".:(fp32|fp16)$"}})


@attrs.define(kw_only=True)
class TensorRTConfig:
    """TensorRT builder settings."""

    workspace_size: int = opt(1024, "Builder workspace in MB.", validator=at_least(1))
    data_type: Literal["fp32", "fp16", "int8"] = opt(
        "fp32", "Engine precision: fp32 | fp16 | int8 (LayerNorm/Softmax kept fp32). int8 engines are built from an "
                "int8 export's scales, or from an fp32 export calibrated on export.calibration_images training images, "
                "and are scored on dataset.val against the export (gate: export.max_recall_drop, export.min_cosine).")
    calibration_cache: str | None = opt(None, "int8 from an fp32 export: the activation-range cache, reused while the "
                                              "ONNX file is unchanged (default: <engine>.calib.json beside the engine).")
    min_batch_size: int = opt(1, "Profile minimum batch.", validator=at_least(1))
    opt_batch_size: int = opt(1, "Profile optimal batch.", validator=at_least(1))
    max_batch_size: int = opt(16, "Profile maximum batch.", validator=at_least(1))
    layers_precision: list[str] = opt([], "Per-layer precision overrides, `name:fp32`.",
                                      validator=LAYER_PRECISION)


SECTION = ConfigSection("gen_trt_engine.tensorrt", TensorRTConfig)


def check(cfg: Any) -> None:
    """:attr:`core.EngineBuilder.check`: a dynamic batch profile must be ordered; int8 is scored on dataset.val."""
    trt = SECTION.of(cfg)
    if trt.data_type == "int8" and not cfg.dataset.val.datasets:
        raise ConfigError("tensorrt.data_type = int8 is scored on dataset.val before the engine is kept, and "
                          "dataset.val has no data", where="dataset.val.datasets",
                          fix="add [[dataset.val.datasets]] (held-out image-caption pairs), or build fp16 / fp32")
    if cfg.gen_trt_engine.batch_size <= 0 and not trt.min_batch_size <= trt.opt_batch_size <= trt.max_batch_size:
        raise ConfigError(f"batch profile must satisfy min <= opt <= max, got min_batch_size "
                          f"{trt.min_batch_size}, opt_batch_size {trt.opt_batch_size}, "
                          f"max_batch_size {trt.max_batch_size}", where=SECTION.path,
                          fix="reorder the three batch sizes")
