"""What it takes to turn a TAO CLIP YAML experiment spec into clipcore spec data.

TAO and clipcore share field names, so the translation only: drops TAO keys that have no effect
in clipcore (each with its reason, reported to the user), renames TAO's legacy augmentation keys,
omits ``null`` values (TOML has no null; an omitted key takes its default), and reads number-like
strings as numbers where a number is expected (PyYAML reads ``1e-4`` as a string). Structuring
and writing the result are :func:`core.spec.load.convert_tao_spec`'s job.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

import attrs
import yaml

from core.errors import ConfigError
from core.spec.config import ExperimentConfig
from core.spec.render import format_value
from core.spec.schema import accepts_str, default_of, field_at, fits, type_at

# Dotted key patterns (one fnmatch pattern per path component; `*` also matches list indices)
# of TAO keys that do nothing in clipcore, with the reason given to the user.
_TAO_71 = "a TAO 7.1-era option that clipcore does not implement"
INERT: dict[str, str] = {
    "encryption_key": "clipcore writes plain checkpoints and ONNX files (no TAO model encryption)",
    "train.siglip_loss_dist_impl": "clipcore's loss picks its distributed implementation itself",
    "train.siglip_loss_mask_mode": _TAO_71,
    "train.triplet_loss_weight": _TAO_71 + " (no triplet loss)",
    "train.triplet_margin": _TAO_71 + " (no triplet loss)",
    "train.validate_before_training": _TAO_71,
    "train.profiler*": _TAO_71 + " (profiling)",
    "dataset.train.include_attribute_metadata": _TAO_71,
    "dataset.train.balance_query_types": _TAO_71,
    "dataset.train.unique_caption_per_batch": _TAO_71,
    "dataset.*.datasets.*.train_pairs_file": _TAO_71 + " (pair files)",
    "dataset.*.datasets.*.attribute_pairs_file": _TAO_71 + " (pair files)",
    "dataset.val.metadata_match_eval": _TAO_71,
}

#: TAO's legacy key names, by dotted path, and the clipcore key they mean.
RENAMED: dict[str, str] = {
    "dataset.augmentation.grayscale_prob": "dataset.augmentation.grayscale",
    "dataset.augmentation.gray_scale_prob": "dataset.augmentation.grayscale",
}

#: TAO's top-level W&B table: the W&B logger plugin takes it under ``train`` with the same name.
TAO_WB = "wandb"

#: Defaults that differ between TAO and clipcore: dotted key -> what to tell a user who left it unset.
TAO_DEFAULTS: dict[str, str] = {
    "train.precision": "TAO trained in fp16 by default, clipcore trains in bf16; "
                       'set precision = "fp16" to keep TAO\'s behaviour',
}


@attrs.frozen
class Translation:
    """clipcore spec data and the notes to put on top of the converted file."""

    data: dict[str, Any]
    dropped: list[str]
    notes: list[str]


def read_tao_spec(path: str | Path) -> dict[str, Any]:
    """The YAML mapping of a TAO experiment spec, or a ConfigError naming the file (and the line
    and column of a syntax error)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("TAO spec file not found" if not path.exists() else "not a file", where=str(path),
                          fix="pass the path of a TAO experiment spec (.yaml)")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}, line {mark.line + 1}, column {mark.column + 1}" if mark else str(path)
        raise ConfigError(f"malformed YAML: {err.problem or err.context}", where=where,
                          fix="fix the YAML syntax at that position") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read YAML: {err}", where=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError("a TAO experiment spec must be a mapping of sections", where=str(path),
                          fix="check that this is a TAO experiment spec (results_dir, model, train, ...)")
    return data


def translate(tao: dict[str, Any], registry: Any) -> Translation:
    """clipcore spec data from a TAO spec mapping (see the module docstring); ``registry`` has the
    loggers on by default."""
    dropped: list[str] = []
    notes: list[str] = []
    data = _clean(tao, [], dropped, notes)
    renamed = _rename(data)
    notes += _move_wb_table(data, registry)
    for key, advice in TAO_DEFAULTS.items():
        section, _, name = key.rpartition(".")
        if isinstance(data.get(section), dict) and name not in data[section]:
            notes.append(f"{key} is not set: {advice}.")
    notes += [f"renamed TAO's {old} to {new}" for old, new in renamed]
    return Translation(data, dropped, notes)


def _inert_reason(parts: list[str]) -> str | None:
    for pattern, reason in INERT.items():
        pats = pattern.split(".")
        if len(pats) == len(parts) and all(fnmatch.fnmatchcase(p, q) for p, q in zip(parts, pats)):
            return reason
    return None


def _clean(node: Any, parts: list[str], dropped: list[str], notes: list[str]) -> Any:
    """Drop inert keys and nulls, read number-like strings as numbers; returns the cleaned node."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            sub = [*parts, str(key)]
            reason = _inert_reason(sub)
            if reason:
                dropped.append(f"{'.'.join(sub)} = {_show(value)}: {reason}")
            elif value is None:
                _note_null(sub, notes)
            else:
                out[key] = _clean(value, sub, dropped, notes)
        return out
    if isinstance(node, list):
        return [_clean(v, [*parts, str(i)], dropped, notes) for i, v in enumerate(node)]
    if isinstance(node, str):
        return _number(node, parts)
    return node


def _show(value: Any) -> str:
    try:
        return format_value(value)
    except (TypeError, ValueError):
        return repr(value)


def _note_null(parts: list[str], notes: list[str]) -> None:
    """A null where clipcore's default is not None would silently change meaning: say so."""
    f = field_at(parts, {})
    default = default_of(f) if f is not None else None
    if default is not None and default is not attrs.NOTHING:
        notes.append(f"{'.'.join(parts)} is null in the TAO spec: clipcore uses its default "
                     f"{format_value(default)}.")


def _number(text: str, parts: list[str]) -> Any:
    tp = type_at(parts, {})
    if tp is None or accepts_str(tp):
        return text
    for convert in (int, float):
        try:
            value = convert(text)
        except ValueError:
            continue
        if fits(value, tp):
            return value
    return text


def _move_wb_table(data: dict[str, Any], registry: Any) -> list[str]:
    """TAO's top-level W&B table goes under ``train`` (the W&B logger plugin's table keeps TAO's
    name and fields); its ``enable`` (TAO's default: true) adds that logger to ``train.loggers``."""
    table = data.pop(TAO_WB, None)
    if not isinstance(table, dict):
        return []
    train = data.setdefault("train", {})
    train[TAO_WB] = table
    if not table.get("enable", True):
        return [f"moved TAO's {TAO_WB} table to train.{TAO_WB} (enable = false: not logging to W&B)"]
    from core.tracking import logger_names

    loggers = train.setdefault("loggers", logger_names(ExperimentConfig(), registry))
    if TAO_WB not in loggers:
        loggers.append(TAO_WB)
    return [f"moved TAO's {TAO_WB} table to train.{TAO_WB} and added it to train.loggers (TAO's enable); "
            f'set train.{TAO_WB}.mode = "offline" to log without a W&B account']


def _rename(data: dict[str, Any]) -> list[tuple[str, str]]:
    done = []
    for old, new in RENAMED.items():
        *section, old_name = old.split(".")
        new_name = new.rpartition(".")[2]
        table = data
        for part in section:
            table = table.get(part) if isinstance(table, dict) else None
        if not isinstance(table, dict) or old_name not in table:
            continue
        value = table.pop(old_name)
        if new_name in table and table[new_name] != value:
            raise ConfigError(f"both {old_name} ({value}) and {new_name} ({table[new_name]}) are set",
                              where=".".join(section), fix=f"keep only {new_name} ({old_name} is TAO's old name)")
        table[new_name] = value
        done.append((old, new))
    return done
