"""The spec as a JSON Schema (draft 2020-12), generated from the same attrs classes as the loader.

Every table is an object that allows only its own fields and the plugin sections under it (as the
loader does); each field carries its type, its default, a description (the text of its TOML
comments in ``core get-spec``), its enum (``Literal`` types) and its range (the JSON Schema form of
its :class:`core.fields.Rule`, where JSON Schema can state it). Fields without a default are
required. A field naming a registered plugin (``train.loss_type``, ``dataset.*.type``) gets the
enum of the installed names; ``model.type`` stays a string (a family may accept open-ended names,
``family:<variant>``). An unset optional field may be given as ``null`` (as ``key=null`` on the command line).
The loader stays the stricter judge in one place: JSON Schema counts ``3.0`` as an integer, and
the loader (which reads TOML, where ``3.0`` is a float) does not.
"""

from __future__ import annotations

import types
import typing
from typing import Any, Literal

import attrs

from core.spec.config import ExperimentConfig
from core.spec.render import comment_text
from core.spec.schema import child_sections, default_of, fields_of, is_required, join_path

DRAFT = "https://json-schema.org/draft/2020-12/schema"
_SCALARS = {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}


def json_schema(plugin_sections: dict[str, type], *, title: str, first: tuple[str, ...] = (),
                names: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The whole spec's schema; ``first`` lists top-level sections to put first; ``names`` gives
    string fields that name a registered plugin (``train.loss_type``) their enum of installed names."""
    root = {"$schema": DRAFT, "title": title, **table_schema(ExperimentConfig, "", plugin_sections, names or {})}
    properties = root["properties"]
    root["properties"] = {k: properties[k] for k in (*[f for f in first if f in properties],
                                                     *[k for k in properties if k not in first])}
    return root


def table_schema(cls: type, path: str, plugin_sections: dict[str, type],
                 names: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """An object schema for the table ``cls`` at ``path`` and the plugin sections under it."""
    names = names or {}
    properties = {f.name: field_schema(f, join_path(path, f.name), plugin_sections, names) for f in fields_of(cls)}
    for name, section in child_sections(plugin_sections, path).items():
        doc = (section.__doc__ or "").strip().split("\n")[0]
        properties[name] = {**table_schema(section, join_path(path, name), plugin_sections, names),
                            "description": doc or f"Plugin-owned section [{join_path(path, name)}]."}
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    required = [f.name for f in fields_of(cls) if is_required(f)]
    if required:
        schema["required"] = required
    return schema


def field_schema(f: attrs.Attribute, path: str, plugin_sections: dict[str, type],
                 names: dict[str, list[str]]) -> dict[str, Any]:
    schema = type_schema(f.type, path, plugin_sections, names)
    if path in names:
        schema["enum"] = names[path]
    rule = getattr(f.validator, "schema", None)
    if rule:
        schema = {"allOf": [schema, rule]} if "anyOf" in schema and "anyOf" in rule else _merge(schema, rule)
    default = default_of(f)
    if default is not attrs.NOTHING and default is not None and not attrs.has(type(default)):
        schema["default"] = to_json(default)
    description = comment_text(f)
    if description:
        schema["description"] = description
    return schema


def type_schema(tp: Any, path: str, plugin_sections: dict[str, type],
                names: dict[str, list[str]] | None = None) -> dict[str, Any]:
    """The JSON Schema of a declared field type."""
    if tp is Any:
        return {}
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        options = [type_schema(a, path, plugin_sections, names) for a in args]
        kinds = [o["type"] for o in options if o.keys() == {"type"}]
        return {"type": kinds} if len(kinds) == len(options) else {"anyOf": options}
    if origin is list:
        return {"type": "array", "items": type_schema(args[0], path, plugin_sections, names)}
    if origin is dict:
        return {"type": "object", "additionalProperties": type_schema(args[1], path, plugin_sections, names)}
    if attrs.has(tp):
        return table_schema(tp, path, plugin_sections, names)
    raise TypeError(f"{path}: no JSON Schema for the field type {tp!r}")


def _merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``a`` with ``b``'s keywords added (nested schemas such as ``items`` merged)."""
    merged = dict(a)
    for key, value in b.items():
        merged[key] = _merge(a[key], value) if isinstance(a.get(key), dict) and isinstance(value, dict) else value
    return merged


def to_json(value: Any) -> Any:
    """A default as JSON (attrs entries as objects, tuples as arrays)."""
    if attrs.has(type(value)):
        return {k: to_json(v) for k, v in attrs.asdict(value, recurse=False).items() if v is not None}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    return value
