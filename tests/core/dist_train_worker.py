"""A torchrun worker for tests/core/test_train_distributed.py: trains the scenarios named on the
command line, one after the other, in the same 2-process gloo group.

    torchrun --nproc_per_node 2 tests/core/dist_train_worker.py SPEC RESULTS_ROOT SCENARIO [SCENARIO ...]

SPEC is the tiny run (the ``training`` fixture's spec file); each scenario adds its overrides and
writes to RESULTS_ROOT/<scenario>; ``*_reg`` scenarios start from RESULTS_ROOT/base.pth.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from core.runtime.distributed import close_world
from core.spec.load import load_config
from core.train.trainer import Trainer

#: One epoch of example-tiny on 2 × 16 fixed synthetic pairs per step, varied by the scenario.
COMMON = ["train.num_epochs=1", "train.num_gpus=2", "dataset.train.type=synthetic_fixed"]
#: Adapters without dropout, whose random draws differ between one process and two.
LORA = ["model.peft.enabled=true", "model.peft.vision.dropout=0", "model.peft.text.dropout=0"]
SCENARIOS = {
    "ddp": [],
    "fsdp": ["train.distributed_strategy=fsdp"],
    "fsdp_frozen_vision_lamb": ["model.freeze_vision_encoder=true", "train.distributed_strategy=fsdp",
                                "train.val_check_interval=1", "train.optim.optimizer_type=lamb",
                                "dataset.val.datasets.0.image_dir=synthetic"],
    "ddp_frozen_text_unlocked": ["model.freeze_text_encoder=true", "model.text_unlocked_layers=1"],
    "ddp_lora": LORA,
    "fsdp_lora": [*LORA, "train.distributed_strategy=fsdp"],
    "ddp_reg": ["model.regularization.enabled=true"],  # + the base weights RESULTS_ROOT/base.pth
    "ddp_compile": ["train.compile=true", "train.grad_checkpointing=true", "train.accum_steps=2"],
    "fsdp_compile": ["train.compile=true", "train.distributed_strategy=fsdp"],
}


def main() -> None:
    torch.set_num_threads(1)
    spec, root = Path(sys.argv[1]), Path(sys.argv[2])
    try:
        for name in sys.argv[3:]:
            base = [f"train.pretrained_model_path={root / 'base.pth'}"] if name.endswith("_reg") else []
            cfg = load_config(spec, [*COMMON, *SCENARIOS[name], *base, f"results_dir={root / name}"])
            Trainer(cfg).train()
    finally:
        close_world()


if __name__ == "__main__":
    main()
