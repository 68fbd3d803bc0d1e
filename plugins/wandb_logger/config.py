"""``[train.wandb]``: TAO's ``wandb`` fields, plus the mode."""

from __future__ import annotations

import importlib.util
from typing import Literal

import attrs

from core import ConfigError, ConfigSection, opt


@attrs.define
class WandbConfig:
    """Weights & Biases logger (train.loggers = [..., "wandb"]); TAO's wandb fields."""

    enable: bool = opt(True, 'TAO\'s switch; clipcore logs to W&B when train.loggers lists "wandb" and this is true.')
    project: str = opt("clipcore", "W&B project.")
    entity: str = opt("", "W&B entity (team or user); empty: your default entity.")
    group: str = opt("", "Run group; empty: none.")
    tags: list[str] = opt([], "Run tags.")
    name: str = opt("", "Run name; empty: the results folder's name.")
    run_id: str = opt("", "Run id to log into (resumed when it exists); empty: a new run (a resumed training "
                          "run continues its own).")
    reinit: bool = opt(False, "Finish a W&B run already active in this process before starting this one.")
    sync_tensorboard: bool = opt(False, 'Also sync TensorBoard events (list "wandb" before "tensorboard" in '
                                        "train.loggers).")
    save_code: bool = opt(False, "Save the main script with the run.")
    mode: Literal["online", "offline", "disabled"] | None = opt(
        None, "online | offline (written under <results_dir>/train/wandb for `wandb sync`) | disabled; unset: "
              "W&B's own setting (WANDB_MODE, `wandb online/offline`).")


SECTION = ConfigSection("train.wandb", WandbConfig)


def check(cfg) -> None:
    if importlib.util.find_spec("wandb") is None:
        raise ConfigError("the wandb logger needs the wandb package, which is not installed", where="train.loggers",
                          fix="pip install 'clipcore[wandb]'")
    if not SECTION.of(cfg).enable:
        raise ConfigError('train.loggers lists "wandb" but train.wandb.enable is false', where="train.wandb.enable",
                          fix='remove "wandb" from train.loggers, or set enable = true')
