"""Declaring config fields: what a config section (core's own, or a plugin's
:class:`core.registry.ConfigSection`) is made of.

A field is ``opt(default, help, validator=...)``: ``help`` is shown by ``core get-spec`` and in
errors. A :class:`Rule` states the valid values; a violation raises :class:`InvalidValue`, which
the spec loader reports with the full key path. A field without a default is required.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

import attrs
from attrs import field

from core.errors import ConfigError


class InvalidValue(ConfigError):
    """A field holds a value outside its valid range; ``key`` is the field name (the loader
    prefixes the section path), ``valid`` describes the valid values."""

    def __init__(self, key: str, value: Any, valid: str):
        self.key, self.value, self.valid = key, value, valid
        super().__init__(f"{value!r} is out of range", where=key, fix=f"valid: {valid}")


@attrs.frozen
class Rule:
    """An attrs validator stating a field's valid values: ``test(value)`` is true when valid and
    ``text`` describes the valid values (shown in errors and in ``core get-spec`` comments).
    ``None`` (an unset optional field) always passes."""

    test: Callable[[Any], bool]
    text: str
    #: The same rule in JSON Schema keywords (``core get-spec --format json-schema``); empty when
    #: JSON Schema cannot state it (the text then goes into the field's description).
    schema: dict[str, Any] = attrs.field(factory=dict, eq=False)

    def __call__(self, instance: Any, attribute: attrs.Attribute, value: Any) -> None:
        if value is not None and not self.test(value):
            raise InvalidValue(attribute.name, value, self.text)


def at_least(low: float) -> Rule:
    return Rule(lambda v: v >= low, f">= {low}", {"minimum": low})


def above(low: float) -> Rule:
    return Rule(lambda v: v > low, f"> {low}", {"exclusiveMinimum": low})


def each_at_least(low: int) -> Rule:
    return Rule(lambda v: all(x >= low for x in v), f"every item >= {low}", {"items": {"minimum": low}})


def opt(default: Any, help: str, *, path: Literal["file", "dir", "any"] | None = None, **kw: Any) -> Any:
    """A config field with its documentation. ``path`` marks a local path that must exist when the
    section is in use (``core validate`` and every action check it up front; URLs are skipped)."""
    metadata = {"help": help, **({"path": path} if path else {})}
    if isinstance(default, (list, dict)):
        value = default
        return field(factory=lambda: type(value)(value), metadata=metadata, **kw)
    return field(default=default, metadata=metadata, **kw)


def section(cls: type, help: str) -> Any:
    """A nested config section."""
    return field(factory=cls, metadata={"help": help})


def entries(cls: type, help: str) -> Any:
    """A list of tables (``[[dataset.train.datasets]]``)."""
    return field(factory=list, metadata={"help": help, "item_type": cls})
