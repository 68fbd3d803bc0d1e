"""Training-image decode + augment throughput: clipcore's transform vs open_clip's, same files, one run.

    .venv/bin/python bench/bench_decode.py                    # 200 photos, 1024x768 -> 256x256
    .venv/bin/python bench/bench_decode.py --images 60 --force      # a quick look (not a figure)

Generates realistic 1024x768 JPEG photos (smooth gradients, blurred shapes, sensor noise,
quality 90: about 200 KB each, like camera JPEGs scaled down), then turns each file into a
normalised 256x256 training tensor with

- open_clip's train transform (``open_clip.transform.image_transform(is_train=True)``:
  PIL decode, torchvision RandomResizedCrop (bicubic), convert to RGB, ToTensor, Normalize), and
- clipcore's (``core.runtime.transforms.train_transform``: the same crop sampling, the JPEG decoded at
  reduced scale when the crop allows it, one resize over the crop box, one-pass normalisation),

both in this process with one thread, without colour jitter (it is the same code on both sides),
at the crop scale TAO uses by default (0.4-1.0) and open_clip's default (0.9-1.0). Rounds
alternate between the two (``bench/protocol.py``): the figure is the median per-round
clipcore/open_clip ratio with its min–max.

Equivalence checks printed alongside: crop-box statistics of both samplers (area fraction and
log aspect ratio: mean, std, two-sample Kolmogorov-Smirnov distance over 20,000 boxes each), the
mean absolute pixel difference between the two pipelines on the same box of the same image
(target < 1/255), and the per-channel mean/std of both pipelines' outputs.
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
import protocol
import torch
from PIL import Image, ImageDraw, ImageFilter

from core.backbone import PreprocessSpec
from core.spec.config import AugmentationConfig
from core.images import open_image
from core.runtime.transforms import resized_crop, train_transform

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # OpenAI CLIP's


def photo(rng: np.random.Generator, width: int, height: int) -> bytes:
    """A photo-like JPEG: lit gradient background, blurred coloured shapes, sensor noise."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width * rng.uniform(120, 230), y / height * rng.uniform(120, 230),
                     (x + y) / (width + height) * rng.uniform(80, 200)], -1) + rng.uniform(0, 40, 3)
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(15, 40))):
        cx, cy, r = rng.integers(0, width), rng.integers(0, height), int(rng.integers(8, width // 5))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        box = [cx - r, cy - r, cx + r, cy + int(r * rng.uniform(0.5, 1.5))]
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.8, 2.0))))
    noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, 5, (height, width, 3)).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def make_photos(folder: Path, count: int, width: int, height: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = folder / f"photo-{i:04d}.jpg"
        path.write_bytes(photo(rng, width, height))
        paths.append(path)
    return paths


def pipelines(size: int, scale: tuple[float, float]):
    from open_clip.transform import AugmentationCfg, image_transform

    theirs = image_transform(size, is_train=True, mean=MEAN, std=STD, aug_cfg=AugmentationCfg(scale=scale))
    spec = PreprocessSpec(height=size, width=size, mean=MEAN, std=STD, resize_mode="shortest",
                          interpolation="bicubic")
    ours = train_transform(spec, AugmentationConfig(scale=list(scale), color_jitter=[], grayscale=0.0))

    def run_theirs(path: Path) -> torch.Tensor:
        with open(path, "rb") as f:
            return theirs(Image.open(io.BytesIO(f.read())))

    def run_ours(path: Path) -> torch.Tensor:
        with open(path, "rb") as f:
            return ours(open_image(f.read(), 178956970))

    return {"open_clip": run_theirs, "clipcore": run_ours}, ours


def throughput(fn, paths):
    """A round: every path through ``fn``, as ``{"rate": images per second}``."""
    def one_round() -> dict[str, float]:
        start = time.perf_counter()
        for path in paths:
            fn(path)
        return {"rate": len(paths) / (time.perf_counter() - start)}
    return one_round


def ks_distance(a: np.ndarray, b: np.ndarray) -> float:
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda x: np.searchsorted(np.sort(x), grid, side="right") / len(x)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


def crop_statistics(ours, scale, width: int, height: int, n: int = 20000) -> None:
    from torchvision.transforms import RandomResizedCrop

    image = Image.new("RGB", (width, height))
    torch.manual_seed(1)
    mine = np.array([ours.crop_box(image) for _ in range(n)])
    torch.manual_seed(2)
    params = [RandomResizedCrop.get_params(image, list(scale), [3 / 4, 4 / 3]) for _ in range(n)]
    theirs = np.array([(j, i, j + w, i + h) for i, j, h, w in params], dtype=np.float64)
    for label, boxes in (("clipcore", mine), ("open_clip", theirs)):
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        area, aspect = w * h / (width * height), np.log(w / h)
        print(f"  {label:9s} crop area fraction mean {area.mean():.4f} std {area.std():.4f}; "
              f"log aspect mean {aspect.mean():+.4f} std {aspect.std():.4f}")
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])  # noqa: E731
    aspect = lambda b: np.log((b[:, 2] - b[:, 0]) / (b[:, 3] - b[:, 1]))  # noqa: E731
    print(f"  KS distance: area {ks_distance(area(mine), area(theirs)):.4f}, aspect "
          f"{ks_distance(aspect(mine), aspect(theirs)):.4f} (two independent samples of {n}: ~0.01 is noise)")


def same_box_error(paths, scale, size: int) -> None:
    from torchvision.transforms import RandomResizedCrop

    torch.manual_seed(3)
    errors = []
    for path in paths:
        data = path.read_bytes()
        full = Image.open(io.BytesIO(data))
        i, j, h, w = RandomResizedCrop.get_params(full, list(scale), [3 / 4, 4 / 3])
        reference = full.convert("RGB").crop((j, i, j + w, i + h)).resize((size, size), Image.Resampling.BICUBIC)
        fast = resized_crop(open_image(data, 178956970), (j, i, j + w, i + h), (size, size),
                            Image.Resampling.BICUBIC, reduce=True)
        errors.append(np.abs(np.asarray(fast, np.float32) - np.asarray(reference, np.float32)).mean() / 255)
    errors = np.array(errors)
    print(f"  same-box pixel error: mean {errors.mean() * 255:.3f}/255, worst image {errors.max() * 255:.3f}/255 "
          f"(target: mean < 1/255)")


def output_statistics(fns, paths) -> None:
    for name, fn in fns.items():
        torch.manual_seed(4)
        out = torch.stack([fn(p) for p in paths])
        print(f"  {name:9s} output per-channel mean {[round(float(v), 3) for v in out.mean((0, 2, 3))]}, "
              f"std {[round(float(v), 3) for v in out.std((0, 2, 3))]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--size", type=int, default=256)
    protocol.add_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-decode-") as tmp:
        paths = make_photos(Path(tmp), args.images, args.width, args.height)
        kb = np.mean([p.stat().st_size for p in paths]) / 1024
        print(f"{args.images} JPEG photos {args.width}x{args.height} (mean {kb:.0f} KB) -> {args.size}x{args.size} "
              f"tensors, 1 thread")
        for scale in ((0.4, 1.0), (0.9, 1.0)):
            fns, ours = pipelines(args.size, scale)
            for fn in fns.values():  # warm-up
                fn(paths[0])
            rounds = protocol.Rounds.from_args(args)
            rounds.run({name: throughput(fn, paths) for name, fn in fns.items()})
            print(f"crop scale {scale}: clipcore {rounds.median('clipcore', 'rate'):.1f} img/s, open_clip "
                  f"{rounds.median('open_clip', 'rate'):.1f} img/s (medians), clipcore/open_clip "
                  f"{rounds.ratio('clipcore', 'open_clip', 'rate')}")
            print(f"  {rounds.footer()}")
            crop_statistics(ours, scale, args.width, args.height)
            same_box_error(paths[:50], scale, args.size)
            output_statistics(fns, paths[:50])


if __name__ == "__main__":
    main()
