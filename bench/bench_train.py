"""Training throughput and peak memory: ``core train`` against open_clip's own loop
(``open_clip_train``), same model, data, batch, precision and threads, on this CPU, in one run.

    python bench/bench_train.py                  # clipcore-demo-tiny, 2048 demo pairs, batch 64, fp32
    python bench/bench_train.py --n 4096 --batch 128 --epochs 3
    python bench/bench_train.py --model openclip:ViT-B-16 --n 128 --batch 32 --precision bf16 \
        --variants core,core+compile,open_clip,open_clip+compile --flops

The data is the demo scenes (``core.cli.demo_data``) with one caption per image, written both as a
custom-format folder (clipcore) and as the CSV that ``open_clip_train`` reads. Both loops run the
``clipcore-demo-tiny`` open_clip architecture from scratch with the CLIP loss, AdamW (lr 1e-3,
wd 0.1, betas 0.9/0.98, eps 1e-6, 10 warmup steps), the same augmentation (random resized crop
scale 0.9-1, no colour jitter), data loading in the training process (``workers 0``) and no
validation, each in its own fresh process. Throughput is the samples of the last epoch divided
by its wall time (data loading included, start-up, compilation and checkpoint writing excluded:
earlier epochs warm up); peak memory is the process's maximum resident set size. The variants
(``--variants``: ``core`` and ``open_clip``, each optionally ``+compile``: ``train.compile`` /
``--torchcompile``) alternate over ``--rounds`` rounds (``bench/protocol.py``); the figures are
medians and per-round ratios against ``open_clip`` with their min–max. ``--model`` is a clipcore
model type (``openclip:<name>`` is open_clip's ``<name>`` on the open_clip side).

``--flops`` also counts one training step's FLOPs (``torch.utils.flop_counter``: forward, loss and
backward of the clipcore model at the batch size) and measures this CPU's matmul peak at the
precision (4096² ``torch.mm``, the bench's thread count, best of 5), and prints each variant's
achieved FLOP/s and its share of that peak.
open_clip_train needs ``pandas`` (``pip install -e ".[bench]"``).
"""

from __future__ import annotations

import argparse
import csv
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import protocol

REPO = Path(__file__).resolve().parents[1]
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
        f"results_dir={Path(args.workdir) / 'core'}", f"model.type={args.model}", "model.pretrained=false",
        f"train.compile={str(args.compile).lower()}",
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
        "--model", args.model.removeprefix("openclip:"), "--batch-size", str(args.batch), "--epochs", str(args.epochs),
        "--lr", str(LR), "--wd", str(WD), "--warmup", str(WARMUP), "--beta1", str(BETAS[0]),
        "--beta2", str(BETAS[1]), "--eps", str(EPS), "--workers", "0", "--precision", precision,
        "--logs", str(Path(args.workdir) / "open_clip_logs"), "--name", f"bench-{time.time_ns()}",
        "--save-frequency", "0", "--zeroshot-frequency", "0", "--log-every-n-steps", "50",
        "--aug-cfg", "scale=(0.9, 1.0)", "--seed", "0", "--report-to", "",
        *(["--torchcompile"] if args.compile else []),
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


def _step(args):
    """``step()``: one forward, CLIP loss and backward of the clipcore model at the batch size."""
    import torch

    from core.registry import get_registry
    from core.runtime.build import build_model
    from core.spec.load import load_config

    torch.set_num_threads(args.threads)
    cfg = load_config(None, [f"model.type={args.model}", "model.pretrained=false", "train.loss_type=clip"])
    model = build_model(cfg).train()
    loss = get_registry().get("losses", "clip", key="train.loss_type").build(cfg)
    pre = model.preprocess
    images = torch.randn(args.batch, 3, pre.height, pre.width)
    ids = model.tokenizer(["a photo of a small red square on the left"] * args.batch)

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.precision == "bf16"):
            out = model(images, ids, output_dict=True)
            value = loss(out["image_features"], out["text_features"], out["logit_scale"], out["logit_bias"])
        (value["loss"] if isinstance(value, dict) else value).backward()
    return step


def count_flops(args) -> None:
    """One training step's FLOPs and the matmul peak, printed as a RESULT line."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    step = _step(args)
    with FlopCounterMode(display=False) as counter:
        step()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]
    a, b = torch.randn(4096, 4096, dtype=dtype), torch.randn(4096, 4096, dtype=dtype)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * 4096 ** 3 / (time.perf_counter() - start))
    print("RESULT " + json.dumps({"step_flops": counter.get_total_flops(), "matmul_peak": best}))


def profile(args) -> None:
    """Where an eager training step's time goes: the top operators by self CPU time (a warm step)."""
    import torch

    step = _step(args)
    step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


# --------------------------------------------------------------------------- parent
def measure(system: str, args) -> dict:
    name, _, compiled = system.partition("+")
    cmd = [sys.executable, __file__, "--child", name, "--n", str(args.n), "--batch", str(args.batch),
           "--epochs", str(args.epochs), "--precision", args.precision, "--threads", str(args.threads),
           "--workdir", args.workdir, "--model", args.model, *(["--compile"] if compiled else [])]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    for outputs in ("core", "open_clip_logs"):  # checkpoints: 1.8 GB a run at ViT-B size
        shutil.rmtree(Path(args.workdir) / outputs, ignore_errors=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{system} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="clipcore-demo-tiny", help="clipcore model type (random weights)")
    parser.add_argument("--n", type=int, default=2048, help="training pairs")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2, help="the last epoch is timed")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each loop")
    parser.add_argument("--variants", default="core,open_clip",
                        help="comma-separated: core, open_clip, each optionally +compile")
    parser.add_argument("--flops", action="store_true", help="also the FLOP/s achieved and the matmul peak")
    parser.add_argument("--profile", action="store_true", help="only profile one eager step of the clipcore model")
    parser.add_argument("--workdir", default="/tmp/clipcore_bench_train")
    parser.add_argument("--child", choices=["core", "open_clip", "flops"], help=argparse.SUPPRESS)
    parser.add_argument("--compile", action="store_true", help=argparse.SUPPRESS)
    protocol.add_arguments(parser)
    args = parser.parse_args()
    if args.child == "flops":
        return count_flops(args)
    if args.profile:
        return profile(args)
    if args.child:
        return child(args)
    rounds = protocol.Rounds.from_args(args)
    variants = args.variants.split(",")
    write_data(Path(args.workdir) / "data", args.n)
    rounds.run({system: lambda system=system: measure(system, args) for system in variants})
    flops = measure("flops", args) if args.flops else None
    print(f"{args.model}, {args.n} pairs, batch {args.batch}, {args.precision}, {args.threads} threads, "
          f"epoch {args.epochs} timed")
    theirs = [v for v in variants if v.startswith("open_clip")]
    baseline = max(theirs, key=lambda v: rounds.median(v, "samples_per_s")) if theirs else None
    print(f"ratios against open_clip's fastest variant here: {baseline}")
    header = "| variant | samples/s | × open_clip | peak RSS MiB | × open_clip |" + (
        " FLOP/s | share of matmul peak |" if flops else "")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for system in variants:
        row = [system, f"{rounds.median(system, 'samples_per_s'):.2f}",
               str(rounds.ratio(system, baseline, "samples_per_s")) if baseline else "",
               f"{rounds.median(system, 'peak_rss_mib'):.0f}",
               str(rounds.ratio(system, baseline, "peak_rss_mib")) if baseline else ""]
        if flops:
            achieved = flops["step_flops"] / args.batch * rounds.median(system, "samples_per_s")
            row += [f"{achieved / 1e9:.1f} G", f"{achieved / flops['matmul_peak']:.0%}"]
        print("| " + " | ".join(row) + " |")
    if flops:
        print(f"one step: {flops['step_flops'] / 1e12:.2f} TFLOP; matmul peak at {args.precision}: "
              f"{flops['matmul_peak'] / 1e9:.0f} GFLOP/s")
    print(rounds.footer())


if __name__ == "__main__":
    main()
