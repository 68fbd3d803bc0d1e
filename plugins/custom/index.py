"""The custom format's sample index: image–caption pairs of every dataset entry, in a fixed order.

Rules (``dataset.*.datasets`` entries): images are the files of ``image_dir`` (a folder or a
``.tar`` / ``.tar.gz`` archive, searched recursively) whose extension is one of
:data:`core.images.IMAGE_EXTENSIONS` in any case, in sorted path order, or the files
``image_list_file`` names (relative to ``image_dir``, in the list's order). An image's caption
is ``<relative folder>/<stem><caption_file_suffix>`` in ``caption_dir`` (unset: beside the
image), or else the only caption file in ``caption_dir`` with that file name. Entries are
concatenated in order. ``group_file`` (optional) is a CSV of ``image,group`` rows, image names as
in ``image_list_file``; a first row ``image,group`` is a header. Problems found while indexing (missing images or captions, unreadable
archive members) go to ``record(path, reason, detail)``. Every path may be a URL, read through
the data cache (``storage``).
"""

from __future__ import annotations

import csv
import logging
import posixpath
from typing import Any, Callable, Literal

import attrs

from core import IMAGE_EXTENSIONS, DataError, Storage
from plugins.custom.sources import FolderSource, TarSource, open_source

Recorder = Callable[[str, str, str], None]
log = logging.getLogger("clipcore.data")


@attrs.define
class EntryIndex:
    """One dataset entry: its sources, caption mode, ``pairs`` of (image name, caption name) and
    ``groups`` (image name -> user group)."""

    images: FolderSource | TarSource
    captions: FolderSource | TarSource
    caption_mode: Literal["file", "lines"]
    pairs: list[tuple[str, str]]
    groups: dict[str, str] = attrs.field(factory=dict)


def index_entries(entries: list[Any], key: str, record: Recorder, storage: Storage) -> list[EntryIndex]:
    """Index every entry of ``entries`` (``key`` is their config key, e.g. ``dataset.train.datasets``)."""
    if not entries:
        raise DataError("no datasets are configured", where=key,
                        fix=f"add a [[{key}]] table with image_dir (and caption_dir if captions are elsewhere)")
    return [index_entry(entry, f"{key}.{i}", record, storage) for i, entry in enumerate(entries)]


def index_entry(entry: Any, key: str, record: Recorder, storage: Storage) -> EntryIndex:
    images = open_source(entry.image_dir, f"{key}.image_dir", storage)
    captions = images if entry.caption_dir is None else open_source(entry.caption_dir, f"{key}.caption_dir", storage)
    for source in {id(images): images, id(captions): captions}.values():
        for name, detail in source.broken.items():
            record(source.display(name), "unreadable-tar-member", detail)
    image_files = images.files()
    caption_files = image_files if captions is images else captions.files()
    names = _listed_images(entry, key, image_files, images, record, storage) if entry.image_list_file else [
        n for n in image_files if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not names:
        raise DataError(f"no images found in {entry.image_dir}", where=f"{key}.image_dir",
                        fix="images need one of the extensions " + " ".join(IMAGE_EXTENSIONS) + " (any case)")
    finder = _CaptionFinder(caption_files, entry.caption_file_suffix, flat_fallback=captions is not images)
    pairs = []
    for name in names:
        caption = finder.find(name)
        if caption is None:
            expected = captions.display(finder.expected(name))
            record(images.display(name), "missing-caption", f"expected {expected}")
        else:
            pairs.append((name, caption))
    groups = _groups(entry.group_file, f"{key}.group_file", set(names), storage) if entry.group_file else {}
    return EntryIndex(images=images, captions=captions, caption_mode=entry.caption_mode, pairs=pairs, groups=groups)


def _image_name(line: str) -> str:
    """An image name as a list file writes it, relative to image_dir."""
    return posixpath.normpath(line.strip().replace("\\", "/")).lstrip("/")


def _groups(path: str, key: str, names: set[str], storage: Storage) -> dict[str, str]:
    fix = "write one `image,group` row per line, the image relative to image_dir as in image_list_file"
    try:
        with open(storage.local(path, key), encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f))
    except OSError as exc:
        raise DataError(f"cannot read the group file ({type(exc).__name__}: {exc})", where=key,
                        fix="point group_file at an existing, readable CSV file (a relative path is taken from "
                            "the current folder)") from None
    except (UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read the group file ({type(exc).__name__}: {exc})", where=key, fix=fix) from None
    groups: dict[str, str] = {}
    for number, row in enumerate(rows, 1):
        if not row or (number == 1 and [c.strip() for c in row] == ["image", "group"]):
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"line {number} of {path} is not `image,group`: {','.join(row)!r}", where=key, fix=fix)
        groups[_image_name(row[0])] = row[1].strip()
    unknown = sorted(set(groups) - names)
    if groups and len(unknown) == len(groups):
        raise DataError(f"none of the {len(groups)} images in {path} is in this dataset (e.g. {unknown[0]!r}; "
                        f"the dataset's images are named like {min(names)!r})", where=key, fix=fix)
    log.info("%s: %d images in %d groups", key, len(groups) - len(unknown), len(set(groups.values())))
    if unknown:
        log.warning("%s: %d of %d images in %s are not in this dataset (e.g. %s); their groups are unused",
                    key, len(unknown), len(groups), path, unknown[0])
    return groups


def _listed_images(entry: Any, key: str, files: list[str], images: FolderSource | TarSource,
                   record: Recorder, storage: Storage) -> list[str]:
    try:
        with open(storage.local(entry.image_list_file, f"{key}.image_list_file"), encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the image list ({type(exc).__name__}: {exc})",
                        where=f"{key}.image_list_file", fix="point it at a UTF-8 text file, one image per line") from None
    present, names = set(files), []
    for line in filter(None, lines):
        name = _image_name(line)
        if name in present:
            names.append(name)
        else:
            record(images.display(name), "missing-image", f"listed in {entry.image_list_file}")
    return names


class _CaptionFinder:
    """Caption file of an image name: same relative folder first, else a unique file name match."""

    def __init__(self, files: list[str], suffix: str, flat_fallback: bool):
        self.files, self.suffix = set(files), suffix
        self.by_name: dict[str, str | None] = {}
        if flat_fallback:
            for f in files:
                base = posixpath.basename(f)
                self.by_name[base] = None if base in self.by_name else f  # None marks an ambiguous name

    def expected(self, image: str) -> str:
        return posixpath.splitext(image)[0] + self.suffix

    def find(self, image: str) -> str | None:
        candidate = self.expected(image)
        if candidate in self.files:
            return candidate
        return self.by_name.get(posixpath.basename(candidate))
