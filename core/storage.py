"""Data behind fsspec URLs (``s3://``, ``gs://``, ``https://``, ...) used as local files.

:meth:`Storage.local` gives a local path for a configured path: the path itself when it is local;
for a URL, the cached copy of the object (a file) or of every object under it (a folder).
:meth:`Storage.folder` also unpacks an archive (``.tar``, ``.tar.gz``, local or remote) into the
cache, once, for what reads folders of images.

- **Content check.** Every call lists the URL (one request for a file, one listing for a folder)
  and compares each object's size and ETag (or the store's version field) with the cache entry's
  manifest; new or changed objects are fetched, removed ones deleted. A warm cache costs one
  listing, then local reads.
- **Concurrency.** An entry is filled under a file lock, so the processes of a node fetch it once;
  files land by atomic rename, so a reader never sees half a file. A failed fetch leaves no file.
- **Size limit.** After a fill, the least recently used entries are removed until the cache holds
  at most ``limit_bytes``, except entries a live process uses: using an entry holds a shared lock
  on ``<entry>.use`` until the process ends (its loader workers inherit it). An object set larger
  than the limit raises :class:`TooLarge`; :meth:`Storage.open` reads such an object in place, by
  range requests.
- **Credentials and endpoint** come from each store's own environment and config files
  (``AWS_ACCESS_KEY_ID`` / ``AWS_PROFILE`` / ``AWS_ENDPOINT_URL`` for S3,
  ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS, ...), plus ``options`` (``dataset.storage_options``),
  passed to the filesystem of every URL. Nothing is baked in.

Every failure is a :class:`core.errors.DataError` naming the URL and the config key.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tarfile
import zlib
from pathlib import Path
from typing import IO, Any, Iterator

import attrs
import fsspec
from filelock import FileLock, Timeout
from fsspec.callbacks import Callback
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TransferSpeedColumn

from core.errors import DataError, file_system_error

log = logging.getLogger("clipcore.storage")

MANIFEST = "entry.json"
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_VERSION_FIELDS = ("ETag", "etag", "md5Hash", "VersionId", "generation", "mtime", "LastModified", "updated")
_CREDENTIALS = {
    "s3": "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials",
    "gs": "GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`",
    "gcs": "GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth application-default login`",
    "az": "AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY",
    "abfs": "AZURE_STORAGE_CONNECTION_STRING or AZURE_STORAGE_ACCOUNT_NAME / AZURE_STORAGE_ACCOUNT_KEY",
}
_ENDPOINT = {"s3": "AWS_ENDPOINT_URL (or endpoint_url in dataset.storage_options)"}
_PACKAGE = {"s3": "s3fs (pip install 'clipcore[s3]')", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}


def is_url(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` names a remote object (``scheme://...``; ``file://`` counts as local)."""
    return isinstance(path, str) and "://" in path and not path.startswith("file://")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/clipcore/data`` (``~/.cache/clipcore/data``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "clipcore" / "data"


class TooLarge(DataError):
    """The objects at a URL (``size`` bytes in all) would not fit the cache's size limit."""

    def __init__(self, what: str, *, size: int, where: str | None = None, fix: str | None = None):
        super().__init__(what, where=where, fix=fix)
        self.size = size


@attrs.frozen
class Storage:
    """Where remote data is cached, how much, and the options of every store's filesystem."""

    cache_dir: Path
    limit_bytes: int
    options: dict[str, Any] = attrs.field(factory=dict)

    @classmethod
    def of(cls, dataset: Any) -> Storage:
        """The storage a ``dataset`` spec section configures (``cache_dir``, ``cache_size_gb``,
        ``storage_options``)."""
        folder = Path(dataset.cache_dir).expanduser() if dataset.cache_dir else default_cache_dir()
        return cls(folder, int(dataset.cache_size_gb * 2**30), dict(dataset.storage_options))

    def local(self, path: str, key: str) -> Path:
        """A local path holding what ``path`` names (``key``: the config key it came from)."""
        if not is_url(path):
            return Path(path.removeprefix("file://")).expanduser()
        remote = _Remote(path, key, self.options)
        kind, objects = remote.listing()
        total = sum(size for size, _ in objects.values())
        if total > self.limit_bytes:
            raise TooLarge(f"{path} holds {_size(total)}, more than the cache's limit of {_size(self.limit_bytes)}",
                           size=total, where=key, fix=f"raise dataset.cache_size_gb (the cache is {self.cache_dir})")
        entry = self._entry(path.rstrip("/"))
        with self._locked(entry, key):
            fetched = _Entry(entry, remote).sync(kind, objects)
            _hold(entry)
        if fetched:
            self._evict()
        data = entry / "data"
        return data / next(iter(objects)) if kind == "file" else data

    def folder(self, path: str, key: str) -> Path:
        """A local folder holding what ``path`` names: a folder, or an archive's members (unpacked
        into the cache once per archive content)."""
        local = self.local(path, key)
        if local.is_dir() or not local.name.endswith(ARCHIVE_SUFFIXES):
            return local
        try:
            stat = local.stat()
        except OSError:
            raise DataError(f"{path} does not exist", where=key, fix="point it at a folder or a .tar/.tar.gz archive"
                            ) from None
        entry = self._entry(f"{local.resolve()}:{stat.st_size}:{stat.st_mtime_ns}", prefix="unpacked-")
        with self._locked(entry, key):
            unpacked = not (entry / MANIFEST).is_file()
            if unpacked:
                _unpack(local, entry, path, key)
            os.utime(entry / MANIFEST)  # last use, for the eviction order
            _hold(entry)
        if unpacked:
            self._evict()
        return entry / "data"

    def open(self, url: str, key: str) -> IO[bytes]:
        """``url`` opened for reading in place: a seek and read is one range request (plus a 64 KiB
        read-ahead)."""
        return _Remote(url, key, self.options).open()

    def _entry(self, identity: str, prefix: str = "") -> Path:
        """The cache entry folder of ``identity`` (a URL, or an archive's path and version)."""
        return self.cache_dir / f"{prefix}{hashlib.sha256(identity.encode()).hexdigest()[:24]}"

    @contextlib.contextmanager
    def _locked(self, entry: Path, key: str) -> Iterator[None]:
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(f"{entry}.lock")
            try:
                lock.acquire(timeout=0)
            except Timeout:
                log.info("data cache: waiting while another process fills %s (%s)", entry, key)
                lock.acquire()
        except OSError as exc:
            raise DataError(f"the data cache {self.cache_dir} cannot be written ({_os_reason(exc)})",
                            where="dataset.cache_dir", fix=f"set dataset.cache_dir to a folder you can write to "
                                                           f"(needed for {key})") from None
        try:
            yield
        except OSError as exc:
            raise DataError(f"cannot fill the data cache {self.cache_dir} ({_os_reason(exc)})",
                            where="dataset.cache_dir",
                            fix="free space there, lower dataset.cache_size_gb, or set dataset.cache_dir to another "
                                "disk") from None
        finally:
            lock.release()

    def _evict(self) -> None:
        """Remove the least recently used entries that no process uses until the cache fits its limit."""
        entries = []
        for manifest in self.cache_dir.glob(f"*/{MANIFEST}"):
            try:
                entries.append((manifest.stat().st_mtime, manifest.parent, json.loads(manifest.read_text())["bytes"]))
            except (OSError, ValueError, KeyError):  # being replaced, or not ours: leave it
                continue
        total = sum(size for _, _, size in entries)
        for _, folder, size in sorted(entries, key=lambda e: e[0]):
            if total <= self.limit_bytes:
                return
            if _remove_unused(folder):
                total -= size
                log.info("data cache: removed %s (%s) to stay under %s", folder.name, _size(size),
                         _size(self.limit_bytes))
        log.warning("data cache %s holds %s, over its limit of %s: the rest is in use", self.cache_dir,
                    _size(total), _size(self.limit_bytes))


#: ``<entry>.use`` files this process holds a shared lock on (kept open until it ends).
_HELD: dict[Path, int] = {}


def _hold(entry: Path) -> None:
    """Mark ``entry`` as used by this process (and its children) until it ends."""
    if entry not in _HELD:
        fd = os.open(f"{entry}.use", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_SH)
        _HELD[entry] = fd


def _remove_unused(entry: Path) -> bool:
    """Remove ``entry`` unless a process fills or uses it; whether it was removed."""
    try:
        with FileLock(f"{entry}.lock", timeout=0):
            fd = os.open(f"{entry}.use", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            finally:
                os.close(fd)  # releases the exclusive lock, if taken
            shutil.rmtree(entry, ignore_errors=True)
            return True
    except (Timeout, OSError):
        return False


class _Remote:
    """One URL on its filesystem; store errors become DataErrors."""

    def __init__(self, url: str, key: str, options: dict[str, Any]):
        self.url, self.key = url, key
        self.protocol = url.partition("://")[0]
        with self.errors():
            self.fs, self.path = fsspec.core.url_to_fs(url, skip_instance_cache=True, **options)

    def listing(self) -> tuple[str, dict[str, tuple[int, str]]]:
        """``("file", {name: (size, version)})`` for an object, ``("folder", {relative path: ...})``
        for every object under a prefix."""
        with self.errors():
            info = self.fs.info(self.path)
            if info["type"] != "directory":
                return "file", {Path(self.path).name: _meta(info)}
            root = self.path.rstrip("/") + "/"
            found = self.fs.find(self.path, detail=True)
        objects = {name[len(root):]: _meta(i) for name, i in sorted(found.items())
                   if i["type"] != "directory" and name.startswith(root) and not name.endswith("/")}
        if not objects:
            raise DataError(f"{self.url} is an empty folder", where=self.key, fix="check the URL")
        return "folder", objects

    def fetch(self, names: list[str], kind: str, into: Path) -> None:
        """Download ``names`` (relative to the URL) under ``into``, with a progress bar."""
        remote = [self.path if kind == "file" else f"{self.path.rstrip('/')}/{n}" for n in names]
        local = [str(into / n) for n in names]
        for path in local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        with _progress(in_bytes=kind == "file") as bar, self.errors():
            if kind == "file":  # progress in bytes
                self.fs.get_file(remote[0], local[0], callback=_Bar(bar, f"fetching {self.url}"))
            else:  # progress in files
                self.fs.get(remote, local, callback=_Bar(bar, f"fetching {len(names)} files of {self.url}"))

    def open(self) -> IO[bytes]:
        with self.errors():
            return self.fs.open(self.path, "rb", block_size=1 << 16, cache_type="readahead")

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        try:
            yield
        except DataError:
            raise
        except FileNotFoundError:
            raise DataError(f"no object at {self.url}", where=self.key,
                            fix="check the URL (bucket, folder and name) and that the object exists") from None
        except PermissionError as exc:
            if exc.filename:  # a local file: the caller reports it
                raise
            raise DataError(f"access to {self.url} was refused ({exc})", where=self.key,
                            fix=f"check the credentials for {self.protocol}:// "
                                f"({_CREDENTIALS.get(self.protocol, 'see the filesystem package documentation')}) "
                                "or dataset.storage_options") from None
        except OSError as exc:
            if file_system_error(exc) is not None:  # a local write (the cache) failed: the caller reports it
                raise
            raise self._unreachable(exc) from None
        except Exception as exc:  # the stores' clients raise their own types (botocore, aiohttp, ...)
            if isinstance(exc, ImportError) or "protocol not known" in str(exc).lower():
                package = _PACKAGE.get(self.protocol, "the filesystem package fsspec names")
                raise DataError(f"cannot open {self.protocol}:// URLs ({exc})", where=self.key,
                                fix=f"install {package}") from None
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: BaseException) -> DataError:
        endpoint = _ENDPOINT.get(self.protocol)
        return DataError(f"cannot read {self.url} ({type(exc).__name__}: {exc})", where=self.key,
                         fix="check the network and the store's address" + (f": {endpoint}" if endpoint else ""))


class _Entry:
    """A cache entry: ``data/`` (the object, or the folder's objects) and its manifest
    ``{"url", "kind", "objects": {name: [size, version]}, "bytes"}``. Touched on every use."""

    def __init__(self, folder: Path, remote: _Remote):
        self.folder, self.remote = folder, remote
        self.data, self.manifest = folder / "data", folder / MANIFEST

    def sync(self, kind: str, objects: dict[str, tuple[int, str]]) -> bool:
        """Make ``data/`` hold exactly ``objects``; whether anything was fetched."""
        old = self._read()
        stale = [n for n, meta in objects.items() if old.get(n) != meta or not self._holds(n, meta[0])]
        if stale:
            partial = self.folder / f".partial-{os.getpid()}"
            shutil.rmtree(partial, ignore_errors=True)
            try:
                self.remote.fetch(stale, kind, partial)
                for name in stale:
                    got = (partial / name).stat().st_size
                    if got != objects[name][0]:
                        raise DataError(f"fetched {got} bytes of {self.remote.url}/{name}, the store lists "
                                        f"{objects[name][0]}", where=self.remote.key,
                                        fix="run again; if it persists, the object changed while being read")
                    (self.data / name).parent.mkdir(parents=True, exist_ok=True)
                    os.replace(partial / name, self.data / name)
            finally:
                shutil.rmtree(partial, ignore_errors=True)
            log.info("data cache: fetched %d of %d objects of %s into %s", len(stale), len(objects),
                     self.remote.url, self.folder)
        for name in set(old) - set(objects):
            (self.data / name).unlink(missing_ok=True)
        self._write(kind, objects)
        return bool(stale)

    def _holds(self, name: str, size: int) -> bool:
        try:
            return (self.data / name).stat().st_size == size
        except OSError:
            return False

    def _read(self) -> dict[str, tuple[int, str]]:
        try:
            return {n: tuple(m) for n, m in json.loads(self.manifest.read_text())["objects"].items()}
        except (OSError, ValueError, KeyError):
            return {}

    def _write(self, kind: str, objects: dict[str, tuple[int, str]]) -> None:
        _write_json(self.manifest, {"url": self.remote.url, "kind": kind, "objects": objects,
                                    "bytes": sum(size for size, _ in objects.values())})


def _unpack(archive: Path, entry: Path, path: str, key: str) -> None:
    """Extract ``archive`` (regular files only, no path outside it) into ``entry/data``, then write
    the manifest; nothing is left behind on failure."""
    partial = entry / f".partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    try:
        with tarfile.open(archive) as members:
            files = [m for m in members.getmembers() if m.isreg()]
            members.extractall(partial, members=files, filter="data")
        shutil.rmtree(entry / "data", ignore_errors=True)
        os.replace(partial, entry / "data")
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is not a readable tar archive ({type(exc).__name__}: {exc})", where=key,
                        fix="check the file (`tar tf` lists it), or point the key at a folder") from None
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    _write_json(entry / MANIFEST, {"url": path, "kind": "unpacked", "objects": {}, "bytes": sum(m.size for m in files)})


def _write_json(path: Path, record: dict[str, Any]) -> None:
    """Write ``record`` to ``path`` atomically."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(record))
    os.replace(temporary, path)


def _meta(info: dict[str, Any]) -> tuple[int, str]:
    version = next((str(info[k]) for k in _VERSION_FIELDS if info.get(k)), "")
    return int(info.get("size") or 0), version


def _os_reason(exc: OSError) -> str:
    err = file_system_error(exc)
    return err.what.removeprefix("cannot write: ") if err else f"{type(exc).__name__}: {exc}"


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def _progress(in_bytes: bool) -> Progress:
    counts = (DownloadColumn(), TransferSpeedColumn()) if in_bytes else (MofNCompleteColumn(),)
    return Progress(TextColumn("{task.description}"), BarColumn(), *counts, console=Console(stderr=True))


class _Bar(Callback):
    """fsspec's transfer callback driving one rich progress task."""

    def __init__(self, progress: Progress, description: str):
        super().__init__()
        self.progress = progress
        self.task = progress.add_task(description, total=None)

    def set_size(self, size: int) -> None:
        super().set_size(size)
        self.progress.update(self.task, total=size)

    def call(self, *args: Any, **kwargs: Any) -> None:
        self.progress.update(self.task, completed=self.value)
