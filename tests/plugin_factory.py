"""Build fake plugins for tests: real installed distributions (dist-info + entry points) in a
temporary folder on sys.path, or in-memory modules registered directly."""

from __future__ import annotations

import textwrap
import types
from pathlib import Path

from core.registry import Provider


def make_distribution(root: Path, name: str, version: str, modules: dict[str, str]) -> Path:
    """Write ``modules`` ({entry-point name: module source}) as an installed distribution
    ``name`` ``version`` whose entry points in ``clipcore.plugins`` point at them."""
    root.mkdir(parents=True, exist_ok=True)
    package = name.replace("-", "_")
    lines = ["[clipcore.plugins]"]
    for ep_name, source in modules.items():
        (root / f"{package}_{ep_name}.py").write_text(textwrap.dedent(source))
        lines.append(f"{ep_name} = {package}_{ep_name}")
    info = root / f"{package}-{version}.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n")
    return root


def module(name: str, source: str) -> types.ModuleType:
    """An in-memory plugin module from source."""
    mod = types.ModuleType(name)
    exec(textwrap.dedent(source), mod.__dict__)
    return mod


def fake(name: str, source: str, version: str = "1.0") -> tuple[Provider, types.ModuleType]:
    """A (provider, module) pair for ``load_registry(plugins=[...])``."""
    return Provider(name, f"fake-{name}", version), module(name, source)


TINY_BACKBONE = """
from core import hookimpl
from core.backbone import BackboneFamily
from clipcore_example_backbone.plugin import tiny, build

@hookimpl
def register_backbones(register):
    register(BackboneFamily(name={family!r}, types={types!r}, build=build, tiny=tiny,
                            description="a fake family"))
"""
