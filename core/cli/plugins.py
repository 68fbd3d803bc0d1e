"""List installed clipcore plugins (distribution, version, what each registers under every
hook), or run the conformance kit against one: `core plugins check NAME`.

Environment: CLIPCORE_PLUGINS=a,b loads only those entry points; CLIPCORE_DISABLE_PLUGINS=a,b
skips them."""

from __future__ import annotations

import argparse
import json

from rich.console import Console
from rich.table import Table

from core.registry import Registry, get_registry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    sub = parser.add_subparsers(dest="plugins_command", metavar="check")
    check = sub.add_parser("check", help="run the conformance kit against one plugin")
    check.add_argument("name", help="the plugin's entry-point name (see `core plugins`)")
    check.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    registry = get_registry()
    if args.plugins_command == "check":
        return _check(registry, args.name, as_json=args.json)
    listing = describe(registry)
    if args.json:
        print(json.dumps(listing, indent=2))
    else:
        _print_table(listing)
    return 0


def describe(registry: Registry) -> dict:
    """Plugins with what they register, and the plugins that failed to load (the ``--json`` shape).

    ``registers`` maps each hook kind to objects ``{"name", "types", "open_ended"}``: ``types`` are
    a backbone family's model types (empty for other kinds), ``open_ended`` whether the family also
    accepts names it matches at run time (``mine:<variant>``)."""
    plugins = []
    for provider in registry.plugins:
        registers = {}
        for kind, table in registry.entries.items():
            items = [{"name": entry.name, "types": list(getattr(entry.obj, "types", ())),
                      "open_ended": getattr(entry.obj, "matches", None) is not None}
                     for entry in table.values() if entry.provider == provider]
            if items:
                registers[kind] = items
        plugins.append({"plugin": provider.plugin, "distribution": provider.distribution,
                        "version": provider.version, "builtin": provider.builtin, "registers": registers})
    failures = [{"plugin": f.plugin, "distribution": f.distribution, "error": f.error}
                for f in registry.failures]
    return {"plugins": plugins, "failures": failures}


def _label(item: dict) -> str:
    """``name (type, ..., and other names it matches)`` for the table."""
    if not item["types"]:
        return item["name"]
    open_ended = ", and other names it matches" if item["open_ended"] else ""
    return f"{item['name']} ({', '.join(item['types'])}{open_ended})"


def _print_table(listing: dict) -> None:
    console = Console()
    table = Table(title="clipcore plugins", show_lines=True)
    for column in ("plugin", "distribution", "version", "registers"):
        table.add_column(column, overflow="fold")
    for p in listing["plugins"]:
        registers = "\n".join(f"[bold]{kind.replace('_', ' ')}[/]: {'; '.join(map(_label, items))}"
                               for kind, items in p["registers"].items())
        table.add_row(p["plugin"], p["distribution"], p["version"], registers)
    console.print(table)
    for f in listing["failures"]:
        console.print(f"[red]failed to load[/] {f['plugin']} ({f['distribution']}): {f['error']}",
                      markup=True, highlight=False, soft_wrap=True)


def _check(registry: Registry, name: str, *, as_json: bool) -> int:
    from core.errors import PluginError
    from core.testing import checks_for, run_checks

    if not any(p.plugin == name for p in registry.plugins) and not any(f.plugin == name for f in registry.failures):
        known = ", ".join(sorted(p.plugin for p in registry.plugins))
        raise PluginError(f"no plugin named {name!r} is installed", where="core plugins check",
                          fix=f"installed plugins: {known}")
    results = run_checks(checks_for(name, registry))
    failed = [(c, msg) for c, msg in results if msg]
    if as_json:
        print(json.dumps([{"check": c.id, "passed": msg is None, "message": msg} for c, msg in results], indent=2))
    else:
        table = Table(title=f"conformance of {name}")
        table.add_column("check")
        table.add_column("result", overflow="fold")
        for check, msg in results:
            table.add_row(check.id, "[green]pass[/]" if msg is None else f"[red]FAIL[/] {msg}")
        Console().print(table)
        Console().print(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0
