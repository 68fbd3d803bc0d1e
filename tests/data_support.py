"""Helpers for the data tests: real image bytes, requests with a byte tokenizer, loaders."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from core.backbone import PreprocessSpec
from core.spec.config import DatasetEntry, ExperimentConfig
from core.data import DataRequest
from core.testing.data_checks import ByteTokenizer
from core.runtime.transforms import eval_transform

SPEC = PreprocessSpec(height=16, width=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode="squash",
                      interpolation="bilinear")


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (24, 16), seed: int = 0, mode: str = "RGB",
                **save: Any) -> bytes:
    """A small random image encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def write_folder(root: Path, n: int, *, captions: Path | None = None, suffix: str = ".txt", ext: str = ".png",
                 start: int = 0) -> None:
    """``n`` images ``img-<i><ext>`` under ``root`` with captions ``caption <i>`` beside them (or in ``captions``)."""
    root.mkdir(parents=True, exist_ok=True)
    folder = captions or root
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(start, start + n):
        (root / f"img-{i:03d}{ext}").write_bytes(image_bytes(seed=i))
        (folder / f"img-{i:03d}{suffix}").write_text(f"caption {i}")


def config(*entries: DatasetEntry, on_bad_sample: str = "skip") -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.dataset.on_bad_sample = on_bad_sample
    cfg.dataset.train.datasets = list(entries)
    cfg.dataset.val.datasets = list(entries)
    return cfg


def request(cfg: ExperimentConfig, results: Path | None = None, *, batch_size: int = 2, rank: int = 0,
            world_size: int = 1, seed: int = 0, num_workers: int = 0, transform: Any = None) -> DataRequest:
    return DataRequest(config=cfg, transform=transform or eval_transform(SPEC), tokenizer=ByteTokenizer(),
                       batch_size=batch_size, rank=rank, world_size=world_size, seed=seed, num_workers=num_workers,
                       results_dir=None if results is None else str(results))


def epoch_keys(loader: Any, epoch: int = 0) -> list[str]:
    loader.set_epoch(epoch)
    return [key for batch in loader for key in batch["key"]]


def bad_records(results: Path) -> list[dict[str, Any]]:
    path = results / "bad_samples.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
