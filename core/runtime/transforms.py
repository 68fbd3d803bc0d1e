"""Image transforms built from a backbone's :class:`core.backbone.PreprocessSpec`.

:func:`eval_transform` follows the spec exactly (``squash``: resize to height × width;
``shortest``: resize the shortest side, then centre-crop, as torchvision's ``Resize`` +
``CenterCrop``), then scales to [0, 1] and normalises; it depends on the spec only, so export
uses it to describe preprocessing. :func:`train_transform` adds ``dataset.augmentation`` for
every family: RandomResizedCrop (torchvision's sampling of the crop box), colour jitter applied
with a probability, random grayscale.

Speed: transforms take an image opened lazily (:func:`core.images.open_image`). Crop and resize
are one ``Image.resize(box=...)`` call (no intermediate crop copy), and for training a JPEG whose
crop is at least 2×, 4× or 8× the output size is decoded at that reduced scale by the JPEG
decoder's DCT scaling (``Image.draft``), which is what makes decoding about twice as fast
(``bench/bench_decode.py``).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import ColorJitter, RandomResizedCrop
from torchvision.transforms import functional as TF

from core.backbone import PreprocessSpec
from core.images import decoded, to_rgb
from core.preprocess import RESAMPLE, Box, eval_box

RATIO = (3 / 4, 4 / 3)
LEGACY_JITTER_PROB = 0.8
DRAFT_SCALES = (8, 4, 2)


class ToTensor:
    """8-bit RGB PIL image → float tensor ``[3, H, W]``, ``(x / 255 - mean) / std`` in one pass."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        std_t = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1) / std_t

    def __call__(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()
        return pixels.float().mul_(self.scale).sub_(self.shift)


def resized_crop(image: Image.Image, box: Box, size: tuple[int, int], resample: int,
                 reduce: bool = False) -> Image.Image:
    """The ``box`` of ``image`` resized to ``size`` = (width, height), as 8-bit RGB.

    With ``reduce``, a not-yet-decoded JPEG is decoded at 1/2, 1/4 or 1/8 scale when the box
    stays at least ``size`` at that scale (never upsampling what a full decode would
    downsample).
    """
    left, top, right, bottom = box
    if reduce and getattr(image, "tile", None):
        factor = _draft_factor(right - left, bottom - top, size)
        if factor > 1:
            width = image.size[0]
            result = image.draft("RGB", (width // factor, image.size[1] // factor))
            if result is not None:
                scale = width / result[1][2]
                left, top, right, bottom = left / scale, top / scale, right / scale, bottom / scale
    rgb = decoded(lambda: _load_rgb(image))
    width, height = rgb.size
    box = (max(0.0, left), max(0.0, top), min(float(width), right), min(float(height), bottom))
    return decoded(lambda: rgb.resize(size, resample, box=box))


def _load_rgb(image: Image.Image) -> Image.Image:
    image.load()
    return to_rgb(image)


def _draft_factor(box_width: float, box_height: float, size: tuple[int, int]) -> int:
    for factor in DRAFT_SCALES:
        if box_width / factor >= size[0] and box_height / factor >= size[1]:
            return factor
    return 1


def spec_box(image: Image.Image, spec: PreprocessSpec) -> Box:
    """The source box that ``spec``'s eval resize (and centre crop) maps onto the output."""
    return eval_box(*image.size, out_width=spec.width, out_height=spec.height, resize_mode=spec.resize_mode)


class EvalTransform:
    """The backbone's preprocessing, exactly: resize/crop per ``spec``, RGB, normalise."""

    def __init__(self, spec: PreprocessSpec):
        self.spec = spec
        self.size = (spec.width, spec.height)
        self.resample = RESAMPLE[spec.interpolation]
        self.to_tensor = ToTensor(spec.mean, spec.std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        box = spec_box(image, self.spec)
        return self.to_tensor(resized_crop(image, box, self.size, self.resample))

    def describe(self) -> dict[str, Any]:
        """What a runtime must do to reproduce this transform (for export sidecars)."""
        steps = ["convert to 8-bit RGB; alpha composited over white"]
        if self.spec.resize_mode == "squash":
            steps.append(f"resize to {self.spec.height}x{self.spec.width} (height x width), {self.spec.interpolation}")
        else:
            steps.append(f"resize the shortest side to cover {self.spec.height}x{self.spec.width}, "
                         f"{self.spec.interpolation}; centre-crop {self.spec.height}x{self.spec.width}")
        steps.append("scale to [0, 1]; subtract mean, divide by std per channel; CHW")
        return {**self.spec.to_dict(), "steps": steps}


class TrainTransform:
    """Training augmentation on the backbone's geometry and normalisation.

    ``scale = [1, 1]`` turns the random crop off (the eval geometry is used); colour jitter is
    ``[prob, brightness, contrast, saturation, hue]`` or the legacy ``[brightness, contrast,
    saturation, hue]`` (prob 0.8), ``[]`` off; ``grayscale`` is a probability. Randomness comes
    from torch's global generator (seeded per data-loader worker).
    """

    def __init__(self, spec: PreprocessSpec, scale: Sequence[float] = (1.0, 1.0),
                 color_jitter: Sequence[float] = (), grayscale: float = 0.0):
        self.spec = spec
        self.size = (spec.width, spec.height)
        self.resample = RESAMPLE[spec.interpolation]
        self.to_tensor = ToTensor(spec.mean, spec.std)
        self.scale = (float(scale[0]), float(scale[1]))
        self.random_crop = self.scale != (1.0, 1.0)
        jitter = list(color_jitter)
        if len(jitter) == 4:
            jitter = [LEGACY_JITTER_PROB, *jitter]
        if jitter and len(jitter) != 5:
            raise ValueError(f"color_jitter must have 0, 4 or 5 values, got {list(color_jitter)}")
        self.jitter_prob = jitter[0] if jitter and any(jitter[1:]) else 0.0
        self.jitter = ColorJitter(*jitter[1:]) if self.jitter_prob > 0 else None
        self.grayscale = float(grayscale)

    def crop_box(self, image: Image.Image) -> Box:
        """This sample's source box: torchvision's RandomResizedCrop sampling, or the eval box."""
        if not self.random_crop:
            return spec_box(image, self.spec)
        top, left, height, width = RandomResizedCrop.get_params(image, list(self.scale), list(RATIO))
        return (float(left), float(top), float(left + width), float(top + height))

    def __call__(self, image: Image.Image) -> torch.Tensor:
        out = resized_crop(image, self.crop_box(image), self.size, self.resample, reduce=True)
        if self.jitter is not None and torch.rand(()) < self.jitter_prob:
            out = self.jitter(out)
        if self.grayscale > 0 and torch.rand(()) < self.grayscale:
            out = TF.rgb_to_grayscale(out, num_output_channels=3)
        return self.to_tensor(out)


def eval_transform(spec: PreprocessSpec) -> EvalTransform:
    """The eval/inference/export transform: a function of ``spec`` only."""
    return EvalTransform(spec)


def train_transform(spec: PreprocessSpec, augmentation: Any = None) -> TrainTransform:
    """The training transform: ``spec``'s geometry and normalisation plus ``augmentation``
    (a :class:`core.spec.config.AugmentationConfig`; ``None`` means no augmentation)."""
    if augmentation is None:
        return TrainTransform(spec)
    return TrainTransform(spec, scale=augmentation.scale, color_jitter=augmentation.color_jitter,
                          grayscale=augmentation.grayscale)

