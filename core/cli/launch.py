"""The one way an action runs on several processes: ``core <action>`` relaunches itself under
torchrun when ``<action>.num_gpus`` (× ``train.num_nodes``) asks for more than one process.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Callable

import torch

from core.cli.main import action_overrides
from core.errors import ClipcoreError
from core.eval.embed import open_encoder
from core.runtime.distributed import close_world, init_world, run_torchrun, torchrun_command, under_torchrun
from core.spec.load import action_dir

#: What each torchrun worker runs: ``torchrun -m core.train`` is the documented training entry point.
WORKERS = {"train": ["-m", "core.train"]}


def launch_command(cfg: Any, args: argparse.Namespace, action: str) -> list[str]:
    """The torchrun command that runs ``core <action>`` (same spec, same overrides) on this node."""
    worker = WORKERS[action] if action in WORKERS else ["-m", "core.cli.main", args.command]
    worker = worker + (["--config", args.config] if args.config else []) + action_overrides(args, action)
    return torchrun_command(getattr(cfg, action), worker)


def relaunch(cfg: Any, args: argparse.Namespace, action: str, *, logs: Path | None = None) -> None:
    """Run :func:`launch_command` with the section's process count; raise one error naming the
    worker failure (``logs``: where per-rank logs are)."""
    section = getattr(cfg, action)
    cmd = launch_command(cfg, args, action)
    status = run_torchrun(cmd, env=_visible_gpus(section))
    if status != 0:
        fix = "read the first error above" + (f", and the per-rank logs in {logs}" if logs else "")
        nodes = getattr(section, "num_nodes", 1)
        if nodes > 1:
            fix += (f". If it stopped waiting for the other nodes (rendezvous), check that {nodes} nodes run this "
                    f"command ({action}.num_nodes), with the same MASTER_ADDR:MASTER_PORT (node 0's, reachable "
                    f"from every node) and RDZV_ID; a node waits {section.rdzv_timeout} s ({action}.rdzv_timeout)")
        raise ClipcoreError(f"{action} failed in a torchrun worker (exit status {status})",
                            where=" ".join(cmd[:7]) + " ...", fix=fix)


def _visible_gpus(section: Any) -> dict[str, str]:
    """The environment of the workers: ``gpu_ids`` become ``CUDA_VISIBLE_DEVICES`` unless it is set."""
    env = dict(os.environ)
    ids = list(section.gpu_ids)
    if torch.cuda.is_available() and len(ids) >= section.num_gpus and "CUDA_VISIBLE_DEVICES" not in env:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in ids[: section.num_gpus])
    return env


def run_embedding_action(cfg: Any, args: argparse.Namespace, action: str, body: Callable[..., None]) -> None:
    """Run ``body(cfg, encoder, world, out_dir)`` for ``action`` (evaluate, inference) in this
    process, or relaunch under torchrun for ``<action>.num_gpus`` > 1 processes."""
    if getattr(cfg, action).num_gpus > 1 and not under_torchrun():
        return relaunch(cfg, args, action)
    world = init_world(getattr(cfg, action), action)
    try:
        body(cfg, open_encoder(cfg, action, world.device), world, action_dir(cfg, action))
    finally:
        close_world()
