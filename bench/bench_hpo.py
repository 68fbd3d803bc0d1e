"""`core hpo` on the demo, CPU: what a 12-trial search with the median pruner saves and finds, and
what a trial costs beyond its training.

    python bench/bench_hpo.py --work /tmp/hpo-bench          # about 30 min on 2 cores

1. **The search** (once; the trials are the samples): the demo (`core demo`'s data, spec and
   recipe: 5000 pairs, 6 epochs, batch 64) searched over `train.optim.vision_lr`,
   `train.optim.text_lr`, `train.optim.warmup_steps` and the loss's logit init
   (`model.init_logit_scale`), TPE sampler, median pruner, one trial at a time. Trial 0 is the
   demo's default recipe (queued first), so "best against default" compares runs of the same
   budget. Reported: pruned trials, the optimizer steps pruning saved against running every trial
   to the end, target R@1 (text→image) of the default and of the best trial, and each finished
   trial's overhead: its wall time outside training (the span from the first step to the last
   validation in its ``rank0.log``), as a share of the trial.
2. **Alternating rounds** (``--rounds``, ``bench/protocol.py``): a short run of the default
   recipe by ``core train`` against the same run as a one-trial ``core hpo`` study: the wall-time
   ratio is what ``core hpo`` adds around a run.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import protocol

REPO = Path(__file__).resolve().parents[1]
METRIC, SHOWN = "val/t2i_mAP", "val/t2i_R@1"
SPACE = {
    "train.optim.vision_lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
    "train.optim.text_lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
    "train.optim.warmup_steps": {"type": "int", "low": 0, "high": 200, "step": 20},
    "model.init_logit_scale": {"type": "float", "low": 1.0, "high": math.log(100)},
}


def core(*args: str) -> float:
    """Run a ``core`` command; its wall time in seconds."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "core.cli.main", *args], cwd=REPO, check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def write_specs(work: Path, n: int, epochs: int) -> Path:
    """The demo's data and spec under ``work`` (``core demo-data`` + the demo template)."""
    from core.cli import demo, demo_data

    if not (work / "data" / "dataset.toml").is_file():
        demo_data.generate(work / "data", n=n, val=500, class_images=0, detection_frames=0, force=True)
    return demo.write_spec(work, epochs=epochs, seed=0)


def with_hpo(spec: Path, out: Path, hpo: dict) -> Path:
    import tomli
    import tomli_w

    data = tomli.loads(spec.read_text())
    data["hpo"] = hpo
    out.write_text(tomli_w.dumps(data))
    return out


def _seconds(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def training_span(log: Path) -> float:
    """Seconds from the run's start of training to its last validation, from ``rank0.log``."""
    lines = log.read_text().splitlines()
    start = next(line for line in lines if " steps/epoch × " in line)[:23]
    end = [line for line in lines if " validation at epoch " in line][-1][:23]
    return _seconds(end) - _seconds(start)


def search(work: Path, demo_spec: Path, force: bool) -> str:
    import optuna
    import tomli

    defaults = tomli.loads(demo_spec.read_text())
    out = work / "results" / "hpo"
    spec = with_hpo(demo_spec, work / "search.toml", {"n_trials": 12, "sampler": "tpe", "pruner": "median",
                                                     "seed": 0, "params": SPACE})
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{out / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name="clipcore", direction="maximize", load_if_exists=True)
    if not study.trials:
        optim = defaults["train"]["optim"]
        study.enqueue_trial({"train.optim.vision_lr": optim["vision_lr"], "train.optim.text_lr": optim["text_lr"],
                             "train.optim.warmup_steps": optim["warmup_steps"],
                             "model.init_logit_scale": round(math.log(1 / 0.07), 6)})
    rounds = protocol.Rounds(1, force)  # one search, checked like a round: idle before, no foreign load during
    rounds.run({"search": lambda: {"seconds": core("hpo", "-c", str(spec))}}, progress=False)
    study = optuna.load_study(study_name="clipcore", storage=storage)
    finished = [t for t in study.trials if t.state.name == "COMPLETE"]
    pruned = [t for t in study.trials if t.state.name == "PRUNED"]
    total_steps = max(max(t.intermediate_values) for t in finished)
    saved = sum(total_steps - max(t.intermediate_values, default=0) for t in pruned) / (len(study.trials) * total_steps)

    def final(trial, key=SHOWN) -> float:
        records = (out / f"trial_{trial.number:04d}" / "train" / "metrics.jsonl").read_text().splitlines()
        return [json.loads(r) for r in records if key in r][-1][key]

    overhead = []
    for t in finished:
        wall = (t.datetime_complete - t.datetime_start).total_seconds()
        overhead.append(1 - training_span(out / f"trial_{t.number:04d}" / "train" / "logs" / "rank0.log") / wall)
    best = study.best_trial
    return "\n".join([
        f"search: {len(study.trials)} trials, {len(pruned)} pruned, {len(finished)} run to the end; pruning saved "
        f"{saved:.0%} of the optimizer steps of running all {len(study.trials)} to the end; "
        f"{rounds.results['search'][0]['seconds'] / 60:.1f} min",
        f"default recipe (trial 0): {METRIC} {study.trials[0].value:.4f}, {SHOWN} {final(study.trials[0]):.4f}",
        f"best (trial {best.number}): {METRIC} {best.value:.4f}, {SHOWN} {final(best):.4f} with "
        + ", ".join(f"{k} = {v:.4g}" for k, v in best.params.items()),
        f"overhead per finished trial (wall time outside training and validation): median {statistics.median(overhead):.1%} "
        f"({min(overhead):.1%}–{max(overhead):.1%})",
        rounds.footer()])


def wrapper_rounds(work: Path, demo_spec: Path, args: argparse.Namespace) -> str:
    import tomli

    optim = tomli.loads(demo_spec.read_text())["train"]["optim"]
    fixed = {k: {"type": "categorical", "choices": [optim[k.rsplit(".", 1)[1]]]} for k in ("train.optim.vision_lr",)}
    short = ["train.num_epochs=1", "train.checkpoint_interval=1"]
    spec = with_hpo(demo_spec, work / "one_trial.toml", {"n_trials": 1, "sampler": "random", "pruner": "none",
                                                         "params": fixed})
    count = {"train": 0, "hpo": 0}

    def train() -> dict:
        count["train"] += 1
        return {"seconds": core("train", "-c", str(demo_spec), *short, f"results_dir={work}/rounds/train{count['train']}")}

    def hpo() -> dict:
        count["hpo"] += 1
        return {"seconds": core("hpo", "-c", str(spec), *short, f"results_dir={work}/rounds/hpo{count['hpo']}")}

    rounds = protocol.Rounds.from_args(args)
    rounds.run({"core train": train, "core hpo, one trial": hpo})
    return (f"one demo epoch: core train {statistics.median(rounds.values('core train', 'seconds')):.1f} s, as a "
            f"one-trial core hpo study {statistics.median(rounds.values('core hpo, one trial', 'seconds')):.1f} s: "
            f"{rounds.ratio('core hpo, one trial', 'core train', 'seconds')}\n{rounds.footer()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the data, the study and the runs")
    parser.add_argument("--n", type=int, default=5000, help="training pairs (default 5000, the demo's)")
    parser.add_argument("--epochs", type=int, default=6, help="epochs per trial (default 6, the demo's)")
    parser.add_argument("--skip-search", action="store_true", help="only the alternating rounds")
    protocol.add_arguments(parser)
    args = parser.parse_args()
    work = args.work.resolve()
    demo_spec = write_specs(work, args.n, args.epochs)
    if not args.skip_search:
        print(search(work, demo_spec, args.force), flush=True)
    print(wrapper_rounds(work, demo_spec, args))


if __name__ == "__main__":
    main()
