"""The ``onnx`` exporter plugin: TAO-compatible ONNX graphs (combined or separate) with sidecars,
opened at deploy time by the torch-free ONNX Runtime runner.

Heavy imports (torch.onnx, onnx, onnxruntime) happen on use, so loading the plugin stays cheap.
"""

from __future__ import annotations

from pathlib import Path

from core import hookimpl
from core.exporter import Exporter

SUFFIXES = (".onnx",)


def export_model(model, cfg) -> list[Path]:
    from exporters.onnx.export import export_onnx

    return export_onnx(model, cfg)


def open_onnx_runner(path, **options):
    from deploy.onnxruntime_runner import open_runner as open_ort

    return open_ort(path, **options)


@hookimpl
def register_exporters(register):
    register(Exporter(name="onnx", suffixes=SUFFIXES, export=export_model, open_runner=open_onnx_runner,
                      description="ONNX (TAO I/O names; combined or separate towers) + ONNX Runtime runner"))
