"""int8 calibration of an fp32 export for TensorRT: activation ranges, and their cache.

The ranges are measured on the CPU by ONNX Runtime's MinMax calibrator over
:func:`core.calibration_data` (``export.calibration_images`` training images and their captions),
preprocessed and tokenised as the export's sidecar says. They are kept in
``tensorrt.calibration_cache`` (default ``<engine stem>_<tower>.calib.json`` beside the engine):
JSON with the ONNX file's sha256, the image count, a digest of ``dataset.train`` and the data
seed, and ``{tensor name: max |activation|}``. A cache whose ONNX file, image count and training
data match is reused; any other is measured again and replaced (atomically). The builder hands each range to its network tensor.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch

from core import ConfigError, PreprocessSpec, SidecarTokenizer, artifact, calibration_data

log = logging.getLogger("clipcore.gen_trt_engine")
CACHE_SUFFIX = ".calib.json"


def cache_file(cfg, engine: Path) -> Path:
    """Where one engine's ranges are cached: ``tensorrt.calibration_cache`` (a tower's file gets
    the tower name before the suffix when the export is separate), else beside the engine."""
    from deploy.tensorrt.config import SECTION

    chosen = SECTION.of(cfg).calibration_cache
    if not chosen:
        return engine.with_name(engine.stem + CACHE_SUFFIX)
    tower, _ = artifact.tower_of(engine)
    path = Path(chosen)
    suffix = CACHE_SUFFIX if path.name.endswith(CACHE_SUFFIX) else path.suffix
    return artifact.tower_file(path.with_name(path.name[: len(path.name) - len(suffix)]), tower, suffix)


class _SidecarTokens:
    """The export's tokenizer as a data loader takes it (int64 tensors)."""

    def __init__(self, artifacts: artifact.Artifacts):
        self._tokenize = SidecarTokenizer(artifacts.tokenizer_dir, artifacts.deploy["text"])

    def __call__(self, texts) -> torch.Tensor:
        return torch.from_numpy(self._tokenize(list(texts)).astype(np.int64))


def _preprocess(artifacts: artifact.Artifacts) -> PreprocessSpec:
    spec = artifacts.deploy["preprocess"]
    return PreprocessSpec(height=spec["height"], width=spec["width"], mean=tuple(spec["mean"]), std=tuple(spec["std"]),
                          resize_mode=spec["resize_mode"], interpolation=spec["interpolation"])


def _data_digest(cfg) -> str:
    """What decides which training images calibrate: the training data section and the data seed."""
    import attrs

    section = json.dumps([attrs.asdict(cfg.dataset.train), cfg.dataset.seed], sort_keys=True, default=str)
    return hashlib.sha256(section.encode()).hexdigest()[:16]


def _fingerprint(onnx_path: Path, artifacts: artifact.Artifacts) -> str:
    digest = hashlib.sha256()
    external = artifacts.deploy.get("external_data", {}).get(onnx_path.name)
    for path in [onnx_path] + ([onnx_path.with_name(external)] if external else []):
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def activation_ranges(cfg, onnx_path: Path, artifacts: artifact.Artifacts, cache: Path) -> dict[str, float]:
    """``{tensor: max |activation|}`` of the fp32 graph at ``onnx_path``, from ``cache`` when it
    was made for this file and image count, else measured and written to ``cache``."""
    count, fingerprint = cfg.export.calibration_images, _fingerprint(onnx_path, artifacts)
    if cache.is_file():
        try:
            found = json.loads(cache.read_text(encoding="utf-8"))
            if (found.get("onnx_sha256"), found.get("calibration_images"), found.get("data")) == (
                    fingerprint, count, _data_digest(cfg)):
                log.info("int8 ranges of %s: reusing %s", onnx_path.name, cache)
                return {k: float(v) for k, v in found["ranges"].items()}
        except (ValueError, KeyError, AttributeError):
            pass
        log.warning("%s was made for another ONNX file, training data or image count: calibrating again", cache)
    ranges = _measure(cfg, onnx_path, artifacts, cache.parent)
    doc = {"onnx": onnx_path.name, "onnx_sha256": fingerprint, "calibration_images": count, "data": _data_digest(cfg),
           "method": "minmax", "ranges": ranges}
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(cache)
    return ranges


def _measure(cfg, onnx_path: Path, artifacts: artifact.Artifacts, out_dir: Path) -> dict[str, float]:
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

    calibration = calibration_data(cfg, _preprocess(artifacts), _SidecarTokens(artifacts), out_dir)
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inputs = [i.name for i in graph.input]
    static = [d.dim_value for i in graph.input for d in i.type.tensor_type.shape.dim[:1] if d.HasField("dim_value")]

    batches = list(calibration.feeds(inputs, static[0] if static else -1))
    if not batches:
        raise ConfigError(f"{len(calibration.images)} calibration images are fewer than the export's static batch "
                          f"of {static[0]}", where="export.calibration_images",
                          fix=f"raise export.calibration_images to at least {static[0]} (readable training images)")

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(batches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with tempfile.TemporaryDirectory(prefix=".calibrate-", dir=out_dir) as work:
        calibrator = create_calibrator(onnx_path, augmented_model_path=str(Path(work) / "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax, use_external_data_format=True,
                                       providers=["CPUExecutionProvider"])
        calibrator.collect_data(Reader())
        measured = calibrator.compute_data()
        del calibrator
    return {name: float(np.max(np.abs(data.range_value))) for name, data in measured.items()}
