"""Opening and colour-converting images robustly; every failure becomes a :class:`BadSample`.

:func:`open_image` only reads the header (PIL decodes lazily), so a transform can still ask the
JPEG decoder for a reduced size (``Image.draft``) before pixels are decoded; :func:`decoded`
runs the transform and turns decode errors into bad samples. :func:`to_rgb` converts every mode
PIL reads (CMYK, palette, RGBA/LA with transparency, 16-bit and 32-bit grayscale, 1-bit) to
8-bit RGB.
"""

from __future__ import annotations

import io
import os
import re
import warnings
from typing import IO, Callable, TypeVar

import numpy as np
from PIL import Image

from core.bad_samples import BadSample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")  # the one list: datasets and inference
T = TypeVar("T")


def open_image(source: str | os.PathLike | bytes | IO[bytes], max_pixels: int) -> Image.Image:
    """Open an image lazily (header only) from a path, bytes or a binary file object.

    Raises :class:`BadSample` for an empty file, an unrecognised or corrupt header, and an image
    with more than ``max_pixels`` pixels (decompression bombs; PIL's own hard limit of twice its
    default also applies).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise BadSample("empty-file", "0 bytes")
        source = io.BytesIO(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            if os.path.getsize(source) == 0:
                raise BadSample("empty-file", "0 bytes")
        except FileNotFoundError:
            raise BadSample("missing-image", "no such file") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(source)
    except Image.DecompressionBombError as exc:
        raise BadSample("pixel-limit", str(exc)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise _decode_failure(exc) from None
    width, height = image.size
    if width * height > max_pixels:
        raise BadSample("pixel-limit", f"{width}x{height} = {width * height} pixels > dataset.max_image_pixels "
                                       f"{max_pixels}")
    if width == 0 or height == 0:
        raise BadSample("corrupt-image", f"size {width}x{height}")
    return image


def decoded(fn: Callable[[], T], seed: int | None = None) -> T:
    """Run ``fn`` (which decodes pixels), turning decoder failures into :class:`BadSample`.

    With ``seed``, the torch RNG that random augmentation draws from is seeded with it for the call
    (and restored after), so a sample's augmentation depends on the sample alone, not on which
    worker process decodes it or what it decoded before: resuming mid-epoch is exact."""
    if seed is not None:
        import torch  # here: the torch-free deploy runner reads images through this module too

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return decoded(fn)
    try:
        return fn()
    except BadSample:
        raise
    except (OSError, SyntaxError, EOFError, ValueError, Image.DecompressionBombError) as exc:
        raise _decode_failure(exc) from None


def decoded_rgb(image: Image.Image) -> Image.Image:
    """An opened image decoded and converted to RGB (:func:`to_rgb`); decode failures become
    :class:`BadSample`."""
    def load() -> Image.Image:
        image.load()
        return to_rgb(image)

    return decoded(load)


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB: transparency is composited over white (as Hugging Face image processors do),
    16/32-bit grayscale is scaled to 8 bits (PIL's own conversion clips it), CMYK, palette, 1-bit
    and YCbCr images are converted."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit PNG/TIFF grayscale: scale 0..65535 to 0..255 instead of clipping at 255.
        values = np.asarray(image, dtype=np.float32) if mode == "I" else np.asarray(image).astype(np.float32)
        gray = np.clip(values / 257.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8), "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _decode_failure(exc: BaseException) -> BadSample:
    """``truncated-image`` when the decoder ran out of data (PIL says "truncated" in several
    spellings), else ``corrupt-image``; the detail never carries a memory address."""
    text = re.sub(r" (object )?at 0x[0-9a-fA-F]+", "", f"{type(exc).__name__}: {exc}")
    return BadSample("truncated-image" if "truncated" in text.lower() else "corrupt-image", text)
