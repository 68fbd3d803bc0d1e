"""The ``onnx`` exporter plugin: TAO-compatible ONNX graphs (combined or separate) with sidecars,
opened at deploy time by the torch-free ONNX Runtime runner.

Heavy imports (torch.onnx, onnx, onnxruntime) happen on use, so loading the plugin stays cheap.
"""

from __future__ import annotations

from core import Exporter, hookimpl, lazy

SUFFIXES = (".onnx",)


@hookimpl
def register_exporters(register):
    register(Exporter(name="onnx", suffixes=SUFFIXES, export=lazy("exporters.onnx.export:export_onnx"),
                      open_runner=lazy("deploy.onnxruntime_runner:open_runner"), precisions=("fp32", "fp16", "int8"),
                      description="ONNX (TAO I/O names; combined or separate towers) + ONNX Runtime runner"))
