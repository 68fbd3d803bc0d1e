"""Introspection of the attrs config schema, shared by the spec loader (:mod:`core.spec.load`), the
spec writer (:mod:`core.spec.render`) and the TAO converter (:mod:`core.spec.tao`).

A *table* is an attrs class at a dotted path: a section (``train.optim``), an entry of an array
of tables (``dataset.train.datasets``) or a plugin-owned section (``model.mine``, see
:class:`core.registry.ConfigSection`). Plugin sections are passed in as ``{path: attrs class}``.
"""

from __future__ import annotations

import functools
import types
import typing
from typing import Any, Iterator, Literal

import attrs

from core.spec.config import ExperimentConfig

#: Root fields that are not written by users: plugin sections live at their own dotted paths.
INTERNAL_ROOT_FIELDS = ("plugins",)


@attrs.frozen
class Table:
    path: str  # dotted; "" for the root
    cls: type
    array: bool = False  # an entry of an array of tables ([[path]])

    @property
    def label(self) -> str:
        if not self.path:
            return "the top level"
        return f"[[{self.path}]]" if self.array else f"[{self.path}]"


@functools.cache
def fields_of(cls: type) -> tuple[attrs.Attribute, ...]:
    """The user-facing fields of an attrs class, with their types resolved."""
    attrs.resolve_types(cls)
    skip = INTERNAL_ROOT_FIELDS if cls is ExperimentConfig else ()
    return tuple(f for f in attrs.fields(cls) if f.name not in skip)


def field_named(cls: type, name: str) -> attrs.Attribute | None:
    return next((f for f in fields_of(cls) if f.name == name), None)


def is_required(f: attrs.Attribute) -> bool:
    return f.default is attrs.NOTHING


def table_item(tp: Any) -> tuple[type, bool] | None:
    """``(cls, array)`` when ``tp`` is a table (attrs class) or an array of tables, else None."""
    if attrs.has(tp):
        return tp, False
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if attrs.has(item):
            return item, True
    return None


def walk_tables(plugin_sections: dict[str, type], cls: type = ExperimentConfig,
                path: str = "", array: bool = False) -> Iterator[Table]:
    """Every table of the schema, parents before children, plugin sections after their parent."""
    yield Table(path, cls, array)
    for f in fields_of(cls):
        sub = table_item(f.type)
        if sub:
            yield from walk_tables(plugin_sections, sub[0], join_path(path, f.name), sub[1])
    for sub_path, sub_cls in plugin_sections.items():
        if parent_path(sub_path) == path:
            yield from walk_tables(plugin_sections, sub_cls, sub_path)


def parent_path(path: str) -> str:
    return path.rpartition(".")[0]


def child_sections(plugin_sections: dict[str, type], path: str) -> dict[str, type]:
    """Plugin sections directly under ``path``, by their last path component."""
    return {p.rpartition(".")[2]: c for p, c in plugin_sections.items() if parent_path(p) == path}


def key_locations(name: str, plugin_sections: dict[str, type]) -> list[Table]:
    """The tables that have a field called ``name`` (to tell a user where a misplaced key belongs)."""
    return [t for t in walk_tables(plugin_sections) if field_named(t.cls, name) is not None]


def all_keys(plugin_sections: dict[str, type]) -> set[str]:
    return {f.name for t in walk_tables(plugin_sections) for f in fields_of(t.cls)}


def type_at(parts: list[str], plugin_sections: dict[str, type]) -> Any | None:
    """The declared type at a dotted key (numeric parts index arrays), or None when unknown."""
    return _resolve(parts, plugin_sections)[0]


def field_at(parts: list[str], plugin_sections: dict[str, type]) -> attrs.Attribute | None:
    """The attrs field a dotted key names (None for list items, plugin sections, unknown keys)."""
    return _resolve(parts, plugin_sections)[1]


def default_of(f: attrs.Attribute) -> Any:
    """A field's default value (a fresh one for factories); attrs.NOTHING when required."""
    return f.default.factory() if isinstance(f.default, attrs.Factory) else f.default


def join_path(path: str, name: Any) -> str:
    """``path.name`` (``name`` alone at the root)."""
    return f"{path}.{name}" if path else str(name)


def _resolve(parts: list[str], plugin_sections: dict[str, type]) -> tuple[Any, attrs.Attribute | None]:
    tp: Any = ExperimentConfig
    attribute = None
    path = ""
    for part in parts:
        attribute = None
        if typing.get_origin(tp) is list:
            if not part.isdigit():
                return None, None
            (tp,) = typing.get_args(tp)
        elif attrs.has(tp):
            attribute = field_named(tp, part)
            sections = child_sections(plugin_sections, path)
            if attribute is not None:
                tp = attribute.type
            elif part in sections:
                tp = sections[part]
            else:
                return None, None
            path = join_path(path, part)
        else:
            return None, None
    return tp, attribute


# --------------------------------------------------------------------------- value types
def members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def fits(value: Any, tp: Any) -> bool:
    """Whether a TOML value has the declared type, strictly: no bool for int, no str for numbers,
    ints are accepted as floats; tables and arrays of tables only check the container."""
    if tp is Any:
        return True
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    origin = typing.get_origin(tp)
    if origin is Literal:
        return any(value == c and type(value) is type(c) for c in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return any(fits(value, m) for m in typing.get_args(tp))
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and (attrs.has(item) or all(fits(v, item) for v in value))
    if origin is dict or attrs.has(tp):
        return isinstance(value, dict)
    return False


def accepts_str(tp: Any) -> bool:
    return str in members(tp)


def choices(tp: Any) -> tuple[Any, ...]:
    """The valid values of a Literal (or optional Literal) type; empty for other types."""
    for m in members(tp):
        if typing.get_origin(m) is Literal:
            return typing.get_args(m)
    return ()


_NAMES = {bool: "true | false", int: "integer", float: "number", str: "string"}
_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def describe(tp: Any) -> str:
    """A short human description of a type: ``integer``, ``"adamw" | "lamb"``, ``list of numbers``."""
    kinds = [m for m in members(tp) if m is not type(None)]
    parts = []
    for m in kinds:
        if m in _NAMES:
            parts.append(_NAMES[m])
        elif typing.get_origin(m) is Literal:
            parts.append(" | ".join(f'"{c}"' if isinstance(c, str) else str(c) for c in typing.get_args(m)))
        elif typing.get_origin(m) is list:
            (item,) = typing.get_args(m)
            parts.append(f"list of {_PLURALS.get(item, 'tables')}")
        elif attrs.has(m):
            parts.append("table")
        else:
            parts.append(getattr(m, "__name__", str(m)))
    return " | ".join(parts)


def rule_text(f: attrs.Attribute) -> str | None:
    """The text of a field's :class:`core.spec.config.Rule` validator, if it has one."""
    return getattr(f.validator, "text", None)
