"""Shared helpers for the export / deploy tests: configs, sample images and texts, comparisons."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from core.spec.config import ExperimentConfig

TEXTS = ["", "a photo of a cat", "Two_dogs, running on the BEACH!!", "naïve café 東京 🚀", "word " * 200]


def export_config(onnx_file: Path, encoder: str = "combined", **export) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.export.onnx_file = str(onnx_file)
    cfg.export.encoder_type = encoder
    for key, value in export.items():
        setattr(cfg.export, key, value)
    return cfg


def write_images(folder: Path, sizes=((40, 30), (17, 50), (64, 64))) -> list[Path]:
    """Deterministic RGB, RGBA and palette images of varied sizes and aspect ratios."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (w, h) in enumerate(sizes):
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img = [img, img.convert("RGBA"), img.convert("P")][i % 3]
        paths.append(folder / f"img{i}.png")
        img.save(paths[-1])
    return paths


def assert_close(have: np.ndarray, want: np.ndarray, *, atol: float = 1e-4, min_cosine: float = 0.99999) -> None:
    """Max abs diff <= atol and row-wise cosine >= min_cosine."""
    assert have.shape == want.shape, (have.shape, want.shape)
    diff = float(np.abs(have - want).max())
    cosine = np.sum(have * want, -1) / (np.linalg.norm(have, axis=-1) * np.linalg.norm(want, axis=-1))
    assert diff <= atol, f"max abs diff {diff:.2e} > {atol}"
    assert float(cosine.min()) >= min_cosine, f"cosine {float(cosine.min()):.7f} < {min_cosine}"
