"""Image preprocessing from the sidecar's ``deploy.preprocess`` alone (numpy + Pillow, no torch).

Reproduces :class:`core.transforms.EvalTransform` (the PyTorch path's eval transform), which
``tests/test_deploy_runner.py`` checks pixel for pixel: 8-bit RGB (:func:`core.images.to_rgb`,
transparency over white), the source box that the spec's resize maps onto the output (``squash``:
the whole image; ``shortest``: torchvision's shortest-side resize then centre crop) resized to
height x width in one Pillow call, ``x / 255``, ``(x - mean) / std``, CHW float32. The box rule is
restated here because :mod:`core.transforms` imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from core.errors import DataError
from core.images import to_rgb

FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
Box = tuple[float, float, float, float]


def load_rgb(image: str | Path | Image.Image) -> Image.Image:
    """An 8-bit RGB PIL image from a path or an image of any mode."""
    if isinstance(image, Image.Image):
        return to_rgb(image)
    try:
        with Image.open(image) as img:
            img.load()
            return to_rgb(img)
    except (OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"cannot read image: {exc}", where=str(image),
                        fix="remove or replace the unreadable file") from None


def source_box(width: int, height: int, spec: dict[str, Any]) -> Box:
    """The part of a ``width`` x ``height`` image that ends up in the model input."""
    out_w, out_h = spec["width"], spec["height"]
    if spec["resize_mode"] == "squash":
        return 0.0, 0.0, float(width), float(height)
    if out_w / width >= out_h / height:
        resized_w, resized_h = out_w, max(out_h, int(out_w * height / width))
    else:
        resized_w, resized_h = max(out_w, int(out_h * width / height)), out_h
    top, left = int(round((resized_h - out_h) / 2.0)), int(round((resized_w - out_w) / 2.0))
    sx, sy = width / resized_w, height / resized_h
    return (max(0.0, left * sx), max(0.0, top * sy), min(float(width), (left + out_w) * sx),
            min(float(height), (top + out_h) * sy))


def to_array(img: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    """Normalised CHW float32 array of a resized 8-bit RGB image."""
    std = np.asarray(spec["std"], np.float32)
    scale = np.float32(1.0) / (np.float32(255.0) * std)
    shift = np.asarray(spec["mean"], np.float32) / std
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) * scale - shift
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def preprocess_one(image: str | Path | Image.Image, spec: dict[str, Any]) -> np.ndarray:
    img = load_rgb(image)
    size = (spec["width"], spec["height"])
    img = img.resize(size, FILTERS[spec["interpolation"]], box=source_box(img.width, img.height, spec))
    return to_array(img, spec)


def preprocess(images: Sequence[str | Path | Image.Image], spec: dict[str, Any]) -> np.ndarray:
    """``[N, 3, H, W]`` float32 model input for image paths or PIL images."""
    out = np.empty((len(images), 3, spec["height"], spec["width"]), dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = preprocess_one(image, spec)
    return out
