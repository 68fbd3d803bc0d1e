"""The architecture, enforced: ``core``'s top level is the plugin API (``core.__all__``), plugins use
only that, core's subpackages import only downward, and core names none of the built-in plugins."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

import core
from core.registry import get_registry

ROOT = Path(__file__).resolve().parents[2]
PLUGIN_DIRS = ("backbones", "losses", "plugins", "exporters", "deploy", "examples")
#: core's subpackages from the bottom up; a module may import the top level, its own subpackage and
#: subpackages further down (``__main__`` entry points may also import the command line).
LAYERS = {"spec": 1, "runtime": 2, "eval": 3, "train": 4, "testing": 4, "hpo": 5, "cli": 6}
BUILTIN_PACKAGES = {"backbones", "losses", "plugins", "exporters", "deploy", "clipcore_example_backbone"}
#: Registered built-in names that are also TAO's generic words (``loss_type = "clip"``,
#: ``dataset.train.type = "custom"``, ``export.onnx_file``): not searched for.
GENERIC_WORDS = {"clip", "custom", "onnx"}
#: TAO's defaults, which core's schema must keep (``model.type`` and ``train.loss_type``), and the
#: name of TAO's W&B table, which convert-spec reads.
TAO_DEFAULTS = {'"siglip2-so400m-patch16-256"', '"siglip"', '"wandb"'}


def imports(path: Path) -> list[tuple[int, str, list[str]]]:
    """``(line, module, names)`` of every import in ``path`` (function-level ones included), except
    those under ``if TYPE_CHECKING:``, which create no dependency at run time."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                   and getattr(node.test, "id", None) == "TYPE_CHECKING" for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module, [alias.name for alias in node.names]))
    return found


def python_files(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py") if ".venv" not in p.parts)


def layer(module_path: Path) -> str | None:
    """The core subpackage of a file under core/ (None: the top level)."""
    parts = module_path.relative_to(ROOT / "core").parts
    return parts[0] if len(parts) > 1 else None


def test_plugins_import_only_the_public_api():
    wrong = []
    for path in python_files(*PLUGIN_DIRS):
        for line, module, names in imports(path):
            where = f"{path.relative_to(ROOT)}:{line}"
            if module == "core":
                wrong += [f"{where}: core.{n} is not in core.__all__" for n in names if n not in core.__all__]
            elif module.startswith("core.") and module != "core.testing":
                wrong.append(f"{where}: imports {module} (internal); use `from core import ...`")
    assert not wrong, "\n".join(wrong)


def test_core_subpackages_import_only_downward():
    wrong = []
    for path in python_files("core"):
        own = layer(path)
        rank = LAYERS.get(own, 0) if own else 0
        for line, module, _ in imports(path):
            top = module.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}"
            if top in BUILTIN_PACKAGES:
                wrong.append(f"{where}: core imports the built-in plugin package {module}")
            if top != "core" or module == "core":
                continue
            target = module.split(".")[1]
            if target not in LAYERS or target == own:
                continue
            if path.name == "__main__.py" and target == "cli":
                continue
            if LAYERS[target] >= rank:
                wrong.append(f"{where}: {own or 'the top level'} imports {module} (layer {target} is not below it)")
    assert not wrong, "\n".join(wrong)


def builtin_names() -> set[str]:
    """Every name the built-in plugins register (plugins, families, model types, losses, formats,
    exporters, engine builders), lower-cased."""
    registry = get_registry()
    names = {p.plugin for p in registry.plugins if p.builtin}
    for table in registry.entries.values():
        for entry in table.values():
            if entry.provider.builtin:
                names.add(entry.name)
                names.update(getattr(entry.obj, "types", ()))
    return {n.lower() for n in names} - GENERIC_WORDS


def builtin_pattern() -> re.Pattern:
    names = sorted(builtin_names(), key=len, reverse=True)
    return re.compile(r"(?<![\w-])(" + "|".join(map(re.escape, names)) + r")(?![\w-])", re.IGNORECASE)


def test_core_names_no_builtin_plugin():
    assert {"siglip2", "radio", "openclip", "wds", "tensorrt", "siglip"} <= builtin_names()
    pattern = builtin_pattern()
    found = []
    for path in python_files("core"):
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
            if tok.type not in (tokenize.NAME, tokenize.STRING, tokenize.COMMENT) or tok.string in TAO_DEFAULTS:
                continue
            for match in pattern.finditer(tok.string):
                found.append(f"{path.relative_to(ROOT)}:{tok.start[0]}: {match[0]!r}")
    assert not found, "core names built-in plugins:\n" + "\n".join(found)


@pytest.mark.parametrize("text, bad", [("from backbones.radio import x", True), ("use the radio family", True),
                                       ("cfg.plugins['dataset.train.wds']", True), ("from core import opt", False)])
def test_the_name_check_catches_what_it_should(text, bad):
    assert bool(builtin_pattern().search(text)) is bad
