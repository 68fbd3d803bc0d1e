"""Plugin discovery and the registry of everything plugins provide.

All plugins, built-ins included, come from the ``clipcore.plugins`` entry-point group.
``CLIPCORE_PLUGINS`` (comma-separated entry-point names) loads only those;
``CLIPCORE_DISABLE_PLUGINS`` skips the ones it names. A plugin that fails to import or raises in
a hook, or registers a name another plugin already holds, is recorded in ``Registry.failures``
and reported without taking the others down. Built-in plugins (those of the ``clipcore``
distribution) register first, so a third-party plugin can never displace one: the plugin that
registers a taken name is the one that fails, with both distributions named.
"""

from __future__ import annotations

import difflib
import functools
import os
from importlib import metadata
from types import ModuleType
from typing import Any, Callable, Iterable

import attrs
import pluggy

from core import hookspecs
from core.backbone import BackboneFamily
from core.data import DatasetFormat
from core.errors import PluginError
from core.exporter import EngineBuilder, Exporter
from core.loss import LossSpec
from core.tracking import LoggerSpec

GROUP = "clipcore.plugins"
BUILTIN_DISTRIBUTION = "clipcore"
ENV_ALLOW = "CLIPCORE_PLUGINS"
ENV_BLOCK = "CLIPCORE_DISABLE_PLUGINS"


@attrs.frozen
class ConfigSection:
    """A config table owned by a plugin: ``path`` is its dotted location (``model.mine``, or under any
    core table, e.g. ``dataset.train.mine``) and ``cls`` the attrs class it is structured into (all
    fields with defaults, declared with :func:`core.fields.opt`). The first line of the class's
    docstring is the table's comment in ``core get-spec``. Read it with :meth:`of`."""

    path: str
    cls: type

    def of(self, cfg: Any) -> Any:
        """This section's values in a loaded config: ``cfg.plugins[path]``, or the defaults when the
        config was built without it (``ExperimentConfig()`` in code)."""
        value = getattr(cfg, "plugins", {}).get(self.path)
        return self.cls() if value is None else value


class lazy:
    """A callable that imports ``"module:attr"`` on first call, so a plugin's entry-point module
    can register its functions without importing heavy libraries (transformers, open_clip,
    onnx) at discovery time: ``build=lazy("my_plugin.model:build")``."""

    def __init__(self, target: str):
        self.target = target
        self._fn: Callable | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self._fn is None:
            import importlib

            module, _, attr = self.target.partition(":")
            self._fn = getattr(importlib.import_module(module), attr)
        return self._fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"lazy({self.target!r})"


@attrs.frozen
class Kind:
    """One kind of registrable thing: its hook, the class it must be, and its label."""

    hook: str
    cls: type
    label: str


KINDS = {
    "backbones": Kind("register_backbones", BackboneFamily, "backbone family"),
    "losses": Kind("register_losses", LossSpec, "loss"),
    "dataset_formats": Kind("register_dataset_formats", DatasetFormat, "dataset format"),
    "exporters": Kind("register_exporters", Exporter, "exporter"),
    "engine_builders": Kind("register_engine_builders", EngineBuilder, "engine builder"),
    "loggers": Kind("register_loggers", LoggerSpec, "logger"),
}


@attrs.frozen
class Provider:
    """Who provided an entry: entry-point name, distribution and version."""

    plugin: str
    distribution: str
    version: str

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION


@attrs.frozen
class Entry:
    kind: str
    name: str
    obj: Any
    provider: Provider


@attrs.frozen
class Failure:
    """A plugin that could not be loaded or whose hook raised."""

    plugin: str
    distribution: str
    error: str


@attrs.define
class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    entries: dict[str, dict[str, Entry]] = attrs.field(factory=lambda: {k: {} for k in KINDS})
    plugins: list[Provider] = attrs.field(factory=list)
    failures: list[Failure] = attrs.field(factory=list)

    # -- lookups ------------------------------------------------------------------------
    def get(self, kind: str, name: str, *, key: str) -> Any:
        """The registered object, or a :class:`PluginError` listing the choices (``key`` is the
        config key the name came from)."""
        table = self.entries[kind]
        if name in table:
            return table[name].obj
        raise PluginError(f"unknown {KINDS[kind].label} {name!r}", where=key,
                          fix=_choices_hint(name, table) + self._failure_hint())

    def backbone_for(self, model_type: str) -> BackboneFamily:
        """The family that builds ``model_type`` (exact type name, else a family's ``matches``)."""
        for entry in self.entries["backbones"].values():
            if model_type in entry.obj.types:
                return entry.obj
        for entry in self.entries["backbones"].values():
            if entry.obj.matches is not None and entry.obj.matches(model_type):
                return entry.obj
        raise PluginError(f"unknown model type {model_type!r}", where="model.type",
                          fix=_choices_hint(model_type, self.model_types()) + self._failure_hint())

    def for_suffix(self, kind: str, path: str | os.PathLike, *, key: str, verb: str = "writes") -> Any:
        """The exporter or engine builder (``kind``) whose ``suffixes`` include ``path``'s suffix;
        ``verb`` says what the user wants done with the file, for the error message."""
        suffix = os.path.splitext(os.fspath(path))[1]
        table = self.entries[kind]
        for entry in table.values():
            if suffix in entry.obj.suffixes and (verb == "writes" or entry.obj.open_runner is not None):
                return entry.obj
        known = sorted({s for e in table.values() for s in e.obj.suffixes})
        raise PluginError(f"no installed {KINDS[kind].label} {verb} {suffix or 'suffix-less'} files: {os.fspath(path)}",
                          where=key, fix="known suffixes: " + (", ".join(known) or "none (install its plugin)"))

    def model_types(self) -> list[str]:
        return [t for e in self.entries["backbones"].values() for t in e.obj.types]

    def config_sections(self) -> dict[str, ConfigSection]:
        """Every plugin-owned config section, by dotted path."""
        out = {}
        for table in self.entries.values():
            for entry in table.values():
                for section in getattr(entry.obj, "config_sections", ()):
                    out[section.path] = section
        return out

    def _failure_hint(self) -> str:
        if not self.failures:
            return ""
        names = ", ".join(f.plugin for f in self.failures)
        return f" (plugins that failed to load: {names}; see `core plugins`)"

    # -- registration -------------------------------------------------------------------
    def add(self, kind: str, obj: Any, provider: Provider) -> None:
        spec = KINDS[kind]
        if not isinstance(obj, spec.cls):
            raise PluginError(
                f"{spec.hook} received {type(obj).__name__}, expected "
                f"{spec.cls.__module__}.{spec.cls.__name__}", where=f"plugin {provider.plugin!r}",
                fix=f"call register({spec.cls.__name__}(...)) in {spec.hook}")
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name.strip():
            raise PluginError(f"a {spec.label} was registered without a name",
                              where=f"plugin {provider.plugin!r}", fix="give it a non-empty `name`")
        for field in attrs.fields(spec.cls):
            value = getattr(obj, field.name)
            if field.name in ("build", "tiny", "export", "unavailable", "open") and not callable(value):
                raise PluginError(f"{spec.label} {name!r}: `{field.name}` is not callable",
                                  where=f"plugin {provider.plugin!r}", fix=f"pass a function as {field.name}")
        for section in getattr(obj, "config_sections", ()):
            if not isinstance(section, ConfigSection) or not attrs.has(section.cls):
                raise PluginError(f"{spec.label} {name!r}: config_sections must hold ConfigSection(path, attrs class)",
                                  where=f"plugin {provider.plugin!r}", fix="declare ConfigSection('model.x', MyAttrsClass)")
        table = self.entries[kind]
        if name in table:
            other = table[name].provider
            raise PluginError(
                f"{spec.label} {name!r} is registered twice: by plugin {other.plugin!r} "
                f"({other.distribution} {other.version}) and by plugin {provider.plugin!r} "
                f"({provider.distribution} {provider.version})",
                fix=_clash_fix(provider))
        if kind == "backbones":
            self._check_types(obj, provider)
        table[name] = Entry(kind, name, obj, provider)

    def _check_types(self, family: BackboneFamily, provider: Provider) -> None:
        if not family.types or not all(isinstance(t, str) and t for t in family.types):
            raise PluginError(f"backbone family {family.name!r} declares no model types",
                              where=f"plugin {provider.plugin!r}", fix="set types=('my-type', ...)")
        for entry in self.entries["backbones"].values():
            clash = set(entry.obj.types) & set(family.types)
            if clash:
                raise PluginError(
                    f"model type {sorted(clash)[0]!r} is registered twice: by plugin "
                    f"{entry.provider.plugin!r} ({entry.provider.distribution} {entry.provider.version}) and by "
                    f"plugin {provider.plugin!r} ({provider.distribution} {provider.version})",
                    fix=_clash_fix(provider))

    def drop(self, provider: Provider, error: str) -> None:
        """Record ``provider`` as failed and remove everything it registered."""
        for table in self.entries.values():
            for name in [n for n, e in table.items() if e.provider == provider]:
                del table[name]
        if provider in self.plugins:
            self.plugins.remove(provider)
        self.failures.append(Failure(provider.plugin, provider.distribution, error))


def _clash_fix(newcomer: Provider) -> str:
    """The fix for a name clash: the newcomer (never a built-in, which registers first) gives way."""
    return (f"rename it in plugin {newcomer.plugin!r} ({newcomer.distribution}), or disable that plugin with "
            f"{ENV_BLOCK}={newcomer.plugin}")


def _choices_hint(name: str, choices: Iterable[str]) -> str:
    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return hint + ("valid: " + ", ".join(choices) if choices else "none are registered")


# --------------------------------------------------------------------------- loading
def _env_names(var: str) -> set[str] | None:
    value = os.environ.get(var)
    return None if value is None else {n.strip() for n in value.split(",") if n.strip()}


def _provider(ep: metadata.EntryPoint) -> Provider:
    dist = getattr(ep, "dist", None)
    return Provider(ep.name, dist.name if dist else "?", dist.version if dist else "?")


def load_registry(plugins: Iterable[tuple[Provider, ModuleType | object]] | None = None,
                  *, use_entry_points: bool = True) -> Registry:
    """Load plugins into a new :class:`Registry`.

    ``plugins`` adds (provider, module-or-object) pairs beside the entry points (tests and the
    conformance kit use this to register a plugin that is not installed).
    """
    allow, block = _env_names(ENV_ALLOW), _env_names(ENV_BLOCK) or set()
    registry = Registry()
    loaded: list[tuple[Provider, Any]] = []
    if use_entry_points:
        eps = list(metadata.entry_points(group=GROUP))
        if not eps and not plugins:
            raise PluginError(
                f"no clipcore plugins are installed (entry-point group {GROUP!r} is empty)",
                fix="install clipcore with its plugins: `pip install -e .` in the checkout "
                    "(or `pip install clipcore`)")
        seen = set()
        for ep in sorted(eps, key=lambda e: e.name):
            provider = _provider(ep)
            if ep.name in seen or (allow is not None and ep.name not in allow) or ep.name in block:
                continue
            seen.add(ep.name)
            try:
                loaded.append((provider, ep.load()))
            except KeyboardInterrupt:
                raise
            except BaseException as exc:  # noqa: BLE001 - a plugin's SystemExit must not end every command
                registry.failures.append(Failure(ep.name, provider.distribution, f"import failed: {_describe(exc)}"))
    loaded.extend(plugins or ())
    loaded.sort(key=lambda pair: not pair[0].builtin)  # stable: built-ins first, each group in its order

    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    for provider, module in loaded:
        try:
            pm.register(module, name=provider.plugin)
        except Exception as exc:  # pluggy's PluginValidationError and duplicate names
            registry.failures.append(Failure(provider.plugin, provider.distribution, _describe(exc)))
            continue
        problem = _hook_problem(pm, module, provider)
        if problem:
            pm.unregister(name=provider.plugin)
            registry.failures.append(Failure(provider.plugin, provider.distribution, problem))
            continue
        registry.plugins.append(provider)

    for provider, _ in loaded:
        for kind, spec in KINDS.items():
            for impl in getattr(pm.hook, spec.hook).get_hookimpls():
                if impl.plugin_name != provider.plugin or provider not in registry.plugins:
                    continue
                register: Callable[[Any], None] = functools.partial(registry.add, kind, provider=provider)
                try:
                    impl.function(register=register)
                except PluginError as exc:
                    if provider.builtin:
                        raise
                    registry.drop(provider, str(exc))
                except KeyboardInterrupt:
                    raise
                except BaseException as exc:  # noqa: BLE001
                    registry.drop(provider, f"{spec.hook} raised {_describe(exc)}")
    return registry


def _hook_problem(pm: pluggy.PluginManager, module: Any, provider: Provider) -> str | None:
    """Why ``module``'s ``register_*`` functions would not all run: an unknown hook name, or a
    hook function without ``@hookimpl`` (pluggy would silently ignore it)."""
    hooks = [k.hook for k in KINDS.values()]
    functions = [name for name in dir(module) if name.startswith("register_") and callable(getattr(module, name))]
    unknown = [name for name in functions if name not in hooks]
    if unknown:
        return f"unknown hook {unknown[0]!r}; valid hooks: " + ", ".join(hooks)
    implemented = {caller.name for caller in pm.get_hookcallers(pm.get_plugin(provider.plugin)) or ()}
    undecorated = [name for name in functions if name not in implemented]
    if undecorated:
        return (f"{undecorated[0]} is not marked as a hook implementation, so it would never run: "
                f"decorate it with @hookimpl (from core import hookimpl)")
    return None


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@functools.cache
def get_registry() -> Registry:
    """The process-wide registry of installed plugins (loaded once)."""
    return load_registry()
