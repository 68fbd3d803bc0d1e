"""The PNG figures clipcore writes (training curves, confusion matrices, reliability diagrams, ...):
drawn with matplotlib's non-interactive Agg backend, saved, and closed."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def png(path: Path, *, figsize: tuple[float, float], dpi: int = 100, **subplots: Any) -> Iterator[tuple[Any, Any]]:
    """``with png(path, figsize=...) as (fig, ax):`` draw; on leaving, the figure is laid out, saved
    to ``path`` (its folder made) and closed. Extra arguments go to ``plt.subplots``."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=figsize, **subplots)
    try:
        yield fig, ax
        save(fig, path, dpi=dpi)
    finally:
        plt.close(fig)


def save(fig: Any, path: Path, *, dpi: int = 100) -> Path:
    """Lay out ``fig`` and write it to ``path`` as PNG (its folder made)."""
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
