"""Writing samples in the custom layout: ``<folder>/images/<key><suffix>`` and
``<folder>/captions/<key>.txt`` (used by ``core demo-data`` and the conformance kit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Literal

from core import DatasetEntry, RawSample


def write_pairs(folder: Path, samples: Iterable[RawSample],
                caption_mode: Literal["file", "lines"] = "file") -> DatasetEntry:
    """Write ``samples`` under ``folder``; returns the dataset entry that reads them back."""
    images, captions = Path(folder) / "images", Path(folder) / "captions"
    images.mkdir(parents=True, exist_ok=True)
    captions.mkdir(parents=True, exist_ok=True)
    for sample in samples:
        (images / f"{sample.key}{sample.image_suffix}").write_bytes(sample.image)
        (captions / f"{sample.key}.txt").write_bytes(sample.caption)
    return DatasetEntry(image_dir=str(images), caption_dir=str(captions), caption_mode=caption_mode)


def write(folder: Path, samples: Iterable[RawSample], config: Any) -> Any:
    """:attr:`core.DatasetFormat.write`: the same pairs serve training and validation."""
    entry = write_pairs(Path(folder).resolve(), samples, caption_mode="lines")
    config.dataset.train.type = "custom"
    config.dataset.train.datasets = [entry]
    config.dataset.val.type = "custom"
    config.dataset.val.datasets = [entry]
    return config
