"""``core hpo -c clip.toml``: hyper-parameter search over spec fields on Optuna, each trial a real
training run (TAO AutoML's job).

The search is the spec's ``[hpo]`` section: the metric and its direction, ``n_trials`` (the study's
total: running again continues the study and adds only the missing trials; trials a killed run
left behind are queued again), the sampler (tpe | random | grid | cmaes), the pruner (median |
hyperband | none: trials are stopped between validations), ``parallel`` trials at once, and the
storage (default SQLite in <results_dir>/hpo/study.db; an RDB URL or a journal file shared by
workers on several machines). The space is one ``[hpo.params."<dotted.field>"]`` table per field::

    [hpo.params."train.optim.vision_lr"]
    type = "float"
    low = 1e-5
    high = 1e-3
    log = true

``core hpo -c clip.toml --show`` prints the study's trials without running any.
"""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", "-e", dest="config", metavar="SPEC", required=True,
                        help="spec file (clip.toml) with an [hpo] section")
    parser.add_argument("--show", action="store_true", help="print the study's trials and best values, run nothing")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="dotted overrides, applied to the spec of every trial")


def run(args: argparse.Namespace) -> None:
    from rich.console import Console

    from core.hpo import report, search as searches, study as studies
    from core.spec.load import action_dir, load_config

    console = Console()
    if args.show:
        cfg = load_config(args.config, args.overrides)
        study = studies.open_study(cfg.hpo, action_dir(cfg, "hpo"), continue_it=False)
        console.print(report.table(study, cfg.hpo.metric))
        _print_best(console, study, action_dir(cfg, "hpo"))
        return
    search = searches.prepare(args.config, args.overrides)
    console.print(f"study {search.hpo.study_name!r} in {studies.storage_url(search.hpo, search.out)}; "
                  f"trials in {search.out}", markup=False)
    if sys.stdout.isatty():
        study = _run_live(console, search)
    else:
        study = searches.run(search)
        console.print(report.table(study, search.hpo.metric))
    _print_best(console, study, search.out)


def _run_live(console, search):
    """Run the search in a thread while the table of trials refreshes every second."""
    import threading

    from rich.live import Live

    from core.hpo import report, search as searches

    outcome: dict = {}

    def work() -> None:
        try:
            outcome["study"] = searches.run(search)
        except BaseException as exc:  # re-raised in the main thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="hpo", daemon=True)
    worker.start()
    with Live(console=console, refresh_per_second=1) as live:
        while worker.is_alive():
            worker.join(1.0)
            if search.study is not None:
                live.update(report.table(search.study, search.hpo.metric))
    if "error" in outcome:
        raise outcome["error"]
    return outcome["study"]


def _print_best(console, study, out) -> None:
    try:
        best = study.best_trial
    except ValueError:
        console.print("no finished trial yet")
        return
    console.print(f"best: trial {best.number}, {best.value:.4f} with "
                  + ", ".join(f"{k} = {v}" for k, v in best.params.items()), markup=False)
    console.print(f"spec with these values: {out / 'best.toml'}; checkpoints: {out / f'trial_{best.number:04d}' / 'train'}",
                  markup=False)
