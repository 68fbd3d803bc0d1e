"""The search space ``[hpo.params."<dotted.field>"]``: checked against the spec schema before any
trial runs, and turned into a trial's spec overrides."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import tomli_w

from core.errors import ConfigError
from core.spec.load import load_config


def where(path: str) -> str:
    return f'hpo.params."{path}"'


def literal(value: Any) -> str:
    """``value`` as the TOML literal an override takes."""
    return tomli_w.dumps({"v": value})[4:].strip()


def override(path: str, value: Any) -> str:
    return f"{path}={literal(value)}"


def _bounds(path: str, param: Any) -> list[Any]:
    """The values that bound the parameter's range (checked against the field's own rules)."""
    if param.type == "categorical":
        if not param.choices:
            raise ConfigError("a categorical parameter needs choices", where=where(path),
                              fix='e.g. choices = ["adamw", "lamb"]')
        return list(param.choices)
    if param.low is None or param.high is None:
        raise ConfigError(f"a {param.type} parameter needs both low and high", where=where(path),
                          fix="set both, e.g. low = 1e-5 and high = 1e-3 (type defaults to float; categorical "
                              "parameters take choices)")
    if param.low > param.high:
        raise ConfigError(f"a {param.type} parameter needs low <= high, got low {param.low}, high {param.high}",
                          where=where(path), fix="swap them")
    if param.log and param.low <= 0:
        raise ConfigError(f"a log-scale range must be positive, got low {param.low}", where=where(path),
                          fix="raise low above 0, or set log = false")
    if param.type == "int":
        if any(v is not None and not float(v).is_integer() for v in (param.low, param.high, param.step)):
            raise ConfigError("an int parameter needs whole-number low, high and step", where=where(path),
                              fix="e.g. low = 0, high = 200, step = 50")
        return [int(param.low), int(param.high)]
    return [float(param.low), float(param.high)]


def check(spec: str | Path, base_overrides: list[str], params: dict[str, Any]) -> None:
    """Every searched field exists and accepts both ends of its range (or every choice), as the
    spec loader and the field's validator decide; raises one :class:`ConfigError` naming the
    parameter."""
    if not params:
        raise ConfigError("the search space is empty", where="hpo.params",
                          fix='add a table per searched field, e.g. [hpo.params."train.optim.vision_lr"] with '
                              "type, low, high and log")
    for path, param in params.items():
        for value in _bounds(path, param):
            try:
                load_config(spec, [*base_overrides, override(path, value)])
            except ConfigError as exc:
                what, _, fix = exc.what.partition("\n  fix: ")  # a plugin section's rule carries its fix
                what = what.removeprefix(f"invalid value: {path}: ")
                raise ConfigError(f"{path} = {literal(value)} is not a valid spec value: {what}",
                                  where=where(path), fix=exc.fix or fix or "change the range") from None


def suggest(trial: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The trial's value of every parameter (Optuna's ``suggest_*``), by dotted field."""
    values = {}
    for path, p in params.items():
        if p.type == "categorical":
            values[path] = trial.suggest_categorical(path, list(p.choices))
        elif p.type == "int":
            values[path] = trial.suggest_int(path, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            values[path] = trial.suggest_float(path, p.low, p.high, step=p.step, log=p.log)
    return values


def grid(params: dict[str, Any]) -> dict[str, list[Any]]:
    """The grid sampler's search space: every choice, or low to high by step."""
    out = {}
    for path, p in params.items():
        if p.type == "categorical":
            out[path] = list(p.choices)
            continue
        if not p.step:
            raise ConfigError("the grid sampler needs a step for every int and float parameter",
                              where=f"{where(path)}.step", fix="set step, or use another hpo.sampler")
        count = int(math.floor((p.high - p.low) / p.step + 1e-9)) + 1
        values = [p.low + i * p.step for i in range(count)]
        out[path] = [int(v) for v in values] if p.type == "int" else [round(v, 12) for v in values]
    return out
