"""Benchmark: clipcore's ``siglip`` loss against open_clip's ``SigLipLoss`` (forward + backward).

Every variant runs in a fresh process (so peak memory is its own): one process on the whole
batch, then (``--world 2``, CPU only) two gloo processes each holding half of it. Peak memory is
the rise of the peak (process RSS on CPU, allocated CUDA memory on GPU) during the first
forward+backward over the level just before it; time is the median of the following iterations.
The variants alternate over ``--rounds`` rounds (``bench/protocol.py``), each round a fresh process
per variant; the figures are the median per-round ratios to open_clip with their min–max.
Features are fp32, L2-normalised, requires_grad.

    .venv/bin/python bench/bench_siglip_loss.py --batch 8192 --dim 768 --world 2
    python bench/bench_siglip_loss.py --device cuda --batch 32768 --dim 1152 --chunk 4096 --world 1
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import socket
import statistics
import time
from datetime import timedelta

import protocol
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F


def make_loss(variant: str, rank: int, world: int):
    if variant == "open_clip":
        from open_clip.loss import SigLipLoss

        return SigLipLoss(rank=rank, world_size=world, dist_impl="bidir")
    from losses.siglip import SigLipLoss

    impl, _, chunk = variant.removeprefix("clipcore ").partition(" chunk ")
    return SigLipLoss(dist_impl=impl, chunk_size=int(chunk))


def memory_mib(device: str) -> float:
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mib(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(rank: int, variant: str, world: int, batch: int, dim: int, iters: int, threads: int, device: str,
            port: int, queue):
    torch.set_num_threads(threads)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                             world_size=world, timeout=timedelta(minutes=10))
    loss_fn = make_loss(variant, rank, world)
    generator = torch.Generator().manual_seed(rank)
    image = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1).to(device).requires_grad_()
    text = F.normalize(torch.randn(batch, dim, generator=generator), dim=-1).to(device).requires_grad_()
    log_scale = torch.tensor(2.3, device=device, requires_grad=True)
    bias = torch.tensor(-10.0, device=device, requires_grad=True)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def step() -> float:
        if world > 1:
            torch.distributed.barrier()
        sync()
        start = time.perf_counter()
        loss_fn(image, text, log_scale.exp(), bias).backward()
        sync()
        seconds = time.perf_counter() - start
        for leaf in (image, text, log_scale, bias):
            leaf.grad = None
        return seconds

    before = memory_mib(device)
    try:
        step()
        peak = peak_mib(device) - before
        times = [step() for _ in range(iters)]
    except torch.OutOfMemoryError:
        queue.put((variant, rank, math.nan, math.nan))
        return
    queue.put((variant, rank, statistics.median(times), peak))
    if world > 1:
        torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(variant: str, world: int, args) -> dict[str, float]:
    """Seconds per step and peak MiB: the slowest rank's time, the largest rank's peak (NaN: out of memory)."""
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    local = args.batch // world
    threads = max(1, args.threads // world)
    mp.start_processes(measure, args=(variant, world, local, args.dim, args.iters, threads, args.device, free_port(), queue),
                       nprocs=world, start_method="spawn")
    results = [queue.get() for _ in range(world)]
    return {"seconds": max(r[2] for r in results), "peak": max(r[3] for r in results)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8192, help="global batch (pairs)")
    parser.add_argument("--dim", type=int, default=768, help="embedding dimension")
    parser.add_argument("--iters", type=int, default=3, help="timed iterations after the first")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in all (split across ranks)")
    parser.add_argument("--world", type=int, default=2, help="also run with this many gloo processes (1: skip)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--chunk", type=int, default=1024, help="chunk size of the chunked clipcore variants "
                                                                   "(the unchunked ones use 0)")
    protocol.add_arguments(parser)
    args = parser.parse_args()
    rounds = protocol.Rounds.from_args(args)
    if args.device == "cuda" and args.world > 1:
        parser.error("--world > 1 runs gloo processes on CPU; use --world 1 with --device cuda")

    where = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {args.threads} threads"
    print(f"siglip loss forward+backward, global batch {args.batch}, dim {args.dim}, fp32, {where}, "
          f"torch {torch.__version__}")
    worlds = [1] + ([args.world] if args.world > 1 else [])
    variants = {}
    for world in worlds:
        impls = ["bidir"] + (["gather"] if world > 1 else [])
        for name in ["open_clip"] + [f"clipcore {impl} chunk {chunk}" for impl in impls for chunk in (0, args.chunk)]:
            variants[(world, name)] = lambda world=world, name=name: run(name, world, args)
    rounds.run({f"{world} {name}": fn for (world, name), fn in variants.items()})
    print(f"{'processes':>9}  {'variant':<28} {'s/step':>8} {'peak MiB':>9} {'time ×':>18} {'memory ×':>18}")
    for world, name in variants:
        key, baseline = f"{world} {name}", f"{world} open_clip"
        seconds, peak = rounds.median(key, "seconds"), rounds.median(key, "peak")
        if math.isnan(seconds):
            print(f"{world:>9}  {name:<28} {'out of memory':>18}")
            continue
        comparable = not math.isnan(rounds.median(baseline, "seconds"))
        time_x, memory_x = ((str(rounds.ratio(key, baseline, "seconds")), str(rounds.ratio(key, baseline, "peak")))
                            if comparable else ("-", "-"))
        print(f"{world:>9}  {name:<28} {seconds:>8.3f} {peak:>9.0f} {time_x:>18} {memory_x:>18}")
    print("medians; ×: per-round ratio to open_clip SigLipLoss (bidir) at the same process count, median (min–max); "
          "< 1 is better")
    print(rounds.footer())


if __name__ == "__main__":
    main()
