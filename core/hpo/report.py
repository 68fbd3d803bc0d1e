"""What a search leaves for a person: the live table of trials, ``trials.csv``, ``best.toml``, and
PNGs of the optimisation history and the parameter importances (Optuna's computations, drawn
with matplotlib)."""

from __future__ import annotations

import csv
import io
import warnings
from pathlib import Path
from typing import Any

import tomli_w

from core.hpo.space import override
from core.hpo.study import best_trial
from core.plots import pyplot, save
from core.runtime.checkpoint import write_text_atomic
from core.spec.load import load_spec

STATES = {"COMPLETE": "done", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running", "WAITING": "queued"}


def _seconds(trial: Any) -> float | None:
    if trial.datetime_start is None:
        return None
    end = trial.datetime_complete
    if end is None:
        from datetime import datetime

        end = datetime.now()
    return (end - trial.datetime_start).total_seconds()


def rows(study: Any) -> list[dict[str, Any]]:
    """One row per trial: number, state, metric, seconds, then every parameter."""
    names = sorted({name for t in study.trials for name in t.params})
    out = []
    for t in study.trials:
        last = max(t.intermediate_values.items())[1] if t.intermediate_values else None
        out.append({"number": t.number, "state": STATES.get(t.state.name, t.state.name.lower()),
                    "value": t.value if t.value is not None else last, "seconds": _seconds(t),
                    **{name: t.params.get(name) for name in names}})
    return out


def table(study: Any, metric: str) -> Any:
    """The rich table of the study's trials."""
    from rich.table import Table

    data = rows(study)
    names = [k for k in (data[0] if data else {}) if k not in ("number", "state", "value", "seconds")]
    view = Table(title=f"study {study.study_name!r}: {metric} ({study.direction.name.lower()})")
    for column in ("trial", *names, metric, "state", "time"):
        view.add_column(column, justify="right" if column != "state" else "left")
    best = _best_number(study)
    for row in data:
        style = "bold green" if row["number"] == best else None
        view.add_row(str(row["number"]), *(_fmt(row[n]) for n in names), _fmt(row["value"]), row["state"],
                     "" if row["seconds"] is None else f"{row['seconds']:.0f} s", style=style)
    return view


def _best_number(study: Any) -> int | None:
    best = best_trial(study)
    return None if best is None else best.number


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def write_csv(study: Any, path: Path) -> Path:
    data = rows(study)
    buffer = io.StringIO()
    if data:
        writer = csv.DictWriter(buffer, fieldnames=list(data[0]))
        writer.writeheader()
        writer.writerows(data)
    return write_text_atomic(buffer.getvalue(), path)


def write_best_spec(spec: Path, base_overrides: list[str], best: Any, path: Path) -> Path:
    """The spec with the best trial's values (and the command-line overrides) written in."""
    data = load_spec(spec, [*base_overrides, *(override(k, v) for k, v in best.params.items())]).data
    header = (f"# {spec} with the best values of hpo study trial {best.number} "
              f"({best.value:.6g}); written by core hpo\n")
    return write_text_atomic(header + tomli_w.dumps(data), path)


def plot(study: Any, out: Path) -> list[Path]:
    """``history.png`` and, with two finished trials or more, ``importances.png``."""
    plt = pyplot()  # before Optuna's views import pyplot
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as views

    written = []
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not finished:
        return written
    charts = [("history.png", views.plot_optimization_history)]
    if len(finished) >= 2 and len(finished[0].params) >= 1:
        charts.append(("importances.png", lambda s: views.plot_param_importances(
            s, evaluator=optuna.importance.PedAnovaImportanceEvaluator())))
    for name, draw in charts:
        try:
            with warnings.catch_warnings():  # Optuna marks its matplotlib views experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                axes = draw(study)
        except (ValueError, RuntimeError):  # e.g. importances of parameters that never varied
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(8, 5)
        written.append(save(figure, out / name))
        plt.close(figure)
    return written
