"""The preprocessing rules, torch-free: one home for the PyTorch path (:mod:`core.runtime.transforms`,
the backbones' tokenizers) and the deploy runners (numpy, Pillow and ``tokenizers`` only).

- Captions: :func:`canonicalize_text` (big_vision's rule) and :class:`SidecarTokenizer`, which
  reproduces a model tokenizer from its saved directory (``tokenizer.json``) plus the
  :class:`core.backbone.TextSpec` rules, in order: ``canonicalize``, ``lowercase``, encode with the
  tokenizer's own normaliser and special tokens, truncate to ``context_length`` (special tokens
  kept), ``strip_sep_token`` (``[SEP]`` removed), pad with ``pad_id`` on ``padding_side``.
- Images: :func:`eval_box`, the part of a source image that the eval resize (``squash``: the whole
  image; ``shortest``: torchvision's shortest-side resize then centre crop) maps onto the output,
  and :func:`preprocess_images`, the whole eval pipeline from a :class:`core.backbone.PreprocessSpec`
  dict: 8-bit RGB (transparency over white), that box resized in one Pillow call, ``x / 255``,
  ``(x - mean) / std``, CHW float32.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from core.errors import ClipcoreError, DataError
from core.images import to_rgb

Box = tuple[float, float, float, float]  # left, top, right, bottom in source pixels
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
_PUNCTUATION = str.maketrans("", "", string.punctuation)


# --------------------------------------------------------------------------- captions
def canonicalize_text(text: str) -> str:
    """big_vision's caption canonicalisation: ``_`` becomes a space, ASCII punctuation is
    removed, the text is lower-cased and runs of whitespace collapse to one space."""
    text = text.replace("_", " ").translate(_PUNCTUATION).lower()
    return " ".join(text.split())


def _special_token(tokenizer_dir: Path, name: str) -> str | None:
    """A special token's text from ``tokenizer_config.json`` / ``special_tokens_map.json``."""
    for file in ("special_tokens_map.json", "tokenizer_config.json"):
        path = tokenizer_dir / file
        if path.is_file():
            value = json.loads(path.read_text(encoding="utf-8")).get(name)
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                return value
    return None


class SidecarTokenizer:
    """Callable ``texts -> int64 [N, context_length]`` equal to the model tokenizer's output, from a
    saved tokenizer directory and a ``TextSpec.to_dict()`` (no torch, no transformers)."""

    def __init__(self, tokenizer_dir: str | Path, text_spec: dict[str, Any]):
        from tokenizers import Tokenizer

        tokenizer_dir = Path(tokenizer_dir)
        file = tokenizer_dir / "tokenizer.json"
        if not file.is_file():
            raise ClipcoreError(f"{tokenizer_dir} has no tokenizer.json", where=str(tokenizer_dir),
                                fix="re-export the model: the exporter writes a fast-tokenizer directory")
        self.spec = dict(text_spec)
        self.length = int(self.spec["context_length"])
        self.pad_id = int(self.spec["pad_id"])
        self.tokenizer = Tokenizer.from_file(str(file))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.length)
        self.sep_id = self._sep_id(tokenizer_dir) if self.spec.get("strip_sep_token") else None

    def _sep_id(self, tokenizer_dir: Path) -> int:
        token = _special_token(tokenizer_dir, "sep_token") or "[SEP]"
        sep = self.tokenizer.token_to_id(token)
        if sep is None:
            raise ClipcoreError(f"strip_sep_token is set but the tokenizer has no {token!r} token",
                                where=str(tokenizer_dir), fix="re-export the model with its own tokenizer")
        return sep

    def normalize(self, text: str) -> str:
        if self.spec.get("canonicalize"):
            text = canonicalize_text(text)
        if self.spec.get("lowercase"):
            text = text.lower()
        return text

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        encodings = self.tokenizer.encode_batch([self.normalize(t) for t in texts])
        out = np.full((len(texts), self.length), self.pad_id, dtype=np.int64)
        left = self.spec.get("padding_side", "right") == "left"
        for row, enc in enumerate(encodings):
            ids = np.asarray(enc.ids, dtype=np.int64)
            if self.sep_id is not None:
                ids = ids[ids != self.sep_id]
            if left:
                out[row, self.length - len(ids):] = ids
            else:
                out[row, : len(ids)] = ids
        return out


# --------------------------------------------------------------------------- images
def eval_box(width: int, height: int, *, out_width: int, out_height: int, resize_mode: str) -> Box:
    """The part of a ``width`` x ``height`` image that the eval resize maps onto an ``out_width`` x
    ``out_height`` input, clamped to the image."""
    if resize_mode == "squash":
        return 0.0, 0.0, float(width), float(height)
    if out_width / width >= out_height / height:
        resized_w, resized_h = out_width, max(out_height, int(out_width * height / width))
    else:
        resized_w, resized_h = max(out_width, int(out_height * width / height)), out_height
    top, left = int(round((resized_h - out_height) / 2.0)), int(round((resized_w - out_width) / 2.0))
    sx, sy = width / resized_w, height / resized_h
    return (max(0.0, left * sx), max(0.0, top * sy), min(float(width), (left + out_width) * sx),
            min(float(height), (top + out_height) * sy))


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


def _to_array(img: Image.Image, spec: dict[str, Any]) -> np.ndarray:
    """Normalised CHW float32 array of a resized 8-bit RGB image."""
    std = np.asarray(spec["std"], np.float32)
    scale = np.float32(1.0) / (np.float32(255.0) * std)
    shift = np.asarray(spec["mean"], np.float32) / std
    x = np.asarray(img, dtype=np.uint8).astype(np.float32) * scale - shift
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def _preprocess_one(image: str | Path | Image.Image, spec: dict[str, Any]) -> np.ndarray:
    img = load_rgb(image)
    box = eval_box(img.width, img.height, out_width=spec["width"], out_height=spec["height"],
                   resize_mode=spec["resize_mode"])
    return _to_array(img.resize((spec["width"], spec["height"]), RESAMPLE[spec["interpolation"]], box=box), spec)


def preprocess_images(images: Sequence[str | Path | Image.Image], spec: dict[str, Any]) -> np.ndarray:
    """``[N, 3, H, W]`` float32 model input for image paths or PIL images (``spec``: a
    ``PreprocessSpec.to_dict()``)."""
    out = np.empty((len(images), 3, spec["height"], spec["width"]), dtype=np.float32)
    for i, image in enumerate(images):
        out[i] = _preprocess_one(image, spec)
    return out
