"""Run a search: check everything before the first trial, then run trials (``hpo.parallel`` at once,
each in its own slot of devices or CPU cores) until the study holds ``hpo.n_trials`` finished or
pruned trials, tidy each finished trial's checkpoints, and write the results.

Outputs in ``<results_dir>/hpo/`` (``hpo.results_dir``): ``study.db`` (the default storage),
``trial_NNNN/`` (each trial's run: ``trial.log``, ``train/metrics.jsonl``, a ``PRUNED`` / ``FAILED``
marker; checkpoints only for the best trial unless ``hpo.keep_checkpoints``), ``trials.csv``,
``best.toml``, ``history.png`` and ``importances.png``.
"""

from __future__ import annotations

import os
import queue
import threading
from pathlib import Path
from typing import Any

import attrs

from core.errors import ClipcoreError, ConfigError
from core.hpo import report, space, study as studies, trial as trials
from core.spec.load import action_dir, check, load_config
from core.train.validation import logged_metrics


@attrs.define
class Search:
    spec: Path
    overrides: list[str]
    cfg: Any
    out: Path
    slots: list[dict[str, str]]
    study: Any = None
    failures: list[str] = attrs.field(factory=list)
    lock: threading.Lock = attrs.field(factory=threading.Lock)

    @property
    def hpo(self) -> Any:
        return self.cfg.hpo


def prepare(spec: str, overrides: list[str]) -> Search:
    """Load and check everything a search needs; raises one :class:`ConfigError` before any trial."""
    cfg = load_config(spec, overrides)
    check(cfg, "train")
    hpo = cfg.hpo
    metrics = logged_metrics(cfg)
    if not metrics:
        raise ConfigError("the search has no validation data: trials could not be scored",
                          where="dataset.val.datasets",
                          fix="add a [[dataset.val.datasets]] table (the validation split the metric is measured on)")
    if hpo.metric not in metrics:
        raise ConfigError(f"validation never logs {hpo.metric!r}", where="hpo.metric",
                          fix="use one of: " + ", ".join(metrics))
    space.check(spec, overrides, hpo.params)
    if hpo.sampler == "grid":
        space.grid(hpo.params)
    return Search(spec=Path(spec), overrides=list(overrides), cfg=cfg, out=action_dir(cfg, "hpo"),
                  slots=device_slots(cfg))


def device_slots(cfg: Any) -> list[dict[str, str]]:
    """The environment of each of the ``hpo.parallel`` trial slots: its own GPUs, or its share of cores."""
    import torch

    parallel = cfg.hpo.parallel
    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
        need = cfg.train.num_gpus
        if parallel * need > len(devices):
            raise ConfigError(f"{parallel} trials × {need} GPU(s) each need {parallel * need} GPUs; "
                              f"{len(devices)} are visible", where="hpo.parallel",
                              fix=f"lower hpo.parallel to at most {max(len(devices) // need, 1)}")
        return [{"CUDA_VISIBLE_DEVICES": ",".join(devices[i * need:(i + 1) * need])} for i in range(parallel)]
    cores = len(os.sched_getaffinity(0))
    if parallel > cores:
        raise ConfigError(f"{parallel} parallel trials on {cores} CPU cores", where="hpo.parallel",
                          fix=f"lower hpo.parallel to at most {cores} (each trial needs a core)")
    threads = str(cores // parallel)
    return [{"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads} for _ in range(parallel)]


def remaining(study: Any, total: int) -> int:
    from optuna.trial import TrialState

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    return max(total - len(done), 0)


def run(search: Search) -> Any:
    """Open (or continue) the study and run the missing trials; returns the study."""
    import optuna
    from optuna.trial import TrialState

    search.out.mkdir(parents=True, exist_ok=True)
    hpo = search.hpo
    search.study = studies.open_study(hpo, search.out)
    free: queue.Queue = queue.Queue()
    for slot in search.slots:
        free.put(slot)

    def objective(trial: Any) -> float:
        slot = free.get()
        try:
            trial.set_user_attr("worker", studies.WORKER)
            values = space.suggest(trial, hpo.params)
            out = search.out / f"trial_{trial.number:04d}"

            def report_value(value: float, step: int) -> bool:
                trial.report(value, step)
                return trial.should_prune()

            best = trials.run(search.spec, [*search.overrides, *(space.override(k, v) for k, v in values.items())],
                              out, hpo.metric, env=slot, report=report_value)
            if best is None:
                raise optuna.TrialPruned()
            return best
        except trials.TrialFailed as exc:
            with search.lock:
                search.failures.append(f"trial {trial.number}: {exc}")
            raise
        except KeyboardInterrupt:  # Optuna records it as failed; the next run queues it again
            trial.set_user_attr("interrupted", True)
            raise
        finally:
            free.put(slot)

    def tidy(study: Any, _: Any) -> None:
        with search.lock:
            if not hpo.keep_checkpoints:
                now = study.get_trials(deepcopy=False)
                best = studies.best_trial(study, now)
                for trial in now:
                    if trial is not best and trial.state.is_finished():
                        trials.remove_checkpoints(search.out / f"trial_{trial.number:04d}")

    todo = remaining(search.study, hpo.n_trials)
    if todo:  # other workers may share the study: stop once it holds n_trials, whoever ran them
        total = optuna.study.MaxTrialsCallback(hpo.n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))
        search.study.optimize(objective, n_trials=todo, timeout=hpo.timeout, n_jobs=hpo.parallel,
                              catch=(trials.TrialFailed,), callbacks=[tidy, total], gc_after_trial=False)
    finish(search)
    return search.study


def finish(search: Search) -> None:
    """``trials.csv``, ``best.toml`` and the plots; an error when no trial finished."""
    study = search.study
    report.write_csv(study, search.out / "trials.csv")
    best = studies.best_trial(study)
    if best is None:
        detail = f"; the first failure: {search.failures[0]}" if search.failures else ""
        raise ClipcoreError(f"no trial of study {search.hpo.study_name!r} finished{detail}", where="core hpo",
                            fix="see the trials' trial.log files in " + str(search.out))
    report.write_best_spec(search.spec, search.overrides, best, search.out / "best.toml")
    report.plot(study, search.out)
