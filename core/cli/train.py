"""Fine-tune a model: ``core train -c clip.toml [section.key=value ...]``, or one torchrun worker:
``torchrun -m core.train --config clip.toml [section.key=value ...]``.

``core train`` trains in this process, or launches torchrun itself for ``train.num_gpus`` ×
``train.num_nodes`` > 1 processes. Outputs go to ``<results_dir>/train``: checkpoints
(``epoch_N.pth`` / ``step_N.pth``, ``latest.pth``, ``best.pth``), ``config.toml`` (the resolved
spec), ``metrics.jsonl``, what the loggers of ``train.loggers`` write, ``logs/rank<r>.log`` and
``training_curves.png``.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from typing import Sequence

from core.cli.launch import launch_command, relaunch
from core.errors import ClipcoreError, file_system_error
from core.runtime.distributed import close_world, expected_world_size, under_torchrun
from core.spec.config import ExperimentConfig
from core.train.trainer import Trainer, train_dir


def train(cfg: ExperimentConfig) -> None:
    """Train in this process (a torchrun worker or the only process)."""
    try:
        Trainer(cfg).train()
    finally:
        close_world()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print-command", action="store_true",
                        help="print the torchrun command this node would run (several processes or nodes, "
                             "restarts) and exit; a job template's dry run")


def run(cfg: ExperimentConfig, args: argparse.Namespace) -> None:
    """``core train``: train here, or launch torchrun for ``num_gpus × num_nodes`` > 1 processes
    (or for ``max_restarts``)."""
    in_process = (expected_world_size(cfg.train) == 1 and cfg.train.max_restarts == 0) or under_torchrun()
    if getattr(args, "print_command", False):
        print("trains in this process (no torchrun)" if in_process else shlex.join(launch_command(cfg, args, "train")))
    elif in_process:
        train(cfg)
    else:
        relaunch(cfg, args, "train", logs=train_dir(cfg) / "logs")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m core.train --config clip.toml [section.key=value ...]`` (one torchrun worker)."""
    parser = argparse.ArgumentParser(prog="python -m core.train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", "-e", dest="config", metavar="SPEC", help="spec file (clip.toml)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted overrides")
    args = parser.parse_args(argv)
    try:
        from core import spec

        cfg = spec.load_config(args.config, args.overrides)
        spec.check(cfg, "train")
        train(cfg)
    except (ClipcoreError, OSError, RuntimeError) as exc:
        err = exc if isinstance(exc, ClipcoreError) else file_system_error(exc)
        if err is None:
            raise
        prefix = f"[rank {os.environ['RANK']}] " if "RANK" in os.environ and os.environ.get("WORLD_SIZE", "1") != "1" else ""
        print(f"{prefix}error: {err.message}", file=sys.stderr)
        return 2
    return 0
