"""Kit machinery: collect the checks for a plugin, run them from pytest or the CLI."""

from __future__ import annotations

import traceback
from typing import Callable, Iterable

import attrs

from core.registry import Entry, Registry, get_registry
from core.testing.registration_checks import ENTRY_CHECKS, PLUGIN_CHECKS


class CheckFailure(AssertionError):
    """A plugin broke a rule of the contract; the message names the plugin and the rule."""


@attrs.frozen
class Check:
    """One check bound to its subject: ``id`` is ``<entry>-<check name>``; ``run()`` raises
    :class:`AssertionError` when the rule is broken."""

    id: str
    name: str
    run: Callable[[], None]


def _kind_checks(kind: str) -> list[Callable]:
    """The checks a kind's area contributes (imported lazily so the kit stays light)."""
    import importlib

    module, attr = {
        "backbones": ("core.testing.backbone_checks", "BACKBONE_CHECKS"),
        "losses": ("core.testing.loss_checks", "LOSS_CHECKS"),
        "dataset_formats": ("core.testing.data_checks", "DATA_CHECKS"),
        "loggers": ("core.testing.logger_checks", "LOGGER_CHECKS"),
    }.get(kind, (None, None))
    if module is None:
        return []
    try:
        return list(getattr(importlib.import_module(module), attr))
    except ModuleNotFoundError:
        return []


def checks_for(plugin: str, registry: Registry | None = None) -> list[Check]:
    """Every check that applies to ``plugin`` (an entry-point name) and what it registers."""
    registry = registry or get_registry()
    checks = [Check(f"{plugin}-{fn.__name__}", fn.__name__, _bind(fn, plugin, registry)) for fn in PLUGIN_CHECKS]
    for entry in _entries_of(plugin, registry):
        for fn in ENTRY_CHECKS + _kind_checks(entry.kind):
            checks.extend(_expand(fn, entry, registry))
    return checks


def _entries_of(plugin: str, registry: Registry) -> Iterable[Entry]:
    for table in registry.entries.values():
        for entry in table.values():
            if entry.provider.plugin == plugin:
                yield entry


def _expand(fn: Callable, entry: Entry, registry: Registry) -> list[Check]:
    """A kind check runs once per entry, or once per model type for ``per_type`` backbone checks."""
    if getattr(fn, "per_type", False):
        return [Check(f"{t}-{fn.__name__}", fn.__name__, _bind(fn, entry, t)) for t in entry.obj.types]
    return [Check(f"{entry.name}-{fn.__name__}", fn.__name__, _bind(fn, entry, registry))]


def _bind(fn: Callable, *args) -> Callable[[], None]:
    return lambda: fn(*args)


def run_checks(checks: Iterable[Check]) -> list[tuple[Check, str | None]]:
    """Run checks, returning (check, None) for a pass or (check, message) for a failure."""
    results = []
    for check in checks:
        try:
            check.run()
            results.append((check, None))
        except AssertionError as exc:
            results.append((check, str(exc) or "assertion failed"))
        except Exception as exc:  # a crash inside the plugin is a failure of that check
            tb = traceback.extract_tb(exc.__traceback__)[-1]
            results.append((check, f"raised {type(exc).__name__}: {exc} ({tb.filename}:{tb.lineno})"))
    return results


class PluginConformance:
    """Umbrella test class: subclass it and set ``plugin`` (see :mod:`core.testing`).

    Optional: ``expected_failures = {"check_name": "reason"}``; override ``registry()`` to test a
    plugin that is not installed (return ``core.registry.load_registry(plugins=[...])``).
    """

    plugin: str = ""
    expected_failures: dict[str, str] = {}

    def registry(self) -> Registry:
        return get_registry()

    def pytest_generate_tests(self, metafunc):
        if metafunc.function.__name__ != "test_conformance":
            return
        import pytest

        checks = checks_for(self.plugin, self.registry())
        params = [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(reason=self.expected_failures[c.name],
                                                                        strict=True)]
                               if c.name in self.expected_failures else []) for c in checks]
        metafunc.parametrize("check", params)

    def test_conformance(self, check: Check) -> None:
        check.run()
