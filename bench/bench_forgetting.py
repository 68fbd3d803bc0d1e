"""Fine-tuning that keeps what the model knew, on a domain shift: full fine-tuning, LoRA, LoRA + the
forgetting regularizer, and WiSE-FT of the full and the LoRA run, in one run.

    python bench/bench_forgetting.py --work /tmp/forgetting            # 5 alternating rounds
    python bench/bench_forgetting.py --work /tmp/forgetting --rounds 7

Data: ``core demo-data --domain general`` (six colours) to pretrain ``clipcore-demo-tiny`` from
scratch, and ``--domain shifted`` (four colours the general split never shows) to fine-tune on.
The target is the shifted validation split (``dataset.val``); the guard set (``dataset.reference``)
is the general validation split: what the pretrained model knew. Every fine-tuning run starts
from the same pretrained checkpoint (``train.pretrained_model_path``) with the same data order.

Columns, per row:

- trainable parameters (``requires_grad`` after the model is set up);
- peak training memory: the largest resident set size while a training step runs (the kernel's
  high-water mark, reset before each step) minus the resident set of the process once its
  libraries are imported, before the model is built: weights (and the teacher), gradients,
  optimizer state, activations and the data loader's buffers;
- steps/s: optimizer steps over the time spent in them (data loading and validation excluded);
- target R@1 (``val/t2i_R@1``) and its gain over the pretrained model;
- the reference drop: the guard set's ``t2i_R@1`` before fine-tuning minus after.

The three training variants alternate over ``--rounds`` rounds (``bench/protocol.py``), each run in
a fresh process; memory and speed are medians over rounds with min–max, the ratios per round
against full fine-tuning. Accuracy comes from the last round (the runs are seeded; the table
says whether every round gave the same values). The WiSE-FT rows are ``core wise-ft`` on the last
round's full and LoRA checkpoints (α in 0:1:0.1, chosen: the best target R@1 whose reference
drop is at most 1 point); their training columns are those of the run they interpolate.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import protocol

REPO = Path(__file__).resolve().parents[1]
TARGET, GUARD = "val/t2i_R@1", "ref/t2i_R@1"
LORA_LR = 1e-3
VARIANTS = {
    "full fine-tuning": [],
    "LoRA": ["model.peft.enabled=true", f"train.optim.vision_lr={LORA_LR}", f"train.optim.text_lr={LORA_LR}"],
    "LoRA + regularizer": ["model.peft.enabled=true", f"train.optim.vision_lr={LORA_LR}",
                           f"train.optim.text_lr={LORA_LR}", "model.regularization.enabled=true"],
}
WISE_FT = {"full + WiSE-FT": "full fine-tuning", "LoRA + WiSE-FT": "LoRA"}


# --------------------------------------------------------------------------- one training run (child process)
def _memory_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def child(spec: str, overrides: list[str], out: str) -> None:
    """Train ``spec`` with ``overrides`` in this process and write what the parent measures to ``out``."""
    import open_clip  # noqa: F401  the libraries a run imports, so that "before" holds them
    import peft  # noqa: F401
    import torch
    import torch.utils.tensorboard  # noqa: F401

    from core.registry import get_registry
    from core.spec.load import load_config
    from core.train.trainer import Trainer

    torch.set_num_threads(2)
    get_registry()
    before = _memory_kib("VmRSS")
    trainer = Trainer(load_config(spec, overrides))
    timed = {"seconds": 0.0, "steps": 0, "peak": 0}
    step = trainer.train_step

    def measured_step(batches):
        Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark to the current RSS
        start = time.perf_counter()
        result = step(batches)
        timed["seconds"] += time.perf_counter() - start
        timed["steps"] += 1
        timed["peak"] = max(timed["peak"], _memory_kib("VmHWM"))
        return result

    trainer.train_step = measured_step
    trainable = sum(p.numel() for p in trainer.clip.parameters() if p.requires_grad)
    total = sum(p.numel() for p in trainer.clip.parameters())
    trainer.train()
    records = [json.loads(line) for line in (trainer.out_dir / "metrics.jsonl").read_text().splitlines()]
    validations = [r for r in records if TARGET in r]
    Path(out).write_text(json.dumps({
        "trainable": trainable, "parameters": total, "steps_per_s": timed["steps"] / timed["seconds"],
        "memory_mb": (timed["peak"] - before) / 1024, "target": validations[-1][TARGET],
        "reference": validations[-1][GUARD], "reference_before": trainer.reference_baseline[GUARD],
        "checkpoint": str(trainer.out_dir / "latest.pth")}))


def train(spec: Path, overrides: list[str], results: Path) -> dict:
    out = results / "measured.json"
    subprocess.run([sys.executable, __file__, "--child", str(spec), str(out), *overrides,
                    f"results_dir={results}"], check=True, cwd=REPO)
    return json.loads(out.read_text())


# --------------------------------------------------------------------------- set-up
def prepare(work: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The two data domains, the pretrained checkpoint and the fine-tuning spec."""
    import tomli_w

    from core.cli import demo, demo_data

    for domain, n in (("general", args.n_general), ("shifted", args.n_shifted)):
        if not (work / domain / "data" / "dataset.toml").is_file():
            demo_data.generate(work / domain / "data", n=n, val=args.val, domain=domain, class_images=0,
                               detection_frames=0, force=True)
    pretrain = demo.write_spec(work / "general", epochs=args.pretrain_epochs, seed=0)
    pretrained = work / "general" / "results" / "train" / "latest.pth"
    if not pretrained.is_file():
        subprocess.run([sys.executable, "-m", "core.cli.main", "train", "-c", str(pretrain)], check=True, cwd=REPO)
    spec = demo.write_spec(work / "shifted", epochs=args.epochs, seed=0)
    import tomli

    table = tomli.loads(spec.read_text())
    general = tomli.loads((work / "general" / "data" / "dataset.toml").read_text())["dataset"]
    table["dataset"]["reference"] = {"datasets": general["val"]["datasets"], "batch_size": 250, "num_workers": 0}
    table["train"].update(pretrained_model_path=str(pretrained), checkpoint_interval=args.epochs,
                          validation_interval=args.epochs)
    table["train"]["optim"].update(vision_lr=args.lr, text_lr=args.lr, warmup_steps=20)
    spec.write_text(tomli_w.dumps(table))
    return spec, pretrained


def wise_ft(spec: Path, checkpoint: str, overrides: list[str], results: Path) -> dict:
    subprocess.run([sys.executable, "-m", "core.cli.main", "wise-ft", "-c", str(spec), "--finetuned", checkpoint,
                    *overrides, f"results_dir={results}"], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return json.loads((results / "wise_ft" / "results.json").read_text())


# --------------------------------------------------------------------------- report
def spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} ({format(min(values), fmt)}–{format(max(values), fmt)})"


def report(rounds: protocol.Rounds, wise: dict[str, dict], start_target: float) -> str:
    lines = ["| | trainable parameters | peak training memory, MB | steps/s | target R@1 (gain) | "
             "reference R@1 drop |", "|---|---|---|---|---|---|"]
    full_gain = rounds.results["full fine-tuning"][-1]["target"] - start_target
    for name in VARIANTS:
        runs = rounds.results[name]
        last = runs[-1]
        same = all(r["target"] == last["target"] and r["reference"] == last["reference"] for r in runs)
        memory = spread(rounds.values(name, "memory_mb"), ".0f")
        speed = spread(rounds.values(name, "steps_per_s"), ".2f")
        if name != "full fine-tuning":
            memory += f", {rounds.ratio(name, 'full fine-tuning', 'memory_mb')} of full"
            speed += f", {rounds.ratio(name, 'full fine-tuning', 'steps_per_s')}"
        gain = last["target"] - start_target
        lines.append(f"| {name} | {last['trainable']:,} ({last['trainable'] / last['parameters']:.1%}) | {memory} | "
                     f"{speed} | {last['target']:.3f} ({gain:+.3f}, {gain / full_gain:.0%} of full)"
                     f"{'' if same else ' (rounds differ)'} | {last['reference_before'] - last['reference']:.3f} |")
    for name, base in WISE_FT.items():
        result = wise[name]
        chosen = next(r for r in result["alphas"] if r["alpha"] == result["rule"]["alpha"])
        first = result["alphas"][0]["metrics"]
        gain = chosen["metrics"][TARGET] - start_target
        lines.append(f"| {name} (α = {chosen['alpha']:.1f}) | as {base} | as {base} | as {base} | "
                     f"{chosen['metrics'][TARGET]:.3f} ({gain:+.3f}, {gain / full_gain:.0%} of full) | "
                     f"{first[GUARD] - chosen['metrics'][GUARD]:.3f} |")
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[4:], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="folder for the data, checkpoints and runs")
    parser.add_argument("--n-general", type=int, default=5000, help="general-domain training pairs (default 5000)")
    parser.add_argument("--n-shifted", type=int, default=1500, help="shifted-domain training pairs (default 1500)")
    parser.add_argument("--val", type=int, default=500, help="validation pairs of each domain (default 500)")
    parser.add_argument("--pretrain-epochs", type=int, default=6, help="pretraining epochs (default 6)")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (default 3)")
    parser.add_argument("--lr", type=float, default=2e-4, help="full fine-tuning learning rate (default 2e-4)")
    protocol.add_arguments(parser)
    args = parser.parse_args()
    work = args.work.resolve()
    rounds = protocol.Rounds.from_args(args)
    spec, _ = prepare(work, args)
    counter = {name: 0 for name in VARIANTS}

    def variant(name: str):
        def run() -> dict:
            counter[name] += 1
            slug = name.replace(" + ", "-").replace(" ", "-").lower()
            return train(spec, VARIANTS[name], work / "runs" / slug / f"round{counter[name]}")
        return run

    rounds.run({name: variant(name) for name in VARIANTS})
    wise = {name: wise_ft(spec, rounds.results[base][-1]["checkpoint"], VARIANTS[base],
                          work / "wise" / base.split()[0].lower()) for name, base in WISE_FT.items()}
    start_target = wise["full + WiSE-FT"]["alphas"][0]["metrics"][TARGET]
    print(f"pretrained on {args.n_general} general pairs ({args.pretrain_epochs} epochs); fine-tuned on "
          f"{args.n_shifted} shifted pairs ({args.epochs} epochs, batch 64, fp32); target R@1 before fine-tuning "
          f"{start_target:.3f}")
    print(report(rounds, wise, start_target))
    print(rounds.footer())


if __name__ == "__main__":
    main()
