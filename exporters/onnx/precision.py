"""Reduced-precision ONNX graphs, made with ONNX Runtime's own tools (no graph rewriting of ours).

- ``fp16``: ``onnxruntime.transformers.float16``, inputs and outputs kept fp32; LayerNorm, Softmax
  and the normalisation ops (``ReduceL2``, ``Div``, ``Sqrt``, ``Pow``, ``ReduceMean``) stay fp32.
- ``int8``: ``onnxruntime.quantization``: shape pre-processing, then static QDQ quantization of
  ``MatMul`` / ``Gemm`` / ``Conv`` with per-channel int8 weights and uint8 activations (U8S8, ONNX
  Runtime's default on x86), activation ranges calibrated (MinMax) on the calibration data.
  Static quantization applies to every graph here, text towers included (calibrated on captions).

The fp32 export is always made first and passes its own parity check; the reduced graph replaces it
in the staging folder and is then scored by :func:`core.accuracy_gate`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
import numpy as np
import onnx

from core import CalibrationData

FP32_OPS = ("LayerNormalization", "Softmax", "ReduceL2", "Div", "Sqrt", "Pow", "ReduceMean")
QUANTIZED_OPS = ("MatMul", "Gemm", "Conv")


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    from onnxruntime.transformers import float16

    return float16.convert_float_to_float16(proto, keep_io_types=True, op_block_list=list(FP32_OPS))


def to_int8(path: Path, out: Path, calibration: CalibrationData, static_batch: int) -> onnx.ModelProto:
    """The int8 version of the fp32 graph at ``path`` (written through ``out``'s folder)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    inputs = [i.name for i in onnx.load(str(path), load_external_data=False).graph.input]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = calibration.feeds(inputs, static_batch)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    with tempfile.TemporaryDirectory(dir=out.parent) as work:
        prepared, quantized = Path(work) / "prepared.onnx", Path(work) / "quantized.onnx"
        quant_pre_process(str(path), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=list(QUANTIZED_OPS))
        return onnx.load(str(quantized))

