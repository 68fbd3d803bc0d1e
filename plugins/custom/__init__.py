"""The ``custom`` dataset format: images and caption files in folders or tar archives.

See :mod:`plugins.custom.index` for how pairs are found and :mod:`plugins.custom.loader` for
sharding, shuffling, resuming and bad samples.
"""

from typing import Any

from core import ConfigError, DatasetFormat, hookimpl
from plugins.custom.loader import build, retrieval
from plugins.custom.writer import write


def check(cfg: Any) -> None:
    """:attr:`core.DatasetFormat.check`: training needs at least one dataset entry."""
    if not cfg.dataset.train.datasets:
        raise ConfigError("no training data", where="dataset.train.datasets",
                          fix="add a [[dataset.train.datasets]] table with image_dir (and caption_dir), or choose "
                              "another dataset.train.type (`core plugins` lists the formats)")


@hookimpl
def register_dataset_formats(register):
    register(DatasetFormat(
        name="custom", build=build, retrieval=retrieval, write=write, check=check,
        description="image files with caption files of the same name (folders or .tar/.tar.gz archives, "
                    "recursive, several entries concatenated)"))
