"""ONNX Runtime runner for exported models (``onnx_file`` in evaluate / inference). Torch-free.

``open_runner(path)`` takes a combined ``.onnx`` file, one tower's file, or the base path of a
separate export, finds the sidecars, and returns an :class:`deploy.runner.EmbeddingRunner` that
opens an ``InferenceSession`` only for the tower a call needs. Providers: CUDA when onnxruntime
has it (``onnxruntime-gpu``), else CPU; ``providers=`` overrides.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import onnxruntime as ort

from core import ClipcoreError, artifact
from deploy.runner import EmbeddingRunner

SUFFIXES = (".onnx",)


def default_providers() -> list[str]:
    available = ort.get_available_providers()
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


class OrtGraph:
    """One ONNX file in an ``InferenceSession`` (see :class:`deploy.runner.Graph`)."""

    def __init__(self, path: Path, providers: Sequence[str], threads: int | None = None, fp16: bool = False):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        if fp16 and providers[0] == "CPUExecutionProvider":  # the CPU layout optimizations crash on fp16 graphs
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED  # (seen: ORT 1.32)
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=list(providers))
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
            raise ClipcoreError(f"ONNX Runtime cannot load {path.name}: {str(exc).splitlines()[0]}",
                                where=str(path), fix="re-export the model with `core export`") from None
        self.input_shapes = {i.name: tuple(d if isinstance(d, int) else -1 for d in i.shape)
                             for i in self.session.get_inputs()}
        batch = {shape[0] for shape in self.input_shapes.values()}
        static = batch.pop() if len(batch) == 1 else -1
        self.batch_range = (static, static) if static > 0 else (1, None)

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        return self.session.run(outputs, feeds)


def open_runner(path: str | Path, *, providers: Sequence[str] | None = None, batch_size: int | None = None,
                threads: int | None = None, key: str = "onnx_file") -> EmbeddingRunner:
    """A runner over an exported ONNX model (file or separate-export base path)."""
    artifacts = artifact.locate(path, SUFFIXES, key=key)
    for file in artifacts.files.values():
        artifact.check_external_data(file, artifacts.deploy)
    providers = list(providers) if providers else default_providers()
    fp16 = artifacts.deploy.get("precision") == "fp16"
    return EmbeddingRunner(artifacts, lambda file: OrtGraph(file, providers, threads, fp16), batch_size=batch_size)
