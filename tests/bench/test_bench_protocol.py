"""The benchmark protocol (bench/protocol.py): alternating rounds, median ratios, an idle machine."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))
import protocol  # noqa: E402


def rounds_from(argv: list[str]) -> protocol.Rounds:
    parser = argparse.ArgumentParser()
    protocol.add_arguments(parser)
    return protocol.Rounds.from_args(parser.parse_args(argv))


@pytest.fixture
def idle(monkeypatch):
    monkeypatch.setattr(protocol.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    monkeypatch.setattr(protocol, "_busy_seconds", lambda: 0.0)
    monkeypatch.setattr(protocol, "_own_seconds", lambda: 0.0)


def test_variants_alternate_round_by_round(idle):
    calls = []
    rounds = rounds_from(["--rounds", "5"])
    rounds.run({"a": lambda: calls.append("a") or {"t": 2.0}, "b": lambda: calls.append("b") or {"t": 1.0}},
               progress=False)
    assert calls == ["a", "b"] * 5


def test_ratio_is_the_median_of_per_round_ratios_with_min_max(idle):
    a_times, b_times = iter([1.0, 4.0, 3.0, 2.0, 10.0]), iter([1.0, 2.0, 1.0, 1.0, 1.0])
    rounds = rounds_from([])
    rounds.run({"a": lambda: {"t": next(a_times)}, "b": lambda: {"t": next(b_times)}}, progress=False)
    ratio = rounds.ratio("a", "b", "t")
    assert ratio.values == [1.0, 2.0, 3.0, 2.0, 10.0]
    assert str(ratio) == "2.00× (1.00–10.00)"
    assert "5 alternating rounds" in rounds.footer() and "load average" in rounds.footer()


def test_fewer_than_five_rounds_is_refused():
    with pytest.raises(SystemExit, match="at least 5 alternating rounds"):
        rounds_from(["--rounds", "3"])


def test_a_loaded_machine_prints_no_figure(monkeypatch):
    monkeypatch.setattr(protocol.os, "getloadavg", lambda: (float(protocol.os.cpu_count()) + 0.5, 1.0, 1.0))
    monkeypatch.setattr(protocol, "LOAD_WAIT_S", 0)
    ran = []
    with pytest.raises(SystemExit, match=r"not idle: 1-minute load average .* --force"):
        rounds_from([]).run({"a": lambda: ran.append(1) or {"t": 1.0}}, progress=False)
    assert ran == []


def test_other_processes_busy_during_the_rounds_prints_no_figure(monkeypatch):
    monkeypatch.setattr(protocol.os, "getloadavg", lambda: (0.1, 0.1, 0.1))
    busy = iter([0.0, 1000.0])  # the machine was busy far more than this process tree
    monkeypatch.setattr(protocol, "_busy_seconds", lambda: next(busy))
    monkeypatch.setattr(protocol, "_own_seconds", lambda: 0.0)
    with pytest.raises(SystemExit, match="not idle: other processes used"):
        rounds_from([]).run({"a": lambda: {"t": 1.0}}, progress=False)


def test_force_prints_figures_marked_as_loaded(monkeypatch, capsys):
    monkeypatch.setattr(protocol.os, "getloadavg", lambda: (99.0, 99.0, 99.0))
    monkeypatch.setattr(protocol, "LOAD_WAIT_S", 0)
    monkeypatch.setattr(protocol, "_busy_seconds", lambda: 0.0)
    monkeypatch.setattr(protocol, "_own_seconds", lambda: 0.0)
    rounds = rounds_from(["--force"])
    rounds.run({"a": lambda: {"t": 1.0}}, progress=False)
    assert "not for publication" in capsys.readouterr().out
    assert rounds.median("a", "t") == 1.0


def test_own_cpu_time_is_not_counted_as_foreign_load():
    rounds = rounds_from(["--force"])
    rounds.run({"spin": lambda: {"t": sum(i * i for i in range(200_000))}}, progress=False)
    assert rounds.foreign_cores < 1.0  # a busy machine would show ~cpu_count; this process's own work is excluded


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("bench_*.py")))
def test_every_benchmark_follows_the_protocol(script):
    done = subprocess.run([sys.executable, str(BENCH / script), "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--rounds" in done.stdout and "--force" in done.stdout
