"""One error type for everything a user can fix: what went wrong, where, and how to fix it.

The CLI prints a ``ClipcoreError`` as one message and exits with status 2; any other exception
is a bug in clipcore or a plugin and keeps its traceback.
"""

from __future__ import annotations


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
