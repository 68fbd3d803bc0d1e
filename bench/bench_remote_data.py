"""Demo training from object storage against local files: the data cache's cold and warm epochs.

    python bench/bench_remote_data.py --work /tmp/remote            # 5 alternating rounds
    python bench/bench_remote_data.py --work /tmp/remote --n 5000

Data: ``core demo-data`` (``--n`` training pairs) laid out as TAO's job specs do:
``images.tar.gz``, ``captions.tar.gz`` and ``image_list.txt``. The same three files are read from
the local disk (``local``) and from ``s3://`` on moto's S3 server on loopback (``s3``: the
server runs in its own process, requests authenticated). Each round trains ``clipcore-demo-tiny``
for two epochs with the demo's settings (batch 64, one loader worker, no validation), each run a
fresh ``core train`` process, the S3 run with an empty cache.

Per run, from ``metrics.jsonl`` (one train record per epoch):

- epoch 1 (cold): pairs over the time from the process start to the end of epoch 1: start-up,
  model build, the cache fill (S3) or the archive read (local), and the epoch;
- epoch 2 (warm): pairs over the epoch's own time.

The ratio is S3 over local per round (median, min–max). Target: warm within 5 % of local.
Loopback has no network latency or bandwidth limit: the cold figure is a floor for a real store.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import protocol

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the tests' S3 server helper
from tests import s3_server  # noqa: E402
from tests.s3_server import tar_folder  # noqa: E402

BATCH = 64


def prepare(work: Path, n: int) -> dict[str, str]:
    """Demo data as TAO's layout under ``work/local``; returns the data folder."""
    data, local = work / "data", work / "local"
    if not (local / "images.tar.gz").is_file():
        subprocess.run([sys.executable, "-m", "core.cli.main", "demo-data", str(data), "--n", str(n), "--val", "16",
                        "--class-images", "0", "--detection-frames", "0", "--force"], check=True, cwd=REPO)
        local.mkdir(parents=True, exist_ok=True)
        tar_folder(data / "train" / "images", local / "images.tar.gz")
        tar_folder(data / "train" / "captions", local / "captions.tar.gz")
        names = sorted(p.name for p in (data / "train" / "images").iterdir())
        (local / "image_list.txt").write_text("\n".join(names) + "\n")
    return local


def spec(work: Path, root: str, n: int) -> Path:
    steps = n // BATCH
    text = f"""
[model]
type = "clipcore-demo-tiny"
pretrained = false

[train]
num_epochs = 2
loss_type = "clip"
precision = "fp32"
log_every_n_steps = {steps}
checkpoint_interval = 2
loggers = []

[dataset]
cache_dir = "{work / 'cache'}"

[dataset.train]
batch_size = {BATCH}
num_workers = 1

[[dataset.train.datasets]]
image_dir = "{root}/images.tar.gz"
caption_dir = "{root}/captions.tar.gz"
image_list_file = "{root}/image_list.txt"
caption_mode = "lines"

[dataset.augmentation]
scale = [1.0, 1.0]
color_jitter = []
grayscale = 0.0
"""
    path = work / f"{'s3' if root.startswith('s3://') else 'local'}.toml"
    path.write_text(text)
    return path


def train(work: Path, path: Path, env: dict[str, str], n: int) -> dict[str, float]:
    """One ``core train`` run: cold and warm pairs/s."""
    results = work / "results"
    shutil.rmtree(results, ignore_errors=True)
    shutil.rmtree(work / "cache", ignore_errors=True)
    start = time.time()
    subprocess.run([sys.executable, "-m", "core.cli.main", "train", "-c", str(path), "-r", str(results)],
                   check=True, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lines = [json.loads(line) for line in (results / "train" / "metrics.jsonl").read_text().splitlines()]
    ends = [line["time"] for line in lines if "train/loss" in line]
    pairs = n // BATCH * BATCH
    return {"cold": pairs / (ends[0] - start), "warm": pairs / (ends[1] - ends[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="working folder (data, cache, results)")
    parser.add_argument("--n", type=int, default=2000, help="training pairs (default 2000)")
    protocol.add_arguments(parser)
    args = parser.parse_args()
    rounds = protocol.Rounds.from_args(args)
    args.work.mkdir(parents=True, exist_ok=True)
    local = prepare(args.work, args.n)
    server = s3_server.start()
    try:
        for name in ("images.tar.gz", "captions.tar.gz", "image_list.txt"):
            server.put(f"bench/{name}", (local / name).read_bytes())
        env = {**os.environ, **server.env}
        specs = {"local": spec(args.work, str(local), args.n), "s3": spec(args.work, f"s3://{s3_server.BUCKET}/bench", args.n)}
        rounds.run({name: (lambda p=path: train(args.work, p, env, args.n)) for name, path in specs.items()})
    finally:
        server.stop()
    print(f"demo training, {args.n} pairs, {sum(f.stat().st_size for f in local.iterdir()) / 2**20:.1f} MiB "
          "of archives; pairs/s (median over rounds, min–max):")
    print("| epoch | local | s3:// (moto on loopback) | s3 / local |\n|---|---|---|---|")
    for key, label in (("cold", "1 (cold: start-up + cache fill + epoch)"), ("warm", "2 (warm)")):
        print(f"| {label} | {rounds.median('local', key):.0f} | {rounds.median('s3', key):.0f} | "
              f"{rounds.ratio('s3', 'local', key)} |")
    print(rounds.footer())


if __name__ == "__main__":
    main()
