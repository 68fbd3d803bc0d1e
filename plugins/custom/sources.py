"""Where custom-format files live: a folder, or a ``.tar`` / ``.tar.gz`` archive read in place.

A source lists its regular files as sorted relative POSIX paths (hidden names starting with
``.`` are ignored, as are directories) and reads one file's bytes. A plain ``.tar`` is indexed
once (member offsets) and read by seeking, from any worker process. A compressed archive
cannot be read at random, so its members are read into memory in one pass (up to
:data:`MAX_COMPRESSED_ARCHIVE_BYTES`; larger ones must be decompressed to ``.tar`` first).

A URL (``s3://...``) is read through the node's data cache (:class:`core.Storage`): a folder or
an archive is fetched once. An archive larger than the cache's limit is read in place instead,
a ``.tar`` by range requests, a ``.tar.gz`` in one streamed pass.
"""

from __future__ import annotations

import functools
import logging
import os
import tarfile
from pathlib import Path
from typing import IO, Callable

from core import ARCHIVE_SUFFIXES, BadSample, DataError, Storage, TooLarge

log = logging.getLogger("clipcore.data")

MAX_COMPRESSED_ARCHIVE_BYTES = 2 << 30


class FolderSource:
    """Files under a folder, searched recursively (symlinked folders followed once)."""

    def __init__(self, root: Path):
        self.root = root
        self.broken: dict[str, str] = {}

    def files(self) -> list[str]:
        found, seen = [], set()
        for folder, dirs, names in os.walk(self.root, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            rel = os.path.relpath(folder, self.root)
            prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
            found.extend(prefix + n for n in names if not n.startswith("."))
        return sorted(found)

    def read(self, name: str) -> bytes:
        with open(self.root / name, "rb") as f:
            return f.read()

    def display(self, name: str) -> str:
        return str(self.root / name)


class TarSource:
    """Members of a tar archive, read without extracting to disk.

    ``path`` names the archive in messages, ``opener()`` opens it for reading (from any process),
    ``size`` is its length in bytes. ``broken`` maps members that cannot be read (cut off by a
    truncated archive) to the reason.
    """

    def __init__(self, path: str, opener: Callable[[], IO[bytes]], size: int):
        self.path, self.opener, self.size = path, opener, size
        self.broken: dict[str, str] = {}
        self._offsets: dict[str, tuple[int, int]] = {}
        self._data: dict[str, bytes] = {}
        self._file = None
        self._file_pid = None
        if path.endswith(".tar"):
            self._index_plain()
        else:
            self._load_compressed()

    @classmethod
    def local(cls, path: Path) -> TarSource:
        return cls(str(path), functools.partial(open, path, "rb"), path.stat().st_size)

    def _index_plain(self) -> None:
        size = self.size
        try:
            with self.opener() as f, tarfile.open(fileobj=f, mode="r:") as archive:
                for member in archive:
                    name = _member_name(member)
                    if name is None:
                        continue
                    if member.offset_data + member.size > size:
                        self.broken[name] = (f"member needs bytes up to {member.offset_data + member.size}, "
                                             f"the archive has {size} (truncated archive)")
                    else:
                        self._offsets[name] = (member.offset_data, member.size)
        except (tarfile.TarError, OSError) as exc:  # OSError: a remote archive's store failed mid-read
            if not self._offsets and not self.broken:
                raise DataError(f"not a readable tar archive ({exc})", where=str(self.path),
                                fix="check the file, or point the key at a folder") from None
            self.broken["<rest of the archive>"] = f"{type(exc).__name__}: {exc}"

    def _load_compressed(self) -> None:
        total = 0
        try:
            with self.opener() as f, tarfile.open(fileobj=f, mode="r|*") as archive:
                for member in archive:
                    name = _member_name(member)
                    if name is None:
                        continue
                    total += member.size
                    if total > MAX_COMPRESSED_ARCHIVE_BYTES:
                        raise DataError(
                            f"compressed archive holds more than {MAX_COMPRESSED_ARCHIVE_BYTES >> 30} GiB; a "
                            "compressed tar cannot be read at random, so it would have to sit in memory",
                            where=str(self.path),
                            fix=f"decompress it once (`gunzip -k {Path(self.path).name}`) and point the key at the .tar, "
                                "which is read in place")
                    self._data[name] = archive.extractfile(member).read()
        except (tarfile.TarError, EOFError, OSError) as exc:
            if not self._data:
                raise DataError(f"not a readable tar archive ({type(exc).__name__}: {exc})", where=str(self.path),
                                fix="check the file (`tar tzf` lists it), or point the key at a folder") from None
            self.broken["<rest of the archive>"] = f"{type(exc).__name__}: {exc}"

    def files(self) -> list[str]:
        return sorted([*self._offsets, *self._data])

    def read(self, name: str) -> bytes:
        if name in self._data:
            return self._data[name]
        if name not in self._offsets:
            raise FileNotFoundError(name)
        offset, size = self._offsets[name]
        handle = self._handle()
        try:
            handle.seek(offset)
            data = handle.read(size)
        except OSError as exc:  # a remote archive's store failed: this sample is skipped and recorded
            raise BadSample("unreadable-tar-member", f"{type(exc).__name__}: {exc}") from None
        if len(data) != size:
            raise BadSample("unreadable-tar-member", f"read {len(data)} of {size} bytes")
        return data

    def _handle(self):
        if self._file is None or self._file_pid != os.getpid():  # one handle per (worker) process
            self._file, self._file_pid = self.opener(), os.getpid()
        return self._file

    def display(self, name: str) -> str:
        return f"{self.path}/{name}"

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None, "_file_pid": None}


def _member_name(member: tarfile.TarInfo) -> str | None:
    """The member's normalised name, or None for what is not a visible regular file."""
    if not member.isreg():
        return None
    name = member.name
    while name.startswith("./"):
        name = name[2:]
    if any(part.startswith(".") for part in name.split("/")):
        return None
    return name


def open_source(path: str, key: str, storage: Storage) -> FolderSource | TarSource:
    """The folder or archive at ``path`` (``key`` is the config key it came from)."""
    try:
        p = storage.local(path, key)
    except TooLarge as too_large:
        if not path.endswith(ARCHIVE_SUFFIXES):
            raise
        log.warning("%s: %s; reading it in place, from the store at every epoch (raise dataset.cache_size_gb to "
                    "cache it)", key, too_large.what)
        return TarSource(path, functools.partial(storage.open, path, key), too_large.size)
    if not p.exists():
        raise DataError(f"{path} does not exist", where=key, fix="point it at a folder or a .tar/.tar.gz archive")
    if p.is_dir():
        return FolderSource(p)
    if p.name.endswith(ARCHIVE_SUFFIXES):
        return TarSource.local(p)
    raise DataError(f"{path} is neither a folder nor a .tar/.tar.gz archive", where=key,
                    fix="point it at a folder of files or a tar archive of them")
