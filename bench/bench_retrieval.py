"""Retrieval metrics at scale: clipcore's chunked exact metrics vs the naive full-matrix computation.

    .venv/bin/python bench/bench_retrieval.py            # side by side at 2,000 x 10,000, D = 1152
    .venv/bin/python bench/bench_retrieval.py --full     # and clipcore alone at 20,000 images x 100,000 captions

Data: random unit image embeddings, 5 captions per image, each caption its image plus noise
(renormalised), so the metrics are neither 0 nor 1. Each measurement runs in a fresh process;
peak memory is that process's peak resident set (``ru_maxrss``) minus its resident set once
torch is imported and the embeddings exist, i.e. what the metric computation itself adds.

The naive computation (one ``N x M`` score matrix, a full argsort per direction, hit masks and
cumulative sums, as TAO and most scripts do it) needs about 40 bytes per image-caption pair, far
more than this machine has at full size, so it runs at ``--naive-scale`` of each dimension
(same data generator, same seed). The side-by-side ratios are taken at that size, where both run
and agree, over ``--rounds`` alternating rounds (``bench/protocol.py``): median per-round ratio
with its min–max. ``--full`` then runs clipcore once at full size for its memory (which does not
depend on load) and extrapolates the naive computation's memory by the number of pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import protocol

CAPTIONS_PER_IMAGE = 5


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_data(n_images: int, n_captions: int, dim: int, seed: int):
    """Unit image embeddings and noisy unit captions, written chunk by chunk (no large temporaries)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n_images, dim, generator=gen)
    images /= images.norm(dim=1, keepdim=True)
    caption_image = torch.arange(n_captions) % n_images
    texts = torch.empty(n_captions, dim)
    for start in range(0, n_captions, 8192):
        rows = slice(start, min(start + 8192, n_captions))
        chunk = images[caption_image[rows]] + torch.randn(rows.stop - rows.start, dim, generator=gen) * (12 / dim**0.5)
        texts[rows] = chunk / chunk.norm(dim=1, keepdim=True)
    return images, texts, caption_image


def naive_metrics(images, texts, caption_image, ks=(1, 5, 10)) -> dict[str, float]:
    """The full-matrix computation: score everything, argsort every row, read ranks off masks."""
    import torch

    scores = images @ texts.T
    out = {}
    image_ids = torch.arange(len(images))
    for name, rows, query_label, gallery_label in (("i2t", scores, image_ids, caption_image),
                                                   ("t2i", scores.T, caption_image, image_ids)):
        order = torch.argsort(rows, dim=1, descending=True)
        hit = gallery_label[order] == query_label[:, None]
        del order
        n_pos = hit.sum(1)
        keep = n_pos > 0
        hit, n_pos = hit[keep], n_pos[keep]
        rank1 = hit.int().argmax(1) + 1
        found = hit.cumsum(1)
        position = torch.arange(1, hit.shape[1] + 1)
        ap = ((found / position) * hit).sum(1) / n_pos
        n_neg = hit.shape[1] - n_pos
        above = (position - found) * hit  # negatives ranked above each positive
        auc = (1 - above / n_neg[:, None].clamp(min=1)).mul(hit).sum(1) / n_pos
        del found, above
        for k in ks:
            out[f"{name}_R@{k}"] = (rank1 <= k).float().mean().item()
        out[f"{name}_mAP"] = ap.mean().item()
        out[f"{name}_MedR"] = rank1.float().quantile(0.5).item()
        out[f"{name}_MeanR"] = rank1.float().mean().item()
        out[f"{name}_AUC"] = auc.mean().item()
    return out


def worker(args: argparse.Namespace) -> None:
    import torch

    from core.eval.metrics import retrieval_metrics

    torch.set_grad_enabled(False)
    images, texts, caption_image = make_data(args.images, args.captions, args.dim, args.seed)
    base = rss_bytes()
    start = time.perf_counter()
    if args.worker == "ours":
        result = retrieval_metrics(images, texts, caption_image)
    else:
        result = naive_metrics(images, texts, caption_image)
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "extra_bytes": max(0, peak_rss_bytes() - base),
                      "peak_bytes": peak_rss_bytes(), "metrics": result}))


def measure(which: str, n_images: int, n_captions: int, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", which, "--images", str(n_images), "--captions",
           str(n_captions), "--dim", str(args.dim), "--seed", str(args.seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{which} at {n_images}x{n_captions} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--captions", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1152)
    parser.add_argument("--naive-scale", type=float, default=0.1,
                        help="fraction of each dimension the side-by-side rounds run at (default 0.1)")
    parser.add_argument("--full", action="store_true", help="also measure clipcore's memory at full size (one run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--worker", choices=["ours", "naive"], help=argparse.SUPPRESS)
    protocol.add_arguments(parser)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    rounds = protocol.Rounds.from_args(args)

    import torch

    total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    small = (max(1, int(args.images * args.naive_scale)), max(CAPTIONS_PER_IMAGE, int(args.captions * args.naive_scale)))
    print(f"CPU threads: {torch.get_num_threads()}, RAM: {gib(total_ram)}, D = {args.dim}")

    rounds.run({which: lambda which=which: measure(which, *small, args) for which in ("naive", "ours")})
    naive, ours = rounds.results["naive"][-1], rounds.results["ours"][-1]
    drift = max(abs(naive["metrics"][k] - ours["metrics"][k]) for k in naive["metrics"])
    print(f"\n{small[0]:,} images x {small[1]:,} captions (both run; medians):")
    for which in ("naive", "ours"):
        print(f"  {which:6} {rounds.median(which, 'seconds'):8.1f} s   +{gib(rounds.median(which, 'extra_bytes'))}")
    print(f"  naive/ours: time {rounds.ratio('naive', 'ours', 'seconds')}, memory "
          f"{rounds.ratio('naive', 'ours', 'extra_bytes')}; max metric difference {drift:.2e}")
    print(f"  {rounds.footer()}")
    if not args.full:
        return
    full = measure("ours", args.images, args.captions, args)
    naive_bytes = rounds.median("naive", "extra_bytes") * args.images * args.captions / (small[0] * small[1])
    print(f"\n{args.images:,} images x {args.captions:,} captions, clipcore alone (one run): "
          f"+{gib(full['extra_bytes'])} (peak process RSS {gib(full['peak_bytes'])}); the naive computation would "
          f"need ~{gib(naive_bytes)} ({'does not fit' if naive_bytes > total_ram else 'fits'} in {gib(total_ram)} RAM), "
          f"~{naive_bytes / max(full['extra_bytes'], 1):.0f}x more; metrics: "
          + ", ".join(f"{k} {full['metrics'][k]:.3f}" for k in ("i2t_R@1", "t2i_R@1", "t2i_mAP", "t2i_AUC")))


if __name__ == "__main__":
    main()
