"""One error type for everything a user can fix: what went wrong, where, and how to fix it.

The CLI prints a ``ClipcoreError`` as one message and exits with status 2; any other exception
is a bug in clipcore or a plugin and keeps its traceback.
"""

from __future__ import annotations

import errno
import os


class ClipcoreError(Exception):
    """A user-facing error.

    ``what`` says what is wrong, ``where`` names the file, config key or plugin involved, and
    ``fix`` says how to fix it. ``str(err)`` joins them into the message the CLI prints.
    """

    def __init__(self, what: str, *, where: str | None = None, fix: str | None = None):
        self.what, self.where, self.fix = what, where, fix
        super().__init__(self.message)

    @property
    def message(self) -> str:
        parts = [f"{self.where}: {self.what}" if self.where else self.what]
        if self.fix:
            parts.append(f"  fix: {self.fix}")
        return "\n".join(parts)


class ConfigError(ClipcoreError):
    """The experiment spec (file, overrides or cross-field rules) is invalid."""


class PluginError(ClipcoreError):
    """A plugin failed to load, registered something invalid, or collided with another plugin."""


class DataError(ClipcoreError):
    """Input data (images, captions, shards, files) is missing or unreadable."""


_FILE_SYSTEM_CAUSES = {
    errno.ENOSPC: "no space left on {device}", errno.EDQUOT: "disk quota exceeded on {device}",
    errno.EROFS: "read-only file system", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
}


def file_system_error(exc: BaseException, path: str | os.PathLike | None = None) -> ClipcoreError | None:
    """The user-facing error for ``exc`` when a file-system condition the user can fix caused it
    (disk full, read-only, permissions, a file where a folder should be), looking through the
    exception's chain (torch reports a full disk as ``unexpected pos``); None otherwise. ``path``
    names the file when the OSError itself does not."""
    seen: BaseException | None = exc
    while seen is not None and not (isinstance(seen, OSError) and seen.errno in _FILE_SYSTEM_CAUSES):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return None
    where = os.fspath(seen.filename if seen.filename is not None else path) if (seen.filename or path) else None
    cause = _FILE_SYSTEM_CAUSES[seen.errno].format(device=mount_point(where) if where else "the device")
    if seen.errno in (errno.ENOSPC, errno.EDQUOT):
        fix = "free space there, or point results_dir (or the output path) at another disk"
    else:
        fix = "choose a folder you can write to (results_dir, or the action's results_dir / output path)"
    return ClipcoreError(f"cannot write: {cause}", where=where, fix=fix)


def mount_point(path: str | os.PathLike) -> str:
    """The mount point of the file system holding ``path`` (or its nearest existing parent)."""
    current = os.path.abspath(os.fspath(path))
    while not os.path.exists(current):
        current = os.path.dirname(current)
    while not os.path.ismount(current):
        current = os.path.dirname(current)
    return current
