"""Build inference engines from an ONNX export: ``core gen_trt_engine -c clip.toml``.

``gen_trt_engine.onnx_file`` is an export (combined file, one tower, or the base path of a
separate export: both towers are built in one call). ``gen_trt_engine.trt_engine`` defaults to
``<results_dir>/gen_trt_engine/<export stem>.engine``. The builder is the plugin whose suffix
matches the engine file; it copies the sidecars beside the engines.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import attrs

from core.artifact import ENGINE_SUFFIX, tower_of
from core.errors import ConfigError
from core.registry import get_registry

def engine_path(cfg, action_dir: Path) -> Path:
    """``gen_trt_engine.trt_engine``, else ``<action_dir>/<export base stem>.engine``."""
    g = cfg.gen_trt_engine
    if g.trt_engine:
        return Path(g.trt_engine)
    if not g.onnx_file:
        raise ConfigError("no ONNX export given", where="gen_trt_engine.onnx_file",
                          fix="set gen_trt_engine.onnx_file to the file (or separate-export base path) `core export` wrote")
    return action_dir / (tower_of(Path(g.onnx_file))[1] + ENGINE_SUFFIX)


def run(cfg, args: argparse.Namespace) -> None:
    from core.spec.load import action_dir

    path = engine_path(cfg, action_dir(cfg, "gen_trt_engine"))
    cfg = attrs.evolve(cfg, gen_trt_engine=attrs.evolve(cfg.gen_trt_engine, trt_engine=str(path)))
    builder = get_registry().for_suffix("engine_builders", path, key="gen_trt_engine.trt_engine")
    for engine in builder.build(cfg):
        print(f"wrote {engine}")
