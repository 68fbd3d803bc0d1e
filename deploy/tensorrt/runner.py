"""TensorRT runner (``trt_engine`` in evaluate / inference): one engine per tower, CUDA buffers
through torch, everything else from :class:`deploy.runner.EmbeddingRunner`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core import ClipcoreError, artifact
from deploy.runner import EmbeddingRunner
from deploy.tensorrt import SUFFIXES, unavailable


def check_batch(name: str, batch: int, batch_range: tuple[int, int], where: str) -> None:
    """A run's batch must lie inside the engine's optimisation profile."""
    low, high = batch_range
    if not low <= batch <= high:
        raise ClipcoreError(f"batch {batch} of input {name} is outside the engine's profile "
                            f"(min {low}, max {high} for batch)", where=where,
                            fix=f"run batches of {low}..{high}, or rebuild the engine with "
                                "gen_trt_engine.tensorrt.min/max_batch_size covering this batch")


class TrtGraph:
    """One deserialised engine (see :class:`deploy.runner.Graph`)."""

    def __init__(self, path: Path, device: int = 0):
        import tensorrt as trt
        import torch

        self._trt, self._torch = trt, torch
        self.path, self.device = Path(path), torch.device("cuda", device)
        self.logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(self.device):
            self.engine = trt.Runtime(self.logger).deserialize_cuda_engine(self.path.read_bytes())
            if self.engine is None:
                raise ClipcoreError(f"TensorRT cannot load {self.path.name} (built by another TensorRT version or GPU?)",
                                    where=str(self.path), fix="rebuild it with `core gen_trt_engine` on this machine")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.input_shapes = {n: tuple(self.engine.get_tensor_shape(n)) for n in self.inputs}
        self.batch_range = (max(self._batch_limits(n)[0] for n in self.inputs),
                            min(self._batch_limits(n)[1] for n in self.inputs))

    def _batch_limits(self, name: str) -> tuple[int, int]:
        """(min, max) batch of one input: its profile, or its static size."""
        if self.input_shapes[name][0] != -1:
            return self.input_shapes[name][0], self.input_shapes[name][0]
        low, _, high = self.engine.get_tensor_profile_shape(name, 0)
        return low[0], high[0]

    def run(self, feeds: dict[str, np.ndarray], outputs: list[str]) -> list[np.ndarray]:
        trt, torch = self._trt, self._torch
        buffers = {}
        with torch.cuda.device(self.device):
            stream = torch.cuda.current_stream()
            for name in self.inputs:
                check_batch(name, len(feeds[name]), self.batch_range, str(self.path))
                dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
                buffers[name] = torch.from_numpy(np.ascontiguousarray(feeds[name], dtype=dtype)).to(self.device)
                self.context.set_input_shape(name, tuple(buffers[name].shape))
                self.context.set_tensor_address(name, buffers[name].data_ptr())
            for i in range(self.engine.num_io_tensors):
                name = self.engine.get_tensor_name(i)
                if name in buffers:
                    continue
                dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
                shape = tuple(self.context.get_tensor_shape(name))
                buffers[name] = torch.empty(shape, dtype=getattr(torch, dtype.name), device=self.device)
                self.context.set_tensor_address(name, buffers[name].data_ptr())
            if not self.context.execute_async_v3(stream.cuda_stream):
                raise ClipcoreError(f"TensorRT failed to run {self.path.name}", where=str(self.path),
                                    fix="check the TensorRT log above")
            stream.synchronize()
        return [buffers[name].float().cpu().numpy() for name in outputs]


def open_runner(path: str | Path, *, device: int = 0, batch_size: int | None = None,
                key: str = "trt_engine") -> EmbeddingRunner:
    """A runner over TensorRT engine(s): a combined engine, one tower's, or a separate base path."""
    artifacts = artifact.locate(path, SUFFIXES, key=key)
    reason = unavailable()
    if reason:
        raise ClipcoreError(reason, where=key, fix="use onnx_file (ONNX Runtime) on machines without TensorRT")
    return EmbeddingRunner(artifacts, lambda file: TrtGraph(file, device), batch_size=batch_size)
