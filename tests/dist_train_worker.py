"""A torchrun worker for tests/test_train_distributed.py: trains the scenarios named on the command
line, one after the other, in the same 2-process gloo group.

    torchrun --nproc_per_node 2 tests/dist_train_worker.py RESULTS_ROOT SCENARIO [SCENARIO ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

import attrs
import torch

from core.runtime.distributed import close_world
from core.train.trainer import Trainer
from tests.train_support import tiny_config


def scenario(name: str, root: Path):
    """One epoch of example-tiny on 2 × 16 fixed synthetic pairs per step, varied by ``name``."""
    cfg = tiny_config(root / name, validate=name.startswith("fsdp_frozen"), num_epochs=1, num_gpus=2)
    cfg = attrs.evolve(cfg, dataset=attrs.evolve(cfg.dataset, train=attrs.evolve(
        cfg.dataset.train, type="synthetic_fixed")))
    model, train = cfg.model, cfg.train
    if name == "fsdp":
        train = attrs.evolve(train, distributed_strategy="fsdp")
    elif name == "fsdp_frozen_vision_lamb":
        model = attrs.evolve(model, freeze_vision_encoder=True)
        train = attrs.evolve(train, distributed_strategy="fsdp", val_check_interval=1,
                             optim=attrs.evolve(train.optim, optimizer_type="lamb"))
    elif name == "ddp_frozen_text_unlocked":
        model = attrs.evolve(model, freeze_text_encoder=True, text_unlocked_layers=1)
    elif name != "ddp":
        raise SystemExit(f"unknown scenario {name}")
    return attrs.evolve(cfg, model=model, train=train)


def main() -> None:
    torch.set_num_threads(1)
    root = Path(sys.argv[1])
    try:
        for name in sys.argv[2:]:
            Trainer(scenario(name, root)).train()
    finally:
        close_world()


if __name__ == "__main__":
    main()
