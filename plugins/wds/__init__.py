"""The ``wds`` dataset format: WebDataset tar shards, local or remote, with a defined epoch.

See :mod:`plugins.wds.shards` (finding and reading shards), :mod:`plugins.wds.stream` (splitting
an epoch over ranks and workers) and :mod:`plugins.wds.loader` (batches, resume).
"""

from core import DatasetFormat, hookimpl
from plugins.wds.config import SECTION, check
from plugins.wds.loader import build
from plugins.wds.writer import write


@hookimpl
def register_dataset_formats(register):
    register(DatasetFormat(
        name="wds", build=build, write=write, check=check, config_sections=(SECTION,),
        description="WebDataset .tar shards (local folder, shard list with brace expansion, pipe:/http(s)/s3 URLs); "
                    "training only"))
