"""Writing samples as WebDataset shards (used by ``core demo-data --format wds`` and the kit)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import attrs
import webdataset

from core import RawSample
from plugins.wds.config import SECTION


def write_shards(folder: Path, samples: Sequence[RawSample], shards: int) -> list[int]:
    """Write ``samples`` into ``shards`` tar files ``folder/shard-000000.tar``, ... of nearly equal
    size (members ``<key>.<image ext>`` and ``<key>.txt``); returns each shard's sample count."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards = max(1, min(shards, len(samples)))
    counts = []
    for number in range(shards):
        part = samples[number * len(samples) // shards:(number + 1) * len(samples) // shards]
        with webdataset.TarWriter(str(folder / f"shard-{number:06d}.tar")) as sink:
            for sample in part:
                sink.write({"__key__": sample.key, sample.image_suffix.lstrip(".").lower(): sample.image,
                            "txt": sample.caption})
        counts.append(len(part))
    return counts


def write(folder: Path, samples: Sequence[RawSample], config: Any) -> Any:
    """:attr:`core.data.DatasetFormat.write`: eight shards under ``folder`` (any world size up to
    8 gets whole shards), their real sizes counted."""
    write_shards(folder, samples, shards=8)
    config.dataset.train.type = "wds"
    config.plugins[SECTION.path] = attrs.evolve(SECTION.of(config), root_dir=str(Path(folder).resolve()),
                                                shard_list_file=None, count_samples=True,
                                                caption_mode="lines")
    return config
