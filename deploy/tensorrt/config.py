"""The ``[gen_trt_engine.tensorrt]`` config section, owned by the ``tensorrt`` builder, and its rules."""

from __future__ import annotations

from typing import Any, Literal

import attrs

from core import ConfigError, ConfigSection, Rule, at_least, opt

LAYER_PRECISION = Rule(
    lambda v: all(isinstance(x, str) and x.rpartition(":")[0] and x.rpartition(":")[2] in ("fp32", "fp16")
                  for x in v),
    'items "layer_name:fp32" or "layer_name:fp16"')


@attrs.define(kw_only=True)
class TensorRTConfig:
    """TensorRT builder settings."""

    workspace_size: int = opt(1024, "Builder workspace in MB.", validator=at_least(1))
    data_type: Literal["fp32", "fp16"] = opt("fp32", "Engine precision: fp32 | fp16 (LayerNorm/Softmax kept fp32).")
    min_batch_size: int = opt(1, "Profile minimum batch.", validator=at_least(1))
    opt_batch_size: int = opt(1, "Profile optimal batch.", validator=at_least(1))
    max_batch_size: int = opt(16, "Profile maximum batch.", validator=at_least(1))
    layers_precision: list[str] = opt([], "Per-layer precision overrides, `name:fp32`.",
                                      validator=LAYER_PRECISION)


SECTION = ConfigSection("gen_trt_engine.tensorrt", TensorRTConfig)


def check(cfg: Any) -> None:
    """:attr:`core.EngineBuilder.check`: the batch profile must be ordered."""
    trt = SECTION.of(cfg)
    if not trt.min_batch_size <= trt.opt_batch_size <= trt.max_batch_size:
        raise ConfigError(f"batch profile must satisfy min <= opt <= max, got min_batch_size "
                          f"{trt.min_batch_size}, opt_batch_size {trt.opt_batch_size}, "
                          f"max_batch_size {trt.max_batch_size}", where=SECTION.path,
                          fix="reorder the three batch sizes")
