"""The measurement protocol every benchmark in ``bench/`` follows.

- The compared variants run in alternating rounds (``--rounds``, at least 5) in one run, so a
  neighbour's burst of load hits both sides alike.
- A figure is the median over rounds of the per-round ratio, printed with its min–max.
- The machine must be idle: the 1-minute load average before the first round must be below the
  core count (the run waits up to ``LOAD_WAIT_S`` for it to fall, e.g. after another benchmark), and other processes may use at most ``FOREIGN_CPU_LIMIT`` cores on average during
  the rounds (measured from ``/proc/stat`` minus the CPU time of this process tree, live children included). Otherwise no
  figure is printed and the run exits non-zero, unless ``--force`` (the output then says so).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

MIN_ROUNDS = 5
FOREIGN_CPU_LIMIT = 0.25  # cores used by other processes, on average over the rounds
LOAD_WAIT_S = 180


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--rounds`` and ``--force`` to a benchmark's parser."""
    parser.add_argument("--rounds", type=int, default=MIN_ROUNDS,
                        help=f"alternating rounds of every variant (at least {MIN_ROUNDS})")
    parser.add_argument("--force", action="store_true",
                        help="print figures even when the machine is not idle (they are marked as such)")


def _settled_load() -> float:
    """The 1-minute load average, once below the core count or after ``LOAD_WAIT_S``."""
    deadline = time.monotonic() + LOAD_WAIT_S
    while os.getloadavg()[0] >= os.cpu_count() and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def _busy_seconds() -> float:
    """CPU seconds all processes on the machine spent busy since boot (``/proc/stat``)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    """CPU seconds of this process tree: this process, its waited-for descendants, and the live
    ones (persistent data-loader workers, servers it started), read from ``/proc``."""
    waited = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                    resource.getrusage(resource.RUSAGE_CHILDREN)))
    return waited + _live_descendant_seconds()


def _live_descendant_seconds() -> float:
    parents, ticks = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rpartition(")")[2].split()  # after "(command)", which may hold spaces
        except OSError:  # ended meanwhile
            continue
        parents[int(entry)] = int(fields[1])
        ticks[int(entry)] = sum(int(v) for v in fields[11:15])  # utime, stime, and of its reaped children
    mine, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - mine
        mine |= frontier
    return sum(ticks[pid] for pid in mine) / os.sysconf("SC_CLK_TCK")


@dataclass
class Rounds:
    """Alternating rounds of named variants; each variant call returns its measurements for one round."""

    rounds: int
    force: bool = False
    results: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    load_before: float = 0.0
    foreign_cores: float = 0.0

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Rounds":
        if args.rounds < MIN_ROUNDS:
            sys.exit(f"--rounds {args.rounds}: the protocol needs at least {MIN_ROUNDS} alternating rounds")
        return cls(args.rounds, args.force)

    def run(self, variants: dict[str, Callable[[], dict[str, float]]], progress: bool = True) -> None:
        """Run every variant once per round, in the same order each round, after checking the machine is idle."""
        self.load_before = _settled_load()
        self._require_idle(f"1-minute load average {self.load_before:.2f} before the first round",
                           self.load_before >= os.cpu_count())
        busy, own, start = _busy_seconds(), _own_seconds(), time.monotonic()
        for index in range(self.rounds):
            for name, variant in variants.items():
                self.results.setdefault(name, []).append(variant())
            if progress:
                print(f"  round {index + 1}/{self.rounds} done ({time.monotonic() - start:.0f} s)", file=sys.stderr)
        wall = time.monotonic() - start
        self.foreign_cores = max(0.0, (_busy_seconds() - busy) - (_own_seconds() - own)) / wall
        self._require_idle(f"other processes used {self.foreign_cores:.2f} cores on average during the rounds",
                           self.foreign_cores > FOREIGN_CPU_LIMIT)

    def _require_idle(self, what: str, busy: bool) -> None:
        if not busy:
            return
        if not self.force:
            sys.exit(f"not idle: {what} (this machine has {os.cpu_count()} cores). No figure printed: "
                     "stop the other work and run again, or pass --force to print figures marked as loaded.")
        print(f"WARNING: not idle ({what}); these figures are not for publication.")

    def values(self, variant: str, key: str) -> list[float]:
        return [r[key] for r in self.results[variant]]

    def median(self, variant: str, key: str) -> float:
        return statistics.median(self.values(variant, key))

    def ratio(self, variant: str, baseline: str, key: str) -> "Ratio":
        """Per-round ``variant[key] / baseline[key]``, summarised."""
        return Ratio([a / b for a, b in zip(self.values(variant, key), self.values(baseline, key))])

    def footer(self) -> str:
        one, five, fifteen = os.getloadavg()
        return (f"{self.rounds} alternating rounds; load average before {self.load_before:.2f}, after "
                f"{one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {os.cpu_count()} cores; other processes "
                f"used {self.foreign_cores:.2f} cores during the rounds")


@dataclass
class Ratio:
    """Per-round ratios: the median is the figure, min–max its spread."""

    values: list[float]

    def __str__(self) -> str:
        return f"{statistics.median(self.values):.2f}× ({min(self.values):.2f}–{max(self.values):.2f})"
