"""Generate the demo dataset: synthetic scenes of coloured shapes with several captions each.

Each 64×64 image holds one or two shapes (circle, square, triangle, diamond, star, cross) in
one of the domain's colours, small or large, in a cell of a 3×3 grid, on a dark noisy background.
Every image has four captions in varied wording (``lines`` caption mode), each naming every
shape's size, colour, kind and position, so text can find its image. The data is a function of
the seed and the domain alone (each sample has its own random stream).

Domains (``--domain``): ``all`` (eight colours, the demo's data), and a domain shift for
fine-tuning studies: ``general`` (six common colours, to pretrain on) and ``shifted`` (four
colours and colour words ``general`` never shows: purple, cyan, pink, brown). Layout::

    OUT/train   the training pairs, written by the --format plugin
    OUT/val     the validation pairs, by the same format if it builds evaluation sets, else by the
                first installed format that does
    OUT/dataset.toml   the [dataset] section that reads them back
    OUT/classes/{train,test}/<shape>/*.png
                one shape per image, in a folder named by its kind (ImageFolder layout, six
                classes), for `core linear-probe` and zero-shot classification
    OUT/detections/detections.json, OUT/detections/frames/*.png
                128×128 frames from two cameras, each showing three to five of twelve objects
                (fixed kind, colour and size); COCO boxes with the kind as category and the
                object as instance_id, for object embeddings and re-identification

Colours and positions are what the captions describe, so train with colour jitter, grayscale
and random crops off (dataset.toml sets them so).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path
from typing import Any

import attrs
import cattrs
import numpy as np
import tomli_w
from PIL import Image, ImageDraw

from core.spec.config import ExperimentConfig
from core.spec.load import load_config
from core.data import RawSample
from core.errors import ClipcoreError

SIZE = 64
SUPERSAMPLE = 4
CAPTIONS_PER_IMAGE = 4
CLASS_IMAGES = 100  # class-folder training images per class (half as many for testing)
DETECTION_FRAMES = 60

COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 235), "yellow": (240, 220, 50),
    "purple": (150, 60, 200), "orange": (245, 140, 30), "white": (240, 240, 240), "cyan": (40, 210, 220),
    "pink": (250, 130, 190), "brown": (140, 85, 40),
}
#: The colours of each ``--domain``.
DOMAINS = {
    "all": ("red", "green", "blue", "yellow", "purple", "orange", "white", "cyan"),
    "general": ("red", "green", "blue", "yellow", "orange", "white"),
    "shifted": ("purple", "cyan", "pink", "brown"),
}
SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross")
SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
RADIUS = {"small": (4.5, 6.0), "large": (8.0, 9.5)}  # half-extent in output pixels (a cell is 21)
# 3×3 grid cells: (column, row) -> phrases, and short forms.
POSITIONS = {
    (0, 0): (("in the top left corner", "at the upper left", "in the top-left"), "top left"),
    (1, 0): (("at the top", "in the top middle", "near the top edge"), "top"),
    (2, 0): (("in the top right corner", "at the upper right", "in the top-right"), "top right"),
    (0, 1): (("on the left", "at the left side", "in the middle left"), "left"),
    (1, 1): (("in the center", "in the middle", "at the centre"), "center"),
    (2, 1): (("on the right", "at the right side", "in the middle right"), "right"),
    (0, 2): (("in the bottom left corner", "at the lower left", "in the bottom-left"), "bottom left"),
    (1, 2): (("at the bottom", "in the bottom middle", "near the bottom edge"), "bottom"),
    (2, 2): (("in the bottom right corner", "at the lower right", "in the bottom-right"), "bottom right"),
}
SINGLE = (
    "a {size} {colour} {shape} {where}",
    "there is a {size} {colour} {shape} {where}",
    "{Short}: a {size} {colour} {shape}",
    "a {colour} {shape}, {size}, {where}",
    "picture of a {size} {shape} in {colour} {where}",
    "{where_cap} a {size} {colour} {shape}",
)
PART = (  # noun phrases joined by PAIR
    "a {size} {colour} {shape} {where}",
    "a {size} {shape} in {colour} {where}",
    "a {colour} {shape}, {size}, {where}",
    "a {size} {colour} {shape} ({short})",
)
PAIR = (
    "{a} and {b}",
    "two shapes: {a} and {b}",
    "{a}; {b}",
    "{a}, and also {b}",
)


@attrs.frozen
class Shape:
    kind: str
    colour: str
    size: str
    cell: tuple[int, int]


def scene(rng: np.random.Generator, colours: tuple[str, ...] = DOMAINS["all"]) -> list[Shape]:
    """One or two shapes in distinct cells with distinct (kind, colour), colours from ``colours``."""
    count = 1 if rng.random() < 0.5 else 2
    cells = [tuple(c) for c in rng.permutation(list(POSITIONS))[:count]]
    shapes: list[Shape] = []
    while len(shapes) < count:
        kind, colour = SHAPES[rng.integers(len(SHAPES))], colours[rng.integers(len(colours))]
        if all((kind, colour) != (s.kind, s.colour) for s in shapes):
            size = "small" if rng.random() < 0.5 else "large"
            shapes.append(Shape(kind, colour, size, cells[len(shapes)]))
    return shapes


def render(shapes: list[Shape], rng: np.random.Generator) -> Image.Image:
    """The scene at 64×64 (drawn 4× larger and box-downsampled, so edges are anti-aliased)."""
    big = SIZE * SUPERSAMPLE
    background = int(rng.integers(10, 70))
    image = Image.new("RGB", (big, big), (background,) * 3)
    draw = ImageDraw.Draw(image)
    for shape in shapes:
        cx = (shape.cell[0] + 0.5) * SIZE / 3 + rng.uniform(-1.5, 1.5)
        cy = (shape.cell[1] + 0.5) * SIZE / 3 + rng.uniform(-1.5, 1.5)
        radius = rng.uniform(*RADIUS[shape.size])
        colour = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[shape.colour])
        _draw(draw, shape.kind, cx * SUPERSAMPLE, cy * SUPERSAMPLE, radius * SUPERSAMPLE, colour)
    small = np.asarray(image.reduce(SUPERSAMPLE), dtype=np.int16)
    noisy = small + rng.normal(0, 4, small.shape).round().astype(np.int16)
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def _draw(draw: ImageDraw.ImageDraw, kind: str, x: float, y: float, r: float, colour: tuple[int, ...]) -> None:
    if kind == "circle":
        draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
    elif kind == "square":
        s = r * 0.85
        draw.rectangle([x - s, y - s, x + s, y + s], fill=colour)
    elif kind == "triangle":
        draw.polygon([(x, y - r), (x + r * 0.95, y + r * 0.75), (x - r * 0.95, y + r * 0.75)], fill=colour)
    elif kind == "diamond":
        draw.polygon([(x, y - r), (x + r * 0.8, y), (x, y + r), (x - r * 0.8, y)], fill=colour)
    elif kind == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        draw.polygon([(x + q * np.cos(a), y - q * np.sin(a)) for a, q in zip(angles, radii)], fill=colour)
    else:  # cross
        t = r * 0.33
        draw.rectangle([x - r, y - t, x + r, y + t], fill=colour)
        draw.rectangle([x - t, y - r, x + t, y + r], fill=colour)


def captions(shapes: list[Shape], rng: np.random.Generator) -> list[str]:
    """Four differently worded captions, each describing every shape (in a random order)."""
    out = []
    for template in rng.permutation(len(SINGLE))[:CAPTIONS_PER_IMAGE]:
        if len(shapes) == 1:
            out.append(_describe(shapes[0], SINGLE[template], rng))
            continue
        a, b = (_describe(shapes[i], PART[rng.integers(len(PART))], rng) for i in rng.permutation(len(shapes)))
        out.append(PAIR[template % len(PAIR)].format(a=a, b=b))
    return out


def _describe(shape: Shape, template: str, rng: np.random.Generator) -> str:
    phrases, short = POSITIONS[shape.cell]
    where = phrases[rng.integers(len(phrases))]
    return template.format(size=SIZE_WORDS[shape.size][rng.integers(3)], colour=shape.colour, shape=shape.kind,
                           where=where, where_cap=where[0].upper() + where[1:] + ",", short=short,
                           Short=short[0].upper() + short[1:])


def sample(seed: int, split: str, index: int, domain: str = "all") -> RawSample:
    """Sample ``index`` of ``split`` in ``domain``: a PNG and its captions, one per line."""
    stream = [seed, {"train": 0, "val": 1}[split], index]
    rng = np.random.default_rng(stream if domain == "all" else [*stream, list(DOMAINS).index(domain)])
    shapes = scene(rng, DOMAINS[domain])
    buffer = io.BytesIO()
    render(shapes, rng).save(buffer, "PNG", compress_level=1)
    text = "\n".join(captions(shapes, rng)) + "\n"
    return RawSample(key=f"{split}-{index:06d}", image=buffer.getvalue(), caption=text.encode("utf-8"))


def class_image(seed: int, split: str, index: int, domain: str = "all") -> tuple[str, bytes]:
    """Class-folder image ``index`` of ``split`` (train, test): its class (the shape's kind,
    ``SHAPES[index % 6]``) and a PNG of that one shape in a random colour, size and cell."""
    stream = [seed, {"train": 2, "test": 3}[split], index, list(DOMAINS).index(domain)]
    rng = np.random.default_rng(stream)
    colours = DOMAINS[domain]
    kind = SHAPES[index % len(SHAPES)]
    cell = tuple(int(c) for c in rng.integers(0, 3, size=2))
    shape = Shape(kind, colours[rng.integers(len(colours))], "small" if rng.random() < 0.5 else "large", cell)
    buffer = io.BytesIO()
    render([shape], rng).save(buffer, "PNG", compress_level=1)
    return kind, buffer.getvalue()


def write_classes(out: Path, seed: int, per_class: int, domain: str) -> int:
    """``out/{train,test}/<kind>/NNNNN.png``: ``per_class`` training and ``per_class // 2`` (at
    least 1) test images per class; the number of images written."""
    written = 0
    for split, count in (("train", per_class), ("test", max(1, per_class // 2))):
        for index in range(count * len(SHAPES)):
            kind, png = class_image(seed, split, index, domain)
            folder = out / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            (folder / f"{index:05d}.png").write_bytes(png)
            written += 1
    return written


FRAME_SIZE, FRAME_GRID = 128, 4  # detection frames: 128×128, objects placed in cells of a 4×4 grid
INSTANCES = 12


def instances(seed: int, domain: str = "all") -> list[tuple[str, str, float]]:
    """The objects detection frames show: ``INSTANCES`` distinct (kind, colour) pairs, each with
    its own radius in pixels."""
    rng = np.random.default_rng([seed, 4, list(DOMAINS).index(domain)])
    colours = DOMAINS[domain]
    pairs = [(k, c) for k in SHAPES for c in colours]
    chosen = rng.choice(len(pairs), size=min(INSTANCES, len(pairs)), replace=False)
    return [(*pairs[i], float(rng.uniform(8, 14))) for i in chosen]


def detection_frame(seed: int, index: int, domain: str = "all") -> tuple[bytes, int, list[dict[str, Any]]]:
    """Frame ``index``: a PNG, its camera (0 or 1: darker or lighter background) and its objects
    ``{"instance", "kind", "bbox"}`` (bbox ``[x, y, w, h]`` around the drawn shape)."""
    rng = np.random.default_rng([seed, 5, index, list(DOMAINS).index(domain)])
    objects = instances(seed, domain)
    camera = index % 2
    big, cell = FRAME_SIZE * SUPERSAMPLE, FRAME_SIZE / FRAME_GRID
    image = Image.new("RGB", (big, big), (int(rng.integers(10, 50)) + 40 * camera,) * 3)
    draw = ImageDraw.Draw(image)
    shown = rng.choice(len(objects), size=int(rng.integers(3, 6)), replace=False)
    cells = rng.choice(FRAME_GRID * FRAME_GRID, size=len(shown), replace=False)
    found = []
    for instance, where in zip(shown, cells):
        kind, colour, radius = objects[instance]
        cx = (where % FRAME_GRID + 0.5) * cell + rng.uniform(-2, 2)
        cy = (where // FRAME_GRID + 0.5) * cell + rng.uniform(-2, 2)
        rgb = tuple(int(np.clip(c + rng.integers(-15, 16), 0, 255)) for c in COLOURS[colour])
        _draw(draw, kind, cx * SUPERSAMPLE, cy * SUPERSAMPLE, radius * SUPERSAMPLE, rgb)
        found.append({"instance": int(instance), "kind": kind,
                      "bbox": [round(cx - radius, 2), round(cy - radius, 2), round(2 * radius, 2), round(2 * radius, 2)]})
    small = np.asarray(image.reduce(SUPERSAMPLE), dtype=np.int16)
    noisy = np.clip(small + rng.normal(0, 4, small.shape).round().astype(np.int16), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue(), camera, found


def write_detections(out: Path, seed: int, frames: int, domain: str) -> int:
    """``out/frames/NNNNN.png`` and ``out/detections.json`` (COCO, with instance_id, camera_id and
    frame_id); the number of boxes."""
    (out / "frames").mkdir(parents=True, exist_ok=True)
    coco: dict[str, Any] = {"images": [], "annotations": [],
                            "categories": [{"id": i, "name": kind} for i, kind in enumerate(SHAPES)]}
    for index in range(frames):
        png, camera, objects = detection_frame(seed, index, domain)
        name = f"frames/{index:05d}.png"
        (out / name).write_bytes(png)
        coco["images"].append({"id": index, "file_name": name, "width": FRAME_SIZE, "height": FRAME_SIZE,
                               "camera_id": camera, "frame_id": index})
        for obj in objects:
            coco["annotations"].append({"id": len(coco["annotations"]), "image_id": index, "bbox": obj["bbox"],
                                        "category_id": SHAPES.index(obj["kind"]), "score": 1.0,
                                        "instance_id": obj["instance"]})
    (out / "detections.json").write_text(json.dumps(coco, indent=1), encoding="utf-8")
    return len(coco["annotations"])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="output folder")
    parser.add_argument("--format", default=ExperimentConfig().dataset.train.type,
                        help="training data format (`core plugins` lists them; default: dataset.train.type's default)")
    parser.add_argument("--n", type=int, default=5000, help="training pairs (default 5000)")
    parser.add_argument("--val", type=int, default=500, help="validation pairs (default 500)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--domain", choices=list(DOMAINS), default="all",
                        help="colours of the scenes: all (default), or a domain shift: general (six common "
                             "colours) to pretrain on and shifted (four colours general never shows) to fine-tune on")
    parser.add_argument("--class-images", type=int, default=CLASS_IMAGES, metavar="N",
                        help="class-folder images per class in OUT/classes/train (half as many in "
                             f"OUT/classes/test; default {CLASS_IMAGES}; 0 writes none)")
    parser.add_argument("--detection-frames", type=int, default=DETECTION_FRAMES, metavar="N",
                        help=f"detection frames in OUT/detections (default {DETECTION_FRAMES}; 0 writes none)")
    parser.add_argument("--force", action="store_true", help="replace what OUT holds from an earlier run")


def run(args: argparse.Namespace) -> None:
    generate(Path(args.out), fmt=args.format, n=args.n, val=args.val, seed=args.seed, domain=args.domain,
             class_images=args.class_images, detection_frames=args.detection_frames, force=args.force)


def generate(out: Path, *, fmt: str = "custom", n: int = 5000, val: int = 500, seed: int = 0, domain: str = "all",
             class_images: int = CLASS_IMAGES, detection_frames: int = DETECTION_FRAMES, force: bool = False) -> None:
    """Write the demo data to ``out`` (the layout of the module doc); ``fmt`` is the training format."""
    from rich.console import Console

    from core.registry import get_registry

    registry = get_registry()
    fmt_name, fmt = fmt, registry.get("dataset_formats", fmt, key="--format")
    if fmt.write is None:
        raise ClipcoreError(f"dataset format {fmt_name!r} cannot write data", where="--format",
                            fix="choose a format that can: " + ", ".join(_writers(registry)))
    val_format = fmt if fmt.retrieval is not None else _retrieval_writer(registry)
    if n < 1 or val < 1 or class_images < 0 or detection_frames < 0:
        raise ClipcoreError("--n and --val must be at least 1, --class-images and --detection-frames at least 0",
                            where="core demo-data")
    for part in ("train", "val", "classes", "detections"):
        if (out / part).exists():
            if not force:
                raise ClipcoreError(f"{out / part} already exists", where="core demo-data",
                                    fix="choose another OUT, or pass --force to replace it")
            shutil.rmtree(out / part)
    train = _generate(seed, "train", n, domain)
    val_samples = _generate(seed, "val", val, domain)
    console = Console(stderr=True)
    with console.status("writing files"):
        cfg = fmt.write(out / "train", train, load_config(None))
        cfg.dataset.val = val_format.write(out / "val", val_samples, load_config(None)).dataset.val
        classes = write_classes(out / "classes", seed, class_images, domain) if class_images else 0
        boxes = write_detections(out / "detections", seed, detection_frames, domain) if detection_frames else 0
    section = dataset_section(cfg, load_config(None))
    (out / "dataset.toml").write_text(tomli_w.dumps(section), encoding="utf-8")
    console.print(f"wrote {n} training and {val} validation pairs ({fmt_name}) to {out}; "
                  f"the dataset section that reads them is in {out / 'dataset.toml'}", markup=False)
    if classes:
        console.print(f"wrote {classes} class-folder images ({len(SHAPES)} shape classes) to {out / 'classes'}",
                      markup=False)
    if boxes:
        console.print(f"wrote {detection_frames} detection frames with {boxes} boxes of {INSTANCES} objects to "
                      f"{out / 'detections'}", markup=False)


def _writers(registry: Any) -> list[str]:
    return [name for name, e in registry.entries["dataset_formats"].items() if e.obj.write is not None]


def _retrieval_writer(registry: Any) -> Any:
    """The first installed format that writes data and builds evaluation sets (for the val split)."""
    for entry in registry.entries["dataset_formats"].values():
        if entry.obj.write is not None and entry.obj.retrieval is not None:
            return entry.obj
    raise ClipcoreError("no installed dataset format can write a validation set", where="core demo-data",
                        fix="install a format plugin with both `write` and `retrieval`")


def _generate(seed: int, split: str, n: int, domain: str) -> list[RawSample]:
    from rich.progress import track

    return [sample(seed, split, i, domain) for i in track(range(n), description=f"generating {split}", transient=True)]


def dataset_section(cfg: ExperimentConfig, defaults: ExperimentConfig) -> dict[str, Any]:
    """The ``[dataset]`` table that reads the written data: what the formats' writers set (core's
    fields and the formats' own sections under ``dataset``), and augmentation that keeps colours and
    positions (what the captions describe)."""
    table = _changed(cattrs.unstructure(cfg.dataset), cattrs.unstructure(defaults.dataset))
    for path, value in cfg.plugins.items():
        if path.startswith("dataset."):
            diff = _changed(cattrs.unstructure(value), cattrs.unstructure(defaults.plugins[path]))
            node = table
            for part in path.split(".")[1:]:
                node = node.setdefault(part, {})
            node.update(diff)
    for split in ("train", "val"):
        table.setdefault(split, {})["type"] = getattr(cfg.dataset, split).type
    table["augmentation"] = {"scale": [1.0, 1.0], "color_jitter": [], "grayscale": 0.0}
    return {"dataset": table}


def _changed(value: Any, default: Any) -> Any:
    """The parts of an unstructured ``value`` that differ from ``default`` (unset keys left out)."""
    if isinstance(value, dict):
        out = {k: _changed(v, default.get(k) if isinstance(default, dict) else None) for k, v in value.items()
               if v is not None and v != (default.get(k) if isinstance(default, dict) else None)}
        return {k: v for k, v in out.items() if v != {}}
    if isinstance(value, list):
        return [_changed(v, {}) for v in value]
    return value
