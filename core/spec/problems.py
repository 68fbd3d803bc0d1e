"""Collecting spec problems and raising them as one :class:`core.errors.ConfigError`."""

from __future__ import annotations

from typing import Sequence

import attrs

from core.errors import ConfigError


@attrs.frozen
class Problem:
    """One thing wrong with a spec: the dotted ``key`` it concerns, what is wrong, how to fix it."""

    key: str
    what: str
    fix: str | None = None


def raise_problems(problems: Sequence[Problem], source: str | None = None) -> None:
    """Raise one ConfigError for all ``problems`` (nothing when there are none). ``source`` names
    the spec file (or "command line")."""
    if not problems:
        return
    if len(problems) == 1:
        (p,) = problems
        where = f"{source}: {p.key}" if source and p.key else (p.key or source)
        raise ConfigError(p.what, where=where, fix=p.fix)
    lines = [f"{len(problems)} problems"]
    for p in problems:
        lines.append(f"  - {p.key}: {p.what}" if p.key else f"  - {p.what}")
        if p.fix:
            lines.append(f"      fix: {p.fix}")
    raise ConfigError("\n".join(lines), where=source)
