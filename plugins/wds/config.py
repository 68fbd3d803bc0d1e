"""The ``[dataset.train.wds]`` config section, owned by the ``wds`` format, and its rules."""

from __future__ import annotations

from typing import Any, Literal

import attrs

from core import ConfigError, ConfigSection, at_least, opt


@attrs.define(kw_only=True)
class WdsConfig:
    """WebDataset shards (type = wds)."""

    root_dir: str | None = opt(None, "Folder searched recursively for *.tar shards.", path="dir")
    shard_list_file: str | None = opt(None, "File with one shard per line (brace expansion, URLs).", path="file")
    samples_per_shard: int = opt(10000, "Samples per shard; defines the epoch length.", validator=at_least(1))
    count_samples: bool = opt(
        False, "Count the samples of every (local) shard at start-up instead of trusting samples_per_shard.")
    caption_mode: Literal["file", "lines"] = opt(
        "file", "file: the whole txt/text member is one caption; lines: each non-empty line is one (one is drawn).")
    shuffle_buffer: int = opt(1000, "Samples held by each loader worker's shuffle buffer (1 = shard order).",
                              validator=at_least(1))


SECTION = ConfigSection("dataset.train.wds", WdsConfig)


def check(cfg: Any) -> None:
    """:attr:`core.DatasetFormat.check`: the shards must be given."""
    require_shards(SECTION.of(cfg))


def require_shards(wds: WdsConfig) -> None:
    if not (wds.root_dir or wds.shard_list_file):
        raise ConfigError("no shards: root_dir and shard_list_file are unset", where=SECTION.path,
                          fix=f"set {SECTION.path}.root_dir (a folder of .tar shards) or shard_list_file")
