"""Detections in COCO format, and the crops that object embeddings are computed from.

Input: a COCO-style JSON file with ``images`` (``id``, ``file_name``; optional ``width``,
``height``, ``camera_id``, ``frame_id``) and ``annotations`` (``image_id``, ``bbox`` as
``[x, y, width, height]`` in pixels; optional ``id``, ``category_id``, ``score``, and the
object's identity as ``instance_id`` or ``track_id``), plus optional ``categories`` (``id``,
``name``). ``file_name`` is relative to the image folder (default: the JSON file's folder).

The crop of a box (:func:`crop_box`): the box grows by ``margin`` × its width on the left and on
the right and ``margin`` × its height at the top and at the bottom (context around the object);
with ``shape = "square"`` its shorter side then grows, about the centre, to the longer one, so the
model's resize does not distort the object; the result is clipped to the image and rounded
outwards to whole pixels. Crops are made in memory from the decoded image and passed to the
model's own preprocessing; they are never written to disk.

Unusable boxes are reported, never silently dropped: a box of zero or negative width or height,
or one that lies wholly outside its image, is skipped with reason ``bad-box``
(``bad_samples``-style record); detections naming images that do not exist are an error.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Literal

import attrs

from core.bad_samples import BadSample
from core.errors import DataError
from core.images import decoded_rgb, open_image

CropShape = Literal["square", "box"]
NO_ID = -1  # an unknown category, instance, camera or frame


@attrs.frozen
class Detection:
    """One box of the detections file, with what the file says about it."""

    image_path: Path
    image_id: int
    bbox: tuple[float, float, float, float]  # x, y, width, height
    annotation_id: int
    category_id: int = NO_ID
    score: float = math.nan
    instance_id: int = NO_ID
    camera_id: int = NO_ID
    frame_id: int = NO_ID


@attrs.frozen
class Detections:
    """The usable boxes (in file order) and ``(annotation index, reason detail)`` for the skipped ones."""

    boxes: list[Detection]
    skipped: list[tuple[str, str]]
    categories: dict[int, str]


def read_detections(path: str, image_dir: str | None = None, *, key: str = "inference.detections",
                    min_score: float = 0.0) -> Detections:
    """The boxes of a COCO detections file (module doc), checked; boxes scoring below ``min_score``
    are left out (not reported: that is the threshold's job)."""
    file = Path(path).expanduser()
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        images = {int(im["id"]): im for im in data["images"]}
        annotations = list(data["annotations"])
        categories = {int(c["id"]): str(c.get("name", c["id"])) for c in data.get("categories", [])}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read detections: {exc}", where=key, fix="a COCO-format JSON file") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{file} is not COCO detections ({type(exc).__name__}: {exc})", where=key,
                        fix='a JSON object with "images" (id, file_name) and "annotations" (image_id, bbox)') from None
    root = Path(image_dir).expanduser() if image_dir else file.parent
    boxes, skipped, missing = [], [], {}
    for index, ann in enumerate(annotations):
        try:
            image = images[int(ann["image_id"])]
            x, y, w, h = (float(v) for v in ann["bbox"])
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"annotation {index} of {file} is malformed ({type(exc).__name__}: {exc})", where=key,
                            fix="each annotation needs image_id (an id of images) and bbox [x, y, width, height]") \
                from None
        image_path = root / str(image["file_name"])
        score = float(ann.get("score", math.nan))
        if score < min_score:
            continue
        if not image_path.is_file():
            missing.setdefault(str(image_path), index)
            continue
        if not (w > 0 and h > 0 and all(map(math.isfinite, (x, y, w, h)))):
            skipped.append((f"{image_path}#{ann.get('id', index)}", f"box {[x, y, w, h]} has no area"))
            continue
        identity = ann.get("instance_id", ann.get("track_id", NO_ID))
        boxes.append(Detection(image_path, int(image["id"]), (x, y, w, h), int(ann.get("id", index)),
                               int(ann.get("category_id", NO_ID)), score, int(identity),
                               int(image.get("camera_id", NO_ID)), int(image.get("frame_id", image["id"]))))
    if missing:
        names = list(missing)
        raise DataError(f"the detections name {len(names)} image(s) that do not exist: " + ", ".join(names[:3])
                        + (", ..." if len(names) > 3 else ""), where=key,
                        fix="set the image folder the file_name values are relative to "
                            f"({key}_image_dir), or fix the file names")
    return Detections(boxes, skipped, categories)


def crop_box(bbox: tuple[float, float, float, float], width: int, height: int, margin: float,
             shape: CropShape) -> tuple[int, int, int, int] | None:
    """The crop ``(left, top, right, bottom)`` of ``bbox`` in a ``width`` × ``height`` image (module
    doc), or ``None`` when the box lies wholly outside the image."""
    x, y, w, h = bbox
    left, top, right, bottom = x - margin * w, y - margin * h, x + w + margin * w, y + h + margin * h
    if shape == "square":
        side = max(right - left, bottom - top)
        cx, cy = (left + right) / 2, (top + bottom) / 2
        left, right, top, bottom = cx - side / 2, cx + side / 2, cy - side / 2, cy + side / 2
    left, top = max(0, math.floor(left)), max(0, math.floor(top))
    right, bottom = min(width, math.ceil(right)), min(height, math.ceil(bottom))
    if right <= left or bottom <= top or x >= width or y >= height or x + w <= 0 or y + h <= 0:
        return None
    return left, top, right, bottom


class CropLoader:
    """``load(i)``: the crop of box ``i``, transformed; a box outside its image raises
    :class:`BadSample` (``bad-box``). The last decoded image is kept, so consecutive boxes of one
    image decode it once."""

    def __init__(self, boxes: list[Detection], transform: Callable[[Any], Any], *, max_pixels: int, margin: float,
                 shape: CropShape):
        self.boxes, self.transform, self.max_pixels, self.margin, self.shape = boxes, transform, max_pixels, margin, shape
        self._path, self._image = None, None

    def __call__(self, i: int) -> Any:
        box = self.boxes[i]
        if self._path != box.image_path:
            self._path, self._image = box.image_path, decoded_rgb(open_image(box.image_path, self.max_pixels))
        image = self._image
        crop = crop_box(box.bbox, image.width, image.height, self.margin, self.shape)
        if crop is None:
            raise BadSample("bad-box", f"box {list(box.bbox)} lies outside the {image.width}x{image.height} image")
        return self.transform(image.crop(crop))
