"""Writing an :class:`core.spec.config.ExperimentConfig` as a complete, commented TOML spec.

Every table and field is written with its help and valid values as comments. A field whose value
is ``None`` is written as a commented-out ``# key = <type>`` line (TOML has no null); an empty
array of tables is written as a commented-out example entry. The text loads back to the same
config.
"""

from __future__ import annotations

import textwrap
from typing import Any, Sequence

import attrs
import tomli_w

from core.spec.config import ExperimentConfig
from core.spec.schema import (child_sections, describe, fields_of, is_required, rule_text,
                              table_item)

WIDTH = 100


def format_value(value: Any) -> str:
    """A value as a one-line TOML literal (an attrs instance as an inline table of its set fields)."""
    if attrs.has(type(value)):
        value = {k: v for k, v in attrs.asdict(value, recurse=False).items() if v is not None}
    if isinstance(value, list):
        return "[" + ", ".join(format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {format_value(v)}" for k, v in value.items()) + "}"
    return tomli_w.dumps({"v": value}).partition("=")[2].strip()


def _key(name: str) -> str:
    return tomli_w.dumps({name: 0}).partition("=")[0].strip()


def comment(text: str) -> list[str]:
    return [f"# {line}" for line in textwrap.wrap(text, WIDTH - 2, break_on_hyphens=False)] if text else []


def render(cfg: ExperimentConfig, plugin_sections: dict[str, type], *, header: Sequence[str] = (),
           first: Sequence[str] = ()) -> str:
    """The whole spec as TOML text. ``header`` lines go on top (as given, each starting with
    ``#``); ``first`` lists top-level sections to write before the others."""
    writer = _Writer(plugin_sections, cfg.plugins, list(header))
    writer.scalars(ExperimentConfig, cfg)
    tables = [f for f in fields_of(ExperimentConfig) if table_item(f.type)]
    tables.sort(key=lambda f: first.index(f.name) if f.name in first else len(first))
    for f in tables:
        writer.field_table(cfg, f, "")
    writer.plugin_tables("")
    return "\n".join(writer.lines).lstrip("\n") + "\n"


def _help(f: attrs.Attribute) -> str:
    return f.metadata.get("help", "")


def comment_text(f: attrs.Attribute) -> str:
    """The text of a field's comments in the spec: its help, then its valid values."""
    return "\n".join(filter(None, (_help(f), _valid(f))))


def _valid(f: attrs.Attribute) -> str:
    kind, rule = describe(f.type), rule_text(f)
    text = f"valid: {kind}" + (f", {rule}" if rule else "")
    if is_required(f):
        text += "; required"
    elif f.default is None:
        text += "; default: unset"
    return text


@attrs.define
class _Writer:
    plugin_sections: dict[str, type]
    plugin_values: dict[str, Any]
    lines: list[str]

    def scalars(self, cls: type, obj: Any) -> None:
        for f in fields_of(cls):
            if table_item(f.type):
                continue
            value = getattr(obj, f.name)
            self.lines += comment(_help(f)) + comment(_valid(f))
            unset = value is None or value == {}  # an empty table stays open for [a.b."key"] tables
            self.lines.append(f"# {_key(f.name)} = {'<' + describe(f.type) + '>' if value is None else '{}'}" if unset
                              else f"{_key(f.name)} = {format_value(value)}")

    def field_table(self, obj: Any, f: attrs.Attribute, parent: str) -> None:
        cls, array = table_item(f.type)
        path = f"{parent}.{f.name}" if parent else f.name
        value = getattr(obj, f.name)
        if not array:
            self.table(path, cls, value, _help(f))
        elif value:
            for item in value:
                self.table(path, cls, item, _help(f), array=True)
        else:
            self.example_entry(path, cls, _help(f))

    def table(self, path: str, cls: type, obj: Any, help: str, array: bool = False) -> None:
        self.lines += [""] + comment(help) + [f"[[{path}]]" if array else f"[{path}]"]
        self.scalars(cls, obj)
        for f in fields_of(cls):
            if table_item(f.type):
                self.field_table(obj, f, path)
        if not array:
            self.plugin_tables(path)

    def plugin_tables(self, parent: str) -> None:
        for name, cls in child_sections(self.plugin_sections, parent).items():
            path = f"{parent}.{name}" if parent else name
            value = self.plugin_values.get(path)
            summary = (cls.__doc__ or "").strip().split("\n")[0] if cls.__doc__ else ""
            self.table(path, cls, cls() if value is None else value,
                       summary or f"Plugin-owned section, validated by {cls.__module__}.{cls.__qualname__}.")

    def example_entry(self, path: str, cls: type, help: str) -> None:
        self.lines += [""] + comment(help) + [f"# Add one [[{path}]] table per entry, for example:",
                                              f"# [[{path}]]"]
        for f in fields_of(cls):
            unset = is_required(f) or f.default is None
            value = f"<{describe(f.type)}>" if unset else format_value(f.default)
            note = "required. " if is_required(f) else ""
            self.lines.append(f"# {_key(f.name)} = {value}  # {note}{_help(f)}")
