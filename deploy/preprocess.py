"""Image preprocessing from the sidecar's ``deploy.preprocess`` alone (numpy + Pillow, no torch).

Reproduces :class:`core.backbone.PreprocessSpec`: RGB, resize (``squash`` to height x width, or
``shortest``: scale so the image covers height x width, the short side landing exactly on the
target, then centre-crop), ``[0, 1]`` scaling, ``(x - mean) / std``, CHW float32. Resizing uses
Pillow's filters (what torchvision uses on PIL images).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from core.errors import DataError

FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def load_rgb(image: str | Path | Image.Image) -> Image.Image:
    """An RGB PIL image from a path or an image (any mode)."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    try:
        with Image.open(image) as img:
            return img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image: {exc}", where=str(image),
                        fix="remove or replace the unreadable file") from None


def cover_size(width: int, height: int, target_w: int, target_h: int) -> tuple[int, int]:
    """The (w, h) a ``shortest`` resize gives: aspect kept, covering the target, the matching
    side exact and the other truncated (torchvision's rule for square targets)."""
    if width * target_h >= height * target_w:
        return max(target_w, int(target_h * width / height)), target_h
    return target_w, max(target_h, int(target_w * height / width))


def resize(img: Image.Image, spec: dict[str, Any]) -> Image.Image:
    """Resize (and crop) to ``spec`` height x width."""
    h, w, resample = spec["height"], spec["width"], FILTERS[spec["interpolation"]]
    if spec["resize_mode"] == "squash":
        return img.resize((w, h), resample=resample)
    new_w, new_h = cover_size(img.width, img.height, w, h)
    if (new_w, new_h) != img.size:
        img = img.resize((new_w, new_h), resample=resample)
    top, left = int(round((new_h - h) / 2.0)), int(round((new_w - w) / 2.0))
    return img.crop((left, top, left + w, top + h))


def to_array(img: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    """Normalised CHW float32 array of an already resized image."""
    x = np.asarray(img, dtype=np.float32) * np.float32(spec.get("scale", 1 / 255))
    x = (x - np.asarray(spec["mean"], np.float32)) / np.asarray(spec["std"], np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess(images: Sequence[str | Path | Image.Image], spec: dict[str, Any]) -> np.ndarray:
    """``[N, 3, H, W]`` float32 model input for image paths or PIL images."""
    out = np.empty((len(images), 3, spec["height"], spec["width"]), dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = to_array(resize(load_rgb(image), spec), spec)
    return out
