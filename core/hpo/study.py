"""The Optuna study behind ``core hpo``: its storage, sampler and pruner, and the re-queueing of
trials a killed run left behind.

Storage: an RDB URL (default ``sqlite:///<hpo dir>/study.db``; ``postgresql://`` or ``mysql://`` for
workers on several machines) or a journal file (a path ending in ``.log``, on a shared file
system). A trial records the worker running it (``host:pid``). When ``core hpo`` starts, trials
left RUNNING by a dead worker of this host are marked failed, and their parameters (and those of
trials stopped by Ctrl-C) queued again;
RDB storages also run Optuna's heartbeat, so a worker lost on another machine is detected and
its trial retried (:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

from core.errors import ConfigError

WORKER = f"{socket.gethostname()}:{os.getpid()}"
HEARTBEAT_S, GRACE_S = 10, 30
SAMPLERS = ("tpe", "random", "grid", "cmaes")


def storage_url(hpo: Any, out: Path) -> str:
    return hpo.storage or f"sqlite:///{(out / 'study.db').resolve()}"


def open_storage(url: str) -> Any:
    """The Optuna storage of ``url``; one clear error when it cannot be opened."""
    import warnings

    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    fix = ("use an RDB URL (sqlite:////abs/path/study.db, postgresql://user@host/db) the workers can reach, "
           "or a journal file path ending in .log on a shared file system")
    try:
        if "://" not in url:
            if not url.endswith(".log"):
                raise ValueError("a file storage must be a journal file ending in .log")
            Path(url).parent.mkdir(parents=True, exist_ok=True)
            return JournalStorage(JournalFileBackend(url))
        with warnings.catch_warnings():  # Optuna marks its heartbeat experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    except (ValueError, OSError, ImportError, optuna.exceptions.StorageInternalError) as exc:
        raise ConfigError(f"cannot open the study storage {url!r} ({type(exc).__name__}: {exc})",
                          where="hpo.storage", fix=fix) from None
    except Exception as exc:  # SQLAlchemy's errors: unreachable server, bad URL, missing driver
        if type(exc).__module__.startswith("sqlalchemy"):
            raise ConfigError(f"cannot open the study storage {url!r} ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0]})", where="hpo.storage", fix=fix) from None
        raise


def sampler(hpo: Any, seed: int) -> Any:
    import optuna

    from core.hpo.space import grid

    if hpo.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if hpo.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if hpo.sampler == "grid":
        return optuna.samplers.GridSampler(grid(hpo.params), seed=seed)
    return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)


def pruner(hpo: Any) -> Any:
    import optuna

    if hpo.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if hpo.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def open_study(hpo: Any, out: Path, *, continue_it: bool = True) -> Any:
    """The study (created, or loaded), with interrupted trials of this host re-queued when
    ``continue_it`` (False: only to look at it)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials are reported by core hpo
    url = storage_url(hpo, out)
    if not continue_it and url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise ConfigError(f"there is no study in {url.removeprefix('sqlite:///')} yet", where="core hpo --show",
                          fix="run `core hpo -c <spec>` first (or set hpo.storage to the study's storage)")
    storage = open_storage(url)
    try:
        study = optuna.create_study(storage=storage, study_name=hpo.study_name, load_if_exists=True,
                                    direction=hpo.direction, sampler=sampler(hpo, hpo.seed), pruner=pruner(hpo))
    except ValueError as exc:  # e.g. the stored study's direction differs
        raise ConfigError(f"cannot continue study {hpo.study_name!r}: {exc}", where="hpo.study_name",
                          fix="use the stored study's settings, or a new hpo.study_name") from None
    # a continued study must not replay the proposals of the run before: seed by the trials held
    study.sampler = sampler(hpo, hpo.seed + len(study.trials))
    if continue_it:
        requeue_interrupted(study)
    return study


def best_trial(study: Any, trials: list[Any] | None = None) -> Any | None:
    """The best completed trial of ``trials`` (default: one read of the study), lowest number on a
    tie; ``None`` before any trial completed. One read keeps a check of which trials are finished
    and which is best consistent while other threads report."""
    from optuna.trial import TrialState

    done = [t for t in (study.get_trials(deepcopy=False) if trials is None else trials)
            if t.state == TrialState.COMPLETE]
    if not done:
        return None
    sign = 1 if study.direction.name == "MAXIMIZE" else -1
    return max(done, key=lambda t: (sign * t.value, -t.number))


def _alive(worker: str) -> bool:
    host, _, pid = worker.rpartition(":")
    if host != socket.gethostname():
        return True  # another machine's worker: the heartbeat decides
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True
    return True


def requeue_interrupted(study: Any) -> list[int]:
    """Queue again the parameters of trials a run left unfinished: RUNNING trials of dead workers on
    this host (marked failed first) and trials stopped by Ctrl-C; returns their numbers."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    requeued = {t.user_attrs.get("requeued_from") for t in trials}
    numbers = []
    for trial in trials:
        worker = trial.user_attrs.get("worker")
        dead = trial.state == TrialState.RUNNING and worker not in (None, WORKER) and not _alive(worker)
        stopped = trial.state == TrialState.FAIL and trial.user_attrs.get("interrupted")
        if not (dead or stopped) or trial.number in requeued:
            continue
        if dead:
            study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number}, skip_if_exists=False)
        numbers.append(trial.number)
    return numbers
