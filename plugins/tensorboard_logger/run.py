"""One training run as TensorBoard events (torch's ``SummaryWriter``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from core import Run

FOLDER = "tensorboard"


class TensorBoardRun:
    def __init__(self, run: Run):
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(run.out_dir / FOLDER))
        self._step = 0

    def log_metrics(self, metrics: dict[str, float], *, step: int, epoch: int) -> None:
        for key, value in metrics.items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()
        self._step = step

    def log_file(self, path: Path) -> None:
        if path.suffix.lower() == ".png":
            pixels = np.asarray(Image.open(path).convert("RGB"))
            self._writer.add_image(path.stem, pixels, self._step, dataformats="HWC")
        else:
            self._writer.add_text("files", str(path), self._step)
        self._writer.flush()

    def log_checkpoint(self, path: Path, metrics: dict[str, float]) -> None:
        self._writer.add_text("best_checkpoint", f"{path}: {json.dumps(metrics)}", self._step)
        self._writer.flush()

    def close(self, *, failed: bool) -> None:
        self._writer.close()
