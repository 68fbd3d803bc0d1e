"""The ``custom`` dataset format: images and caption files in folders or tar archives.

See :mod:`plugins.custom.index` for how pairs are found and :mod:`plugins.custom.loader` for
sharding, shuffling, resuming and bad samples.
"""

from core import hookimpl
from core.data import DatasetFormat
from plugins.custom.loader import build, retrieval
from plugins.custom.writer import write


@hookimpl
def register_dataset_formats(register):
    register(DatasetFormat(
        name="custom", build=build, retrieval=retrieval, write=write,
        description="image files with caption files of the same name (folders or .tar/.tar.gz archives, "
                    "recursive, several entries concatenated)"))
