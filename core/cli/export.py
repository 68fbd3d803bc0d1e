"""Export a model for deployment: ``core export -c clip.toml [--encoder combined|separate] [--force]``.

The model comes from ``export.checkpoint`` (a clipcore checkpoint) or, when unset, the
pretrained weights of ``model.type``. The output is ``export.onnx_file`` or, when unset,
``<results_dir>/export/<checkpoint stem | model type>.onnx`` (TAO's rule); ``separate`` writes
``<stem>_vision.onnx`` and ``<stem>_text.onnx``. The exporter is the plugin whose suffix matches
the output file; it writes the sidecars (``<stem>_config.yaml``, ``<stem>_tokenizer/``) too.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import attrs

from core.artifact import EXPORT_SUFFIX
from core.errors import ConfigError
from core.registry import get_registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", choices=("combined", "separate"),
                        help="export.encoder_type: one graph, or one per tower (_vision / _text)")
    parser.add_argument("--force", action="store_true", default=None, help="overwrite existing outputs (export.force)")


def output_path(cfg, action_dir: Path) -> Path:
    """``export.onnx_file``, else ``<action_dir>/<checkpoint stem or model type>.onnx``."""
    if cfg.export.onnx_file:
        return Path(cfg.export.onnx_file)
    stem = Path(cfg.export.checkpoint).stem if cfg.export.checkpoint else re.sub(r"[^\w.-]+", "_", cfg.model.type)
    return action_dir / f"{stem}{EXPORT_SUFFIX}"


def check_input_size(model, cfg) -> None:
    """``export.input_height/width`` must be the backbone's input size."""
    pre, ec = model.preprocess, cfg.export
    if (ec.input_height, ec.input_width) != (pre.height, pre.width):
        raise ConfigError(
            f"input size {ec.input_height}x{ec.input_width} does not match {model.model_type}, which takes "
            f"{pre.height}x{pre.width}", where="export.input_height / export.input_width",
            fix=f"set export.input_height={pre.height} export.input_width={pre.width}")


def run(cfg, args: argparse.Namespace) -> None:
    from core.runtime.build import build_model
    from core.spec.load import action_dir

    overrides = {}
    if getattr(args, "encoder", None):
        overrides["encoder_type"] = args.encoder
    if getattr(args, "force", None):
        overrides["force"] = True
    folder = action_dir(cfg, "export")
    export_cfg = attrs.evolve(cfg.export, **overrides)
    export_cfg = attrs.evolve(export_cfg, onnx_file=str(output_path(attrs.evolve(cfg, export=export_cfg), folder)))
    cfg = attrs.evolve(cfg, export=export_cfg)
    exporter = get_registry().for_suffix("exporters", export_cfg.onnx_file, key="export.onnx_file")
    model = build_model(cfg, cfg.export.checkpoint, key="export.checkpoint")
    check_input_size(model, cfg)
    for path in exporter.export(model, cfg):
        print(f"wrote {path}")
