"""Checks every plugin passes: it loads, it registers something, its metadata and config
sections are well-formed. Each raises ``AssertionError`` naming the plugin and the rule."""

from __future__ import annotations

import re

import attrs

from core.spec.config import ExperimentConfig
from core.registry import Entry, Registry

NAME = re.compile(r"^[a-z0-9][a-z0-9_.:+-]*$")


def check_loads(plugin: str, registry: Registry) -> None:
    """Rule: the plugin imports and its hooks run without raising."""
    for failure in registry.failures:
        if failure.plugin == plugin:
            raise AssertionError(f"plugin {plugin!r} failed to load: {failure.error}")
    assert any(p.plugin == plugin for p in registry.plugins), (
        f"plugin {plugin!r} is not installed in the 'clipcore.plugins' entry-point group")


def check_registers_something(plugin: str, registry: Registry) -> None:
    """Rule: a plugin registers at least one backbone, loss, dataset format, exporter or builder."""
    assert any(e.provider.plugin == plugin for t in registry.entries.values() for e in t.values()), (
        f"plugin {plugin!r} registers nothing: implement at least one register_* hook")


def check_distribution_metadata(plugin: str, registry: Registry) -> None:
    """Rule: the plugin comes from a distribution with a name and a version."""
    provider = next((p for p in registry.plugins if p.plugin == plugin), None)
    assert provider is not None, f"plugin {plugin!r} is not loaded"
    assert provider.distribution not in ("", "?") and provider.version not in ("", "?"), (
        f"plugin {plugin!r} has no distribution name/version: ship it as a package with a version")


def check_entry_metadata(entry: Entry, registry: Registry) -> None:
    """Rule: names are lower-case identifiers and every entry has a description."""
    where = f"plugin {entry.provider.plugin!r}, {entry.kind[:-1]} {entry.name!r}"
    assert NAME.match(entry.name), f"{where}: name must match {NAME.pattern}"
    assert entry.obj.description.strip(), f"{where}: description is empty (shown by `core plugins`)"
    for model_type in getattr(entry.obj, "types", ()):
        assert NAME.match(model_type.lower()) and " " not in model_type, (
            f"{where}: model type {model_type!r} must be one word")


def check_config_sections(entry: Entry, registry: Registry) -> None:
    """Rule: plugin-owned config sections sit under an existing section, do not shadow a core
    field, and have a default for every field."""
    where = f"plugin {entry.provider.plugin!r}, {entry.kind[:-1]} {entry.name!r}"
    for section in entry.obj.config_sections:
        *parents, leaf = section.path.split(".")
        assert parents, f"{where}: config section {section.path!r} must be nested (e.g. 'model.{leaf}')"
        node = ExperimentConfig()
        for part in parents:
            child = getattr(node, part, None)
            assert attrs.has(type(child)), f"{where}: config section {section.path!r}: {part!r} is not a core section"
            node = child
        assert leaf not in attrs.fields_dict(type(node)), (
            f"{where}: config section {section.path!r} shadows the core field {section.path!r}")
        try:
            section.cls()
        except TypeError as exc:
            raise AssertionError(f"{where}: config section {section.path!r}: every field needs a default ({exc})")


PLUGIN_CHECKS = [check_loads, check_registers_something, check_distribution_metadata]
ENTRY_CHECKS = [check_entry_metadata, check_config_sections]
