"""WebDataset shards: finding them, opening local and remote ones, reading their samples.

Shards come from ``dataset.train.wds``: ``shard_list_file`` (one shard per line, blank lines and
``#`` comments ignored, brace expansion ``shard-{000..099}.tar``; relative lines resolve under
``root_dir`` if set, else under the list file's folder) or else every ``*.tar`` under
``root_dir``, sorted. Remote shards: ``pipe:<command>`` and ``http(s)://`` open through
webdataset's ``gopen`` (curl); other URLs (``s3://``, ``gs://``, ...) are streamed through fsspec
with ``dataset.storage_options``, which needs the matching filesystem package (s3fs, gcsfs) and
takes its usual credentials. A remote ``shard_list_file`` is read through the data cache.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

import braceexpand
import fsspec
import webdataset
from webdataset.tariterators import base_plus_ext

from core import BadSample, ConfigError, DataError, Storage, is_url
from plugins.wds.config import SECTION, require_shards

GOPEN_SCHEMES = ("pipe:", "http://", "https://")


def is_remote(url: str) -> bool:
    return url.startswith("pipe:") or "://" in url


def list_shards(wds: Any, record: Callable[[str, str, str], None], storage: Storage) -> list[str]:
    """Every shard of ``wds`` (a :class:`plugins.wds.config.WdsConfig`); missing local shards go to
    ``record`` (skipped, or an error under ``on_bad_sample = "error"``)."""
    require_shards(wds)
    if wds.shard_list_file:
        shards = _from_list(wds.shard_list_file, wds.root_dir, storage)
    else:
        root = Path(wds.root_dir).expanduser()
        if is_remote(wds.root_dir) or not root.is_dir():
            raise ConfigError(f"root_dir {wds.root_dir} is not a local folder", where=f"{SECTION.path}.root_dir",
                              fix="point it at a folder of *.tar shards, or list remote shards in shard_list_file")
        shards = sorted(str(p) for p in root.rglob("*.tar"))
    present = []
    for shard in shards:
        if is_remote(shard) or os.path.isfile(shard):
            present.append(shard)
        else:
            record(shard, "missing-shard", "no such file")
    if not present:
        raise DataError("no shards found", where=f"{SECTION.path}.{'shard_list_file' if wds.shard_list_file else 'root_dir'}",
                        fix="check the paths; shards are WebDataset .tar files")
    return present


def _from_list(list_file: str, root_dir: str | None, storage: Storage) -> list[str]:
    key = f"{SECTION.path}.shard_list_file"
    try:
        lines = storage.local(list_file, key).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the shard list ({type(exc).__name__}: {exc})",
                        where=key, fix="point it at a text file, one shard per line") from None
    base = root_dir or (list_file.rpartition("/")[0] if is_url(list_file)
                        else str(Path(list_file).expanduser().resolve().parent))
    shards = []
    for line in lines:
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        for shard in braceexpand.braceexpand(line):
            if is_remote(shard) or os.path.isabs(shard):
                shards.append(shard)
            elif is_remote(base):
                shards.append(base.rstrip("/") + "/" + shard)
            else:
                shards.append(str(Path(base).expanduser() / shard))
    return shards


def open_shard(url: str, storage_options: dict[str, Any]) -> IO[bytes]:
    """A binary stream of the shard; raises :class:`BadSample` (``unreachable-shard``)."""
    try:
        if url.startswith(GOPEN_SCHEMES):
            return webdataset.gopen(url, "rb")
        if "://" in url:
            return fsspec.open(url, "rb", **storage_options).open()
        return open(url, "rb")
    except FileNotFoundError:
        raise BadSample("missing-shard", "no such file", path=url) from None
    except (ImportError, ValueError) as exc:  # fsspec: no filesystem for the protocol / its package missing
        raise BadSample("unreachable-shard", f"{type(exc).__name__}: {exc}", path=url) from None
    except OSError as exc:
        raise BadSample("unreachable-shard", f"{type(exc).__name__}: {exc}", path=url) from None


def read_shard(url: str, storage_options: dict[str, Any]) -> Iterator[dict[str, Any] | BadSample]:
    """The shard's samples as dicts ``{"__key__", "__url__", <lower-case extension>: bytes}``,
    grouped by key as WebDataset does; a read failure ends the shard with a :class:`BadSample`."""
    try:
        stream = open_shard(url, storage_options)
    except BadSample as exc:
        yield exc
        return
    current: dict[str, Any] | None = None
    member = None
    try:
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                if not member.isreg():
                    continue
                prefix, suffix = base_plus_ext(member.name)
                if prefix is None or os.path.basename(prefix).startswith("__"):
                    continue
                data = archive.extractfile(member).read()
                if current is None or current["__key__"] != prefix:
                    if current is not None:
                        yield current
                    current = {"__key__": prefix, "__url__": url}
                current[suffix.lower()] = data
        if current is not None:
            yield current
        _close(stream, url)
    except (tarfile.TarError, EOFError, OSError) as exc:
        _close(stream, url, quiet=True)
        where = f"after member {member.name}" if member is not None else "at the start"
        reason = "unreadable-tar-member" if member is not None else "unreachable-shard"
        yield BadSample(reason, f"{where}: {type(exc).__name__}: {exc}", path=url)


def _close(stream: IO[bytes], url: str, quiet: bool = False) -> None:
    try:
        stream.close()  # a webdataset pipe raises here when its command failed
    except Exception as exc:
        if not quiet:
            raise OSError(f"closing {url}: {exc}") from None


def count_samples(url: str, record: Callable[[str, str, str], None]) -> int:
    """Samples in a local shard (tar headers only; consecutive members sharing a key are one).
    A shard that cannot be read to its end goes to ``record``; its readable part counts."""
    if is_remote(url):
        raise ConfigError(f"cannot count the samples of remote shard {url}", where=f"{SECTION.path}.count_samples",
                          fix="set count_samples = false and samples_per_shard to the shards' size")
    count, last = 0, None
    try:
        with tarfile.open(url, "r:*") as archive:
            for member in archive:
                prefix, _ = base_plus_ext(member.name) if member.isreg() else (None, None)
                if prefix is not None and prefix != last:
                    count, last = count + 1, prefix
    except (tarfile.TarError, EOFError, OSError) as exc:
        record(url, "unreadable-tar-member", f"while counting, after {count} samples: {type(exc).__name__}: {exc}")
    return count
