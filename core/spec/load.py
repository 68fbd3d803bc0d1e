"""Loading, checking and writing experiment specs (``clip.toml``).

- :func:`load_config`: TOML file -> dotted command-line overrides -> strict structuring (cattrs)
  into :class:`core.spec.config.ExperimentConfig`. Precedence: command line > file > defaults. Every
  problem (malformed TOML, unknown or misplaced keys, wrong types, invalid choices, out-of-range
  values, missing required keys) is reported in one :class:`core.errors.ConfigError` naming the
  file, the full key path, the bad value and the valid values.
- :func:`check`: cross-field rules for one action (:mod:`core.spec.rules`).
- :func:`action_dir`: where an action writes.
- :func:`get_spec`: a complete, commented spec that loads back to the default config.
- :func:`convert_tao_spec`: a TAO YAML experiment spec as clip.toml text.

Plugin-owned tables (``registry.config_sections()``, e.g. ``[model.mine]``) are structured with
the plugin's attrs class and stored in ``cfg.plugins[path]`` (defaults when absent).
"""

from __future__ import annotations

import difflib
import json
import os
import sys
import tempfile
import typing
from pathlib import Path
from typing import Any, Sequence

import attrs
import cattrs
import tomli
from cattrs.errors import (AttributeValidationNote, ClassValidationError, ForbiddenExtraKeysError,
                           IterableValidationError, IterableValidationNote)

from core.fields import InvalidValue
from core.spec.config import ExperimentConfig
from core.errors import ConfigError
from core.registry import Registry, get_registry
from core.spec.rules import ACTIONS, TAO_ACTIONS, check
from core.spec.problems import Problem, raise_problems
from core.spec.json_schema import json_schema
from core.spec.render import format_value, render
from core.spec.schema import (Table, accepts_str, all_keys, child_sections, choices, describe,
                              field_named, fields_of, fits, join_path, key_locations, members, table_item, type_at)
from core.spec.tao import INERT, RENAMED, read_tao_spec, translate

__all__ = ["ACTIONS", "TAO_ACTIONS", "LoadedSpec", "action_dir", "check", "configured_actions", "convert_tao_spec",
           "get_json_schema", "get_spec", "load_config", "load_spec", "write_spec_file"]

#: The top-level sections each action reads (written first by ``get_spec(action)``).
ACTION_SECTIONS = {
    "train": ("model", "train", "dataset"),
    "evaluate": ("model", "evaluate", "dataset"),
    "inference": ("model", "inference"),
    "linear_probe": ("model", "linear_probe", "dataset"),
    "calibrate": ("model", "calibrate", "dataset"),
    "export": ("model", "export"),
    "gen_trt_engine": ("gen_trt_engine",),
}

GET_SPEC_HINT = "write a complete, commented spec with `core get-spec -o clip.toml`"


@attrs.frozen
class LoadedSpec:
    """A loaded spec: the config and the raw data it came from (file + overrides)."""

    config: ExperimentConfig
    data: dict[str, Any]


def load_config(path: str | os.PathLike | None, overrides: Sequence[str] = (),
                registry: Registry | None = None) -> ExperimentConfig:
    """The experiment config of the TOML file at ``path`` (None: defaults only) with ``overrides``
    (``section.key=value``; list items by index, ``datasets.0.image_dir=/d``; values are TOML
    literals, else taken as plain strings; ``key=null`` unsets a key). ``registry`` (default: the
    installed plugins) declares the plugin-owned sections."""
    return load_spec(path, overrides, registry).config


def load_spec(path: str | os.PathLike | None, overrides: Sequence[str] = (),
              registry: Registry | None = None) -> LoadedSpec:
    """Like :func:`load_config`, also returning the raw data (to see which sections were written)."""
    sections = _plugin_sections(registry)
    data = _read_toml(Path(path)) if path is not None else {}
    origins = {}
    for text in overrides:
        origins[_apply_override(data, text, sections)] = text
    source = str(path) if path is not None else "command line"
    return LoadedSpec(structure(data, sections, source=source, origins=origins), data)


def configured_actions(data: dict[str, Any]) -> list[str]:
    """The actions whose own section a spec writes (``[train]`` or ``[dataset.train]`` for train)."""
    dataset = data.get("dataset") if isinstance(data.get("dataset"), dict) else {}
    return [a for a in ACTIONS if a in data or (a == "train" and "train" in dataset)]


def action_dir(cfg: ExperimentConfig, action: str) -> Path:
    """Where ``action`` writes: ``<action>.results_dir`` if set, else ``<results_dir>/<action>``."""
    own = getattr(getattr(cfg, action, None), "results_dir", None)
    return Path(own) if own else Path(cfg.results_dir) / action


def _check_action(action: str | None) -> None:
    if action is not None and action not in ACTIONS:
        raise ConfigError(f"unknown action {action!r}", where="--action", fix="valid: " + ", ".join(ACTIONS))


def get_spec(action: str | None = None, registry: Registry | None = None) -> str:
    """A complete, commented spec with every default; ``action``'s sections come first."""
    _check_action(action)
    sections = _plugin_sections(registry)
    cfg = structure({}, sections, source="defaults")
    reads = ACTION_SECTIONS.get(action, ())
    header = [
        f"# clipcore experiment spec{f' for `core {action}`' if action else ''}, written by `core get-spec`.",
        "#",
        "# Every field is listed with its meaning, its valid values and its default. A line",
        "# `# key = <type>` is an unset optional field (TOML has no null): uncomment it and fill in a",
        "# value to set it. Override any key on the command line, e.g. `core train -c clip.toml",
        "# train.num_epochs=50 dataset.train.datasets.0.image_dir=/data` (`key=null` unsets a key).",
        "# `core validate -c clip.toml` checks the spec without running anything.",
    ]
    if action:
        header += [f"# `core {action}` reads " + ", ".join(f"[{s}]" for s in reads)
                   + f" (written first) and writes to <results_dir>/{action};",
                   "# it ignores the other sections."]
    return render(cfg, sections, header=header + [""], first=reads)


def get_json_schema(action: str | None = None, registry: Registry | None = None) -> str:
    """The spec's JSON Schema (draft 2020-12) as text; ``action``'s sections come first."""
    _check_action(action)
    title = f"clipcore experiment spec{f' for `core {action}`' if action else ''}"
    registry = get_registry() if registry is None else registry
    formats = sorted(registry.entries["dataset_formats"])
    names = {"train.loss_type": sorted(registry.entries["losses"]),
             **{f"dataset.{split}.type": formats for split in ("train", "val", "reference")}}
    schema = json_schema(_plugin_sections(registry), title=title, first=ACTION_SECTIONS.get(action, ()), names=names)
    if action in ACTION_SECTIONS:
        schema["description"] = (f"`core {action}` reads " + ", ".join(ACTION_SECTIONS[action])
                                 + "; it ignores the other sections.")
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def convert_tao_spec(yaml_path: str | os.PathLike, registry: Registry | None = None) -> str:
    """clip.toml text equivalent to a TAO YAML experiment spec. Every value is kept; TAO keys with no
    effect in clipcore are dropped and listed (with the reason) in a comment on top."""
    translation = translate(read_tao_spec(yaml_path), registry or get_registry())
    sections = _plugin_sections(registry)
    cfg = structure(translation.data, sections, source=f"{yaml_path} (TAO spec)")
    header = [f"# Converted from the TAO experiment spec {Path(yaml_path).name} by `core convert-spec`."]
    if translation.dropped:
        header += ["#", "# Dropped TAO keys (they would have no effect in clipcore):"]
        header += [f"#   {line}" for line in translation.dropped]
    if translation.notes:
        header += ["#", "# Notes:"] + [f"#   {line}" for line in translation.notes]
    header += ["#", "# Every field follows with its meaning, valid values and value (`core get-spec` "
                    "explains the format).", ""]
    return render(cfg, sections, header=header)


def write_spec_file(text: str, output: str | os.PathLike | None, *, force: bool = False) -> None:
    """Write ``text`` atomically to ``output`` (standard output when None); refuse to replace an
    existing file unless ``force``."""
    if output is None:
        sys.stdout.write(text)
        return
    path = Path(output)
    if path.is_dir():
        raise ConfigError("is a folder", where=str(path), fix="give a file name, e.g. clip.toml")
    if path.exists() and not force:
        raise ConfigError("already exists", where=str(path), fix="pass --force to overwrite it, or choose another -o")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # as a plain open() would create it (mkstemp makes it private)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- reading
def _plugin_sections(registry: Registry | None) -> dict[str, type]:
    registry = get_registry() if registry is None else registry
    return {path: section.cls for path, section in registry.config_sections().items()}


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        what = "spec file not found" if not path.exists() else "spec path is not a file"
        raise ConfigError(what, where=str(path), fix=f"check the path, or {GET_SPEC_HINT}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"not UTF-8 text (byte {err.start})", where=str(path),
                          fix="save the spec as UTF-8 TOML") from None
    except OSError as err:
        raise ConfigError(f"cannot read: {err.strerror}", where=str(path)) from None
    try:
        return tomli.loads(text)
    except tomli.TOMLDecodeError as err:
        lines = text.splitlines()
        shown = f"\n    {err.lineno} | {lines[err.lineno - 1]}" if 0 < err.lineno <= len(lines) else ""
        raise ConfigError(f"malformed TOML: {err.msg}{shown}",
                          where=f"{path}, line {err.lineno}, column {err.colno}",
                          fix="fix the TOML syntax there (strings need quotes; tables are [section], "
                              "lists of tables [[section]])") from None


def _apply_override(data: dict[str, Any], text: str, sections: dict[str, type]) -> str:
    """Set one ``key=value`` override in ``data``; returns the dotted key."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    parts = key.split(".")
    where = f"override {text!r}"
    if not sep or not all(parts):
        raise ConfigError("an override must be section.key=value", where=where,
                          fix="e.g. train.num_epochs=50 or dataset.train.datasets.0.image_dir=/data")
    value = _parse_value(raw.strip(), type_at(parts, sections))
    node: Any = data
    for i, part in enumerate(parts):
        last, here = i == len(parts) - 1, ".".join(parts[:i]) or "the top level"
        listed = not last and (parts[i + 1].isdigit() or typing.get_origin(type_at(parts[:i + 1], sections)) is list)
        fresh = None if last else ([] if listed else {})
        if isinstance(node, list):
            if not part.isdigit():
                raise ConfigError(f"{here} is a list: expected an index, got {part!r}", where=where,
                                  fix=f"e.g. {here}.0.{part}=...")
            index = int(part)
            if index > len(node):
                raise ConfigError(f"index {index} is past the end of {here} ({len(node)} entries)", where=where,
                                  fix=f"use an index from 0 to {len(node)} ({len(node)} appends a new entry)")
            if index == len(node):
                node.append(value if last else fresh)
            elif last:
                node[index] = value
            if not last:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, fresh)
        else:
            raise ConfigError(f"{here} is {format_value(node)}, not a table or list", where=where,
                              fix=f"remove the part after {here}")
    return key


def _parse_value(text: str, tp: Any) -> Any:
    """A TOML literal (``50``, ``[0.9, 0.99]``, ``true``, ``"x"``), ``null`` for None, else the
    plain string; a literal that does not fit a string-accepting field is kept as text (``results_dir=2024``)."""
    if text == "null":
        return None
    try:
        value = tomli.loads(f"v = {text}")["v"]
    except tomli.TOMLDecodeError:
        return text
    if tp is not None and accepts_str(tp) and not fits(value, tp):
        return text
    return value


# --------------------------------------------------------------------------- structuring
class _WrongType(ValueError):
    def __init__(self, value: Any, tp: Any):
        super().__init__(f"{value!r} is not {describe(tp)}")
        self.value, self.tp = value, tp


def _is_leaf(tp: Any) -> bool:
    return all(m in (bool, int, float, str, type(None)) or typing.get_origin(m) is typing.Literal
               for m in members(tp))


def _structure_leaf(value: Any, tp: Any) -> Any:
    if not fits(value, tp):
        raise _WrongType(value, tp)
    if type(value) is int and float in members(tp) and int not in members(tp):
        return float(value)
    return value


def _list_hook_factory(tp: Any, converter: cattrs.Converter) -> Any:
    items = cattrs.cols.list_structure_factory(tp, converter)

    def structure_list(value: Any, _: Any) -> list:
        if not isinstance(value, list):
            raise _WrongType(value, tp)
        return items(value, tp)

    return structure_list


def _converter() -> cattrs.Converter:
    converter = cattrs.Converter(forbid_extra_keys=True, detailed_validation=True)
    for primitive in (bool, int, float, str):  # exact types dispatch before predicates
        converter.register_structure_hook(primitive, _structure_leaf)
    converter.register_structure_hook_func(_is_leaf, _structure_leaf)
    converter.register_structure_hook_factory(lambda t: typing.get_origin(t) is list, _list_hook_factory)
    return converter


CONVERTER = _converter()


def structure(data: dict[str, Any], sections: dict[str, type], *, source: str,
              origins: dict[str, str] | None = None) -> ExperimentConfig:
    """Spec data -> ExperimentConfig, or one ConfigError listing every problem.

    ``sections`` maps plugin section paths to their attrs classes; ``origins`` maps keys set by
    command-line overrides to the override text (named in the messages)."""
    problems: list[Problem] = []
    plugin_data: dict[str, dict] = {}
    clean = _screen(data, Table("", ExperimentConfig), "", sections, plugin_data, problems)
    cfg = _structure_as(clean, ExperimentConfig, "", problems)
    plugins = {path: _structure_as(plugin_data.get(path, {}), cls, path, problems)
               for path, cls in sections.items()}
    if problems:
        raise_problems([_label(p, origins or {}) for p in problems], source)
    return attrs.evolve(cfg, plugins=plugins)


def _label(problem: Problem, origins: dict[str, str]) -> Problem:
    for key, text in origins.items():
        if problem.key == key or problem.key.startswith(key + ".") or key.startswith(problem.key + "."):
            return attrs.evolve(problem, key=f"{problem.key} (from override {text!r})")
    return problem


def _structure_as(data: dict[str, Any], cls: type, path: str, problems: list[Problem]) -> Any:
    try:
        return CONVERTER.structure(data, cls)
    except (ClassValidationError, IterableValidationError, InvalidValue) as err:
        _collect(err, path, cls, problems)
        return None


def _collect(err: BaseException, path: str, owner: Any, problems: list[Problem]) -> None:
    """Turn a cattrs error tree into problems with full key paths."""
    if isinstance(err, (ClassValidationError, IterableValidationError)):
        for sub in err.exceptions:
            sub_path, sub_owner = path, owner
            for note in getattr(sub, "__notes__", ()):
                if isinstance(note, AttributeValidationNote):
                    sub_path, sub_owner = join_path(path, note.name), note.type
                elif isinstance(note, IterableValidationNote):
                    sub_path, sub_owner = join_path(path, note.index), note.type
            _collect(sub, sub_path, sub_owner, problems)
    elif isinstance(err, InvalidValue):
        problems.append(Problem(join_path(path, err.key), f"{format_value(err.value)} is out of range",
                                f"valid: {err.valid}"))
    elif isinstance(err, _WrongType):
        valid = choices(err.tp)
        if valid and not isinstance(err.value, (list, dict)):
            problems.append(Problem(path, f"{format_value(err.value)} is not a valid choice",
                                    "valid: " + " | ".join(format_value(c) for c in valid)))
        else:
            problems.append(Problem(path, f"expected {describe(err.tp)}, got {_shown(err.value)}"))
    elif isinstance(err, KeyError):
        entry = path.rpartition(".")[0]
        problems.append(Problem(path, "required key is missing",
                                f"add {path.rpartition('.')[2]} = ... to {entry or 'the spec'}"))
    elif isinstance(err, ForbiddenExtraKeysError):  # screened out before structuring; kept as a guard
        problems.append(Problem(path, f"unknown keys: {', '.join(sorted(err.extra_fields))}"))
    else:
        problems.append(Problem(path, f"invalid value: {err}"))


def _shown(value: Any) -> str:
    kind = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list",
            dict: "table"}.get(type(value), type(value).__name__)
    return f"{format_value(value)} ({kind})"


# --------------------------------------------------------------------------- unknown keys
def _screen(data: Any, table: Table, key_path: str, sections: dict[str, type],
            plugin_data: dict[str, dict], problems: list[Problem]) -> dict[str, Any]:
    """Report unknown keys and non-table values where tables belong; returns the data without
    them and without plugin sections (collected into ``plugin_data``)."""
    clean: dict[str, Any] = {}
    own_sections = child_sections(sections, table.path) if not table.array else {}
    for key, value in data.items():
        path, schema_path = join_path(key_path, key), join_path(table.path, key)
        f = field_named(table.cls, key)
        if f is None and key in own_sections:
            if _is_table(value, path, problems):
                plugin_data[schema_path] = _screen(value, Table(schema_path, own_sections[key]), path,
                                                   sections, plugin_data, problems)
            continue
        if f is None:
            problems.append(_unknown_key(key, path, table, sections))
            continue
        sub = table_item(f.type)
        if sub is None:
            clean[key] = value
        elif not sub[1]:
            if _is_table(value, path, problems):
                clean[key] = _screen(value, Table(schema_path, sub[0]), path, sections, plugin_data, problems)
        elif not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            problems.append(Problem(path, f"expected a list of tables ([[{schema_path}]]), got {_shown(value)}",
                                    f"write each entry as a [[{schema_path}]] table"))
        else:
            clean[key] = [_screen(v, Table(schema_path, sub[0], array=True), f"{path}.{i}", sections,
                                  plugin_data, problems) for i, v in enumerate(value)]
    return clean


def _is_table(value: Any, path: str, problems: list[Problem]) -> bool:
    if isinstance(value, dict):
        return True
    problems.append(Problem(path, f"expected a table ([{path}]), got {_shown(value)}",
                            f"write its keys under a [{path}] header"))
    return False


def _unknown_key(key: str, path: str, table: Table, sections: dict[str, type]) -> Problem:
    valid = sorted([f.name for f in fields_of(table.cls)]
                   + ([] if table.array else list(child_sections(sections, table.path))))
    listing = f"valid keys of {table.label}: {', '.join(valid)}"
    full = join_path(table.path, key)
    if full in RENAMED:
        return Problem(path, f"{key!r} is TAO's old name of {RENAMED[full].rpartition('.')[2]!r}",
                       f"rename it to {RENAMED[full].rpartition('.')[2]} "
                       "(`core convert-spec` converts whole TAO specs)")
    inert = next((reason for pattern, reason in INERT.items() if pattern.split(".")[-1] == key), None)
    if inert:
        return Problem(path, f"unknown key {key!r} (a TAO key with no effect in clipcore: {inert})",
                       f"remove it. {listing}")
    owners = [p for p in sections if p.rpartition(".")[2] == key and p.rpartition(".")[0] != table.path]
    if owners:
        return Problem(path, f"unknown key {key!r} in {table.label}",
                       f"{key} is the table [{owners[0]}]: write its keys under that header. {listing}")
    homes = [t.label for t in key_locations(key, sections) if t.path != table.path]
    if homes:
        return Problem(path, f"unknown key {key!r} in {table.label}",
                       f"{key} belongs under {', '.join(homes)}. {listing}")
    close = difflib.get_close_matches(key, valid, n=1)
    if close:
        return Problem(path, f"unknown key {key!r}", f"did you mean {close[0]!r}? {listing}")
    elsewhere = difflib.get_close_matches(key, sorted(all_keys(sections)), n=1, cutoff=0.8)
    if elsewhere:
        labels = ", ".join(t.label for t in key_locations(elsewhere[0], sections))
        return Problem(path, f"unknown key {key!r}", f"did you mean {elsewhere[0]!r} (under {labels})? {listing}")
    return Problem(path, f"unknown key {key!r}", listing)
