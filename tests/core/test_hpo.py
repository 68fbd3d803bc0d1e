"""`core hpo`: the search space checked up front, real training trials, pruning, resume after
SIGKILL, two workers on one storage, and the results a person reads."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tomli_w

REPO = Path(__file__).resolve().parents[2]
LR = {"type": "categorical", "choices": [1e-3, 3e-3]}


def write_spec(training, folder: Path, params=None, **hpo) -> Path:
    """The tiny run (validated every epoch) with an ``[hpo]`` section."""
    from core.spec.load import load_spec

    data = load_spec(None, training.overrides(folder / "results", validate=True)).data
    data["dataset"]["val"]["datasets"][0]["image_dir"] = str(folder)  # a real folder; the synthetic pairs ignore it
    data["hpo"] = {"n_trials": 2, "sampler": "random", "parallel": 1, **hpo,
                   "params": params if params is not None else {"train.optim.vision_lr": LR}}
    spec = folder / "clip.toml"
    spec.write_text(tomli_w.dumps(data))
    return spec


def hpo(training, spec: Path, *args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "core.cli.main", "hpo", "-c", str(spec), *args], cwd=REPO,
                          env=training.env(**env), capture_output=True, text=True, timeout=timeout)


def load_study(folder: Path, storage: str | None = None):
    import optuna

    url = storage or f"sqlite:///{folder / 'results' / 'hpo' / 'study.db'}"
    store = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url)) if url.endswith(
        ".log") else url
    return optuna.load_study(study_name="clipcore", storage=store)


def states(study) -> list[str]:
    return [t.state.name for t in study.trials]


# --------------------------------------------------------------------------- bad input, before any trial
@pytest.mark.parametrize("params, hpo_fields, message", [
    ({"train.optim.vison_lr": LR}, {}, 'hpo.params."train.optim.vison_lr": train.optim.vison_lr = 0.001 is not a '
                                       "valid spec value: unknown key 'vison_lr'"),
    ({"train.num_epochs": {"type": "int", "low": 0, "high": 3}}, {},
     'hpo.params."train.num_epochs": train.num_epochs = 0 is not a valid spec value'),
    ({"train.optim.text_lr": {"type": "float", "low": 1e-3, "high": 1e-5}}, {},
     'hpo.params."train.optim.text_lr": a float parameter needs low <= high'),
    ({"train.optim.text_lr": {"low": 1e-3}}, {}, 'hpo.params."train.optim.text_lr": a float parameter needs both '
                                                 "low and high"),
    ({}, {}, "hpo.params: the search space is empty"),
    ({"train.optim.vision_lr": LR}, {"metric": "val/t2i_R@3"}, "hpo.metric: validation never logs 'val/t2i_R@3'"),
    ({"train.optim.vision_lr": LR}, {"parallel": 64}, "hpo.parallel: 64 parallel trials on"),
    ({"train.optim.vision_lr": {"type": "float", "low": 1e-5, "high": 1e-3}}, {"sampler": "grid"},
     'hpo.params."train.optim.vision_lr".step: the grid sampler needs a step'),
])
def test_bad_search_settings_are_one_message_before_any_trial(tmp_path, training, params, hpo_fields, message):
    from core.errors import ConfigError
    from core.hpo.search import prepare

    spec = write_spec(training, tmp_path, params, **hpo_fields)
    with pytest.raises(ConfigError) as err:
        prepare(str(spec), [])
    assert str(err.value).startswith(message), str(err.value)
    assert "fix:" in str(err.value) and not (tmp_path / "results" / "hpo").exists()


def test_unknown_field_suggests_the_close_name(tmp_path, training):
    from core.errors import ConfigError
    from core.hpo.search import prepare

    with pytest.raises(ConfigError, match="did you mean 'vision_lr'"):
        prepare(str(write_spec(training, tmp_path, {"train.optim.vison_lr": LR})), [])


def test_no_validation_data_cannot_score_trials(tmp_path, training):
    from core.errors import ConfigError
    from core.hpo.search import prepare

    spec = write_spec(training, tmp_path)
    with pytest.raises(ConfigError) as err:
        prepare(str(spec), ["dataset.val.datasets=[]"])
    assert str(err.value).startswith("dataset.val.datasets: the search has no validation data")


@pytest.mark.parametrize("storage, detail", [
    ("sqlite:////proc/no/such/study.db", "OperationalError"),
    ("postgresql://nobody@127.0.0.1:9/none", "ImportError"),
    ("/tmp/study.json", "a file storage must be a journal file ending in .log"),
])
def test_a_storage_that_cannot_be_opened_is_one_message(tmp_path, training, storage, detail):
    done = hpo(training, write_spec(training, tmp_path, storage=storage))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert f"hpo.storage: cannot open the study storage {storage!r}" in done.stderr and detail in done.stderr
    assert not list((tmp_path / "results" / "hpo").glob("trial_*"))


# --------------------------------------------------------------------------- running
def test_a_search_runs_real_trials_and_writes_what_a_person_reads(tmp_path, training):
    parallel = min(2, len(os.sched_getaffinity(0)))
    spec = write_spec(training, tmp_path, n_trials=2, sampler="grid", pruner="none", parallel=parallel,
                      params={"train.optim.vision_lr": LR, "train.optim.warmup_steps": {
                          "type": "int", "low": 0, "high": 2, "step": 2}}, seed=1)
    done = hpo(training, spec)
    assert done.returncode == 0, done.stderr + done.stdout
    out = tmp_path / "results" / "hpo"
    study = load_study(tmp_path)
    assert states(study) == ["COMPLETE", "COMPLETE"]
    first, second = study.trials
    if parallel == 2:  # both at once, each on its share of the cores
        assert second.datetime_start < first.datetime_complete and first.datetime_start < second.datetime_complete
    best = study.best_trial
    assert f"best: trial {best.number}" in done.stdout
    for trial in study.trials:  # each trial is a real run: its own folder, metrics, and the value it reports
        records = (out / f"trial_{trial.number:04d}" / "train" / "metrics.jsonl").read_text()
        assert '"val/t2i_mAP"' in records and trial.value > 0
        kept = list((out / f"trial_{trial.number:04d}").rglob("*.pth"))
        assert bool(kept) == (trial.number == best.number)  # only the best trial keeps checkpoints
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert [r["state"] for r in rows] == ["done", "done"] and "train.optim.vision_lr" in rows[0]
    from core.spec.load import load_config

    chosen = load_config(out / "best.toml")
    assert chosen.train.optim.vision_lr == best.params["train.optim.vision_lr"]
    assert chosen.train.optim.warmup_steps == best.params["train.optim.warmup_steps"]
    assert (out / "history.png").stat().st_size > 5000 and (out / "importances.png").is_file()
    shown = hpo(training, spec, "--show")
    assert shown.returncode == 0 and "study 'clipcore'" in shown.stdout and "done" in shown.stdout
    again = hpo(training, spec, "hpo.n_trials=3")  # the study's total: one more trial
    assert again.returncode == 0, again.stderr
    assert states(load_study(tmp_path)) == ["COMPLETE"] * 3


def test_the_median_pruner_stops_a_bad_trial_between_validations(tmp_path, training):
    import optuna

    spec = write_spec(training, tmp_path, n_trials=3, pruner="median",
                      params={"train.optim.vision_lr": {"type": "categorical", "choices": [0.0, 1e-3]},
                              "train.optim.text_lr": {"type": "categorical", "choices": [0.0, 1e-3]}})
    store = f"sqlite:///{tmp_path / 'results' / 'hpo' / 'study.db'}"
    (tmp_path / "results" / "hpo").mkdir(parents=True)
    study = optuna.create_study(storage=store, study_name="clipcore", direction="maximize")
    for lr in (1e-3, 1e-3, 0.0):  # two good trials, then one that cannot learn
        study.enqueue_trial({"train.optim.vision_lr": lr, "train.optim.text_lr": lr})
    done = hpo(training, spec, "train.num_epochs=3")
    assert done.returncode == 0, done.stderr
    study = load_study(tmp_path)
    assert states(study) == ["COMPLETE", "COMPLETE", "PRUNED"]
    pruned = tmp_path / "results" / "hpo" / "trial_0002"
    assert (pruned / "PRUNED").is_file() and not list(pruned.rglob("*.pth"))
    assert len(study.trials[2].intermediate_values) < len(study.trials[0].intermediate_values) == 3


def _training_processes(folder: Path) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(folder) in (proc / "cmdline").read_text() and "train" in (
                    proc / "cmdline").read_text():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_sigkill_then_rerun_continues_the_study_and_requeues_the_interrupted_trial(tmp_path, training):
    spec = write_spec(training, tmp_path, n_trials=2, pruner="none")
    out = tmp_path / "results" / "hpo"
    proc = subprocess.Popen([sys.executable, "-m", "core.cli.main", "hpo", "-c", str(spec)], cwd=REPO,
                            env=training.env(CLIPCORE_TEST_BATCH_DELAY="0.4"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / "trial_0001" / "train" / "metrics.jsonl").is_file():  # trial 0 done, trial 1 training
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.5)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(60):  # the trial's training process dies with its worker
        if not _training_processes(out):
            break
        time.sleep(0.5)
    assert not _training_processes(out)
    before = load_study(tmp_path)
    assert states(before) == ["COMPLETE", "RUNNING"]
    done = hpo(training, spec)
    assert done.returncode == 0, done.stderr
    after = load_study(tmp_path)
    assert states(after) == ["COMPLETE", "FAIL", "COMPLETE"]
    assert after.trials[0].value == before.trials[0].value  # finished trials are kept
    assert after.trials[2].params == before.trials[1].params  # the interrupted one runs again
    assert after.trials[2].user_attrs["requeued_from"] == 1


def test_two_workers_share_one_journal_storage(tmp_path, training):
    journal = str(tmp_path / "shared" / "study.log")
    spec = write_spec(training, tmp_path, n_trials=4, pruner="none", storage=journal,
                      params={"train.optim.vision_lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}})
    workers = [subprocess.Popen([sys.executable, "-m", "core.cli.main", "hpo", "-c", str(spec), f"hpo.seed={seed}"],
                                cwd=REPO, env=training.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for seed in (1, 2)]
    results = [w.communicate(timeout=600) for w in workers]
    assert all(w.returncode == 0 for w in workers), results
    study = load_study(tmp_path, journal)
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert 4 <= len(finished) <= 5  # the total is the study's; a worker may finish the trial it had started
    assert len({t.user_attrs["worker"] for t in finished}) == 2


def test_each_parallel_trial_gets_its_own_gpus_or_its_share_of_the_cores(monkeypatch, training):
    import torch

    from core.errors import ConfigError
    from core.hpo.search import device_slots
    from core.spec.load import load_config

    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(8)))
    cfg = load_config(None, ["hpo.parallel=4"])
    assert device_slots(cfg) == [{"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}] * 4
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cfg = load_config(None, ["hpo.parallel=2", "train.num_gpus=2"])
    assert device_slots(cfg) == [{"CUDA_VISIBLE_DEVICES": "0,1"}, {"CUDA_VISIBLE_DEVICES": "2,3"}]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    with pytest.raises(ConfigError) as err:
        device_slots(load_config(None, ["hpo.parallel=2", "train.num_gpus=2"]))
    assert str(err.value).startswith("hpo.parallel: 2 trials × 2 GPU(s) each need 4 GPUs; 2 are visible")


@pytest.mark.parametrize("sampler, pruner", [("tpe", "median"), ("random", "hyperband"), ("cmaes", "none"),
                                             ("grid", "median")])
def test_every_sampler_and_pruner_opens_a_study_that_suggests_values(tmp_path, sampler, pruner):
    from core.hpo import space, study as studies
    from core.spec.config import HpoParam
    from core.spec.load import load_config

    cfg = load_config(None, [f"hpo.sampler={sampler}", f"hpo.pruner={pruner}"])
    cfg.hpo.params = {"train.optim.vision_lr": HpoParam(type="float", low=1e-4, high=1e-3, step=1e-4),
                      "train.optim.warmup_steps": HpoParam(type="int", low=0, high=100, step=50),
                      "train.optim.optimizer_type": HpoParam(type="categorical", choices=["adamw", "lamb"])}
    study = studies.open_study(cfg.hpo, tmp_path)
    for _ in range(3):
        trial = study.ask()
        values = space.suggest(trial, cfg.hpo.params)
        assert 1e-4 <= values["train.optim.vision_lr"] <= 1e-3 and values["train.optim.warmup_steps"] in (0, 50, 100)
        study.tell(trial, values["train.optim.vision_lr"])
    assert (tmp_path / "study.db").is_file() and len(study.trials) == 3


def test_plugin_sections_and_lora_fields_can_be_searched(tmp_path, training):
    from core.errors import ConfigError
    from core.hpo.search import prepare

    params = {"train.siglip.chunk_size": {"type": "int", "low": 0, "high": 64, "step": 32},
              "model.peft.vision.rank": {"type": "categorical", "choices": [4, 8]}}
    search = prepare(str(write_spec(training, tmp_path, params)), [])
    assert set(search.hpo.params) == set(params)
    params["train.siglip.chunk_size"]["low"] = -32
    with pytest.raises(ConfigError) as err:
        prepare(str(write_spec(training, tmp_path, params)), [])
    assert str(err.value).startswith('hpo.params."train.siglip.chunk_size": train.siglip.chunk_size = -32 is not a '
                                     "valid spec value: chunk size must be an integer >= 0")


def test_trials_left_running_by_a_dead_worker_or_stopped_by_ctrl_c_are_queued_again(tmp_path):
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState

    from core.hpo import study as studies
    from core.spec.load import load_config

    hpo = load_config(None).hpo
    study = studies.open_study(hpo, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for number, (worker, attrs) in enumerate([(f"{studies.socket.gethostname()}:{dead.pid}", {}),
                                              (studies.WORKER, {}), ("elsewhere:1", {}),
                                              (studies.WORKER, {"interrupted": True})]):
        trial = study.ask({"train.optim.vision_lr": FloatDistribution(0, 1)})
        trial.set_user_attr("worker", worker)
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
        if attrs:
            study.tell(trial, state=TrialState.FAIL)
    assert studies.requeue_interrupted(study) == [0, 3]
    assert [t.state.name for t in study.trials] == ["FAIL", "RUNNING", "RUNNING", "FAIL", "WAITING", "WAITING"]
    assert [t.user_attrs.get("requeued_from") for t in study.trials[4:]] == [0, 3]
    assert studies.requeue_interrupted(study) == []  # once only


def test_a_continued_study_does_not_replay_the_proposals_of_the_run_before(tmp_path):
    from core.hpo import space, study as studies
    from core.spec.config import HpoParam
    from core.spec.load import load_config

    cfg = load_config(None, ["hpo.sampler=tpe"])
    cfg.hpo.params = {"train.optim.vision_lr": HpoParam(type="float", low=1e-5, high=1e-3, log=True)}
    proposed = []
    for _ in range(2):  # two runs of core hpo on one study
        study = studies.open_study(cfg.hpo, tmp_path)
        for _ in range(2):
            trial = study.ask()
            proposed.append(space.suggest(trial, cfg.hpo.params)["train.optim.vision_lr"])
            study.tell(trial, 0.5)
    assert len(set(proposed)) == 4


def test_show_before_any_run_says_there_is_no_study_yet(tmp_path, training):
    done = hpo(training, write_spec(training, tmp_path), "--show")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "core hpo --show: there is no study in" in done.stderr and "run `core hpo -c <spec>` first" in done.stderr


def test_a_get_spec_file_takes_the_readme_params_tables(tmp_path):
    from core.spec.load import get_spec, load_config

    spec = tmp_path / "clip.toml"
    spec.write_text(get_spec() + '\n[hpo.params."train.optim.vision_lr"]\nlow = 1e-5\nhigh = 1e-3\nlog = true\n')
    assert load_config(spec).hpo.params["train.optim.vision_lr"].high == 1e-3
