"""Training throughput and peak memory: ``core train`` against open_clip's own loop
(``open_clip_train``), same model, data, batch, precision and threads, on this CPU, in one run.

    python bench/bench_train.py                  # clipcore-demo-tiny, 2048 demo pairs, batch 64, fp32
    python bench/bench_train.py --n 4096 --batch 128 --epochs 3

The data is the demo scenes (``core.cli.demo_data``) with one caption per image, written both as a
custom-format folder (clipcore) and as the CSV that ``open_clip_train`` reads. Both loops run the
``clipcore-demo-tiny`` open_clip architecture from scratch with the CLIP loss, AdamW (lr 1e-3,
wd 0.1, betas 0.9/0.98, eps 1e-6, 10 warmup steps), the same augmentation (random resized crop
scale 0.9-1, no colour jitter), data loading in the training process (``workers 0``) and no
validation, each in its own fresh process. Throughput is the samples of the last epoch divided
by its wall time (data loading included, start-up and checkpoint writing excluded); peak memory
is the process's maximum resident set size. The two loops alternate over ``--rounds`` rounds
(``bench/protocol.py``); the figures are the median per-round ratios with their min–max.
open_clip_train needs ``pandas`` (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import protocol

REPO = Path(__file__).resolve().parents[1]
MODEL = "clipcore-demo-tiny"
LR, WD, WARMUP, BETAS, EPS = 1e-3, 0.1, 10, (0.9, 0.98), 1e-6


def write_data(out: Path, n: int) -> tuple[Path, Path, Path]:
    """``n`` demo pairs as images/ + captions/ (one caption per image) and a CSV of the same."""
    from core.cli.demo_data import sample

    images, captions, table = out / "images", out / "captions", out / "train.csv"
    if table.is_file() and len(table.read_text().splitlines()) == n + 1:
        return images, captions, table
    images.mkdir(parents=True, exist_ok=True)
    captions.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        s = sample(0, "train", i)
        caption = s.caption.decode("utf-8").splitlines()[0]
        path = images / f"{s.key}.png"
        path.write_bytes(s.image)
        (captions / f"{s.key}.txt").write_text(caption, encoding="utf-8")
        rows.append({"filepath": str(path), "title": caption})
    with open(table, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["filepath", "title"])
        writer.writeheader()
        writer.writerows(rows)
    return images, captions, table


# --------------------------------------------------------------------------- children
def run_core(args) -> list[float]:
    """Train with clipcore; return each epoch's wall time."""
    from core.spec.load import load_config
    from core.train.trainer import Trainer

    data = Path(args.workdir) / "data"
    overrides = [
        f"results_dir={Path(args.workdir) / 'core'}", f"model.type={MODEL}", "model.pretrained=false",
        f"train.num_epochs={args.epochs}", "train.loss_type=clip", f"train.precision={args.precision}",
        "train.checkpoint_interval=1000", "train.log_every_n_steps=50",
        f"train.optim.vision_lr={LR}", f"train.optim.text_lr={LR}", f"train.optim.weight_decay={WD}",
        f"train.optim.warmup_steps={WARMUP}", f"train.optim.betas=[{BETAS[0]}, {BETAS[1]}]", f"train.optim.eps={EPS}",
        "dataset.train.type=custom", f"dataset.train.batch_size={args.batch}", "dataset.train.num_workers=0",
        f"dataset.train.datasets.0.image_dir={data / 'images'}", f"dataset.train.datasets.0.caption_dir={data / 'captions'}",
        "dataset.augmentation.scale=[0.9, 1.0]", "dataset.augmentation.color_jitter=[]",
        "dataset.augmentation.grayscale=0.0",
    ]
    trainer = Trainer(load_config(None, overrides))
    times: list[float] = []
    epoch = trainer.train_epoch

    def timed_epoch() -> None:
        start = time.perf_counter()
        epoch()
        times.append(time.perf_counter() - start)

    trainer.train_epoch = timed_epoch
    trainer.train()
    return times


def run_open_clip(args) -> list[float]:
    """Train with open_clip_train; return each epoch's wall time."""
    import open_clip
    import open_clip_train.main as oc_main

    open_clip.add_model_config(REPO / "backbones" / "openclip" / "model_configs")
    times: list[float] = []
    train_one_epoch = oc_main.train_one_epoch

    def timed_epoch(*a, **k):
        start = time.perf_counter()
        out = train_one_epoch(*a, **k)
        times.append(time.perf_counter() - start)
        return out

    oc_main.train_one_epoch = timed_epoch
    precision = {"fp32": "fp32", "bf16": "amp_bf16", "fp16": "amp"}[args.precision]
    oc_main.main([
        "--train-data", str(Path(args.workdir) / "data" / "train.csv"), "--dataset-type", "csv",
        "--csv-separator", ",", "--csv-img-key", "filepath", "--csv-caption-key", "title",
        "--model", MODEL, "--batch-size", str(args.batch), "--epochs", str(args.epochs),
        "--lr", str(LR), "--wd", str(WD), "--warmup", str(WARMUP), "--beta1", str(BETAS[0]),
        "--beta2", str(BETAS[1]), "--eps", str(EPS), "--workers", "0", "--precision", precision,
        "--logs", str(Path(args.workdir) / "open_clip_logs"), "--name", f"bench-{time.time_ns()}",
        "--save-frequency", "0", "--zeroshot-frequency", "0", "--log-every-n-steps", "50",
        "--aug-cfg", "scale=(0.9, 1.0)", "--seed", "0", "--report-to", "",
    ])
    return times


def child(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    times = (run_core if args.child == "core" else run_open_clip)(args)
    batches = args.n // args.batch
    print("RESULT " + json.dumps({
        "epoch_seconds": times, "samples_per_s": batches * args.batch / times[-1],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


# --------------------------------------------------------------------------- parent
def measure(system: str, args) -> dict:
    cmd = [sys.executable, __file__, "--child", system, "--n", str(args.n), "--batch", str(args.batch),
           "--epochs", str(args.epochs), "--precision", args.precision, "--threads", str(args.threads),
           "--workdir", args.workdir]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{system} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2048, help="training pairs")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="the last epoch is timed")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each loop")
    parser.add_argument("--workdir", default="/tmp/clipcore_bench_train")
    parser.add_argument("--child", choices=["core", "open_clip"], help=argparse.SUPPRESS)
    protocol.add_arguments(parser)
    args = parser.parse_args()
    if args.child:
        return child(args)
    rounds = protocol.Rounds.from_args(args)
    write_data(Path(args.workdir) / "data", args.n)
    rounds.run({system: lambda system=system: measure(system, args) for system in ("core", "open_clip")})
    print(f"{MODEL}, {args.n} pairs, batch {args.batch}, {args.precision}, {args.threads} threads, "
          f"epoch {args.epochs} timed")
    print(f"{'':12}{'samples/s':>12}{'peak RSS MiB':>15}   (medians)")
    for system in ("core", "open_clip"):
        print(f"{system:12}{rounds.median(system, 'samples_per_s'):12.1f}{rounds.median(system, 'peak_rss_mib'):15.0f}")
    print(f"core/open_clip throughput {rounds.ratio('core', 'open_clip', 'samples_per_s')} (target >= 1.0); "
          f"peak memory {rounds.ratio('core', 'open_clip', 'peak_rss_mib')} (target <= 1.0)")
    print(rounds.footer())


if __name__ == "__main__":
    main()
