"""The ``wandb`` logger: the run in Weights & Biases (``[train.wandb]``, TAO's ``wandb`` fields).

Metrics go by step; the resolved spec is the run's config; the training curves are saved with
the run; the best checkpoint's path and metrics go in the run summary (weights are not uploaded).
``mode = "offline"`` writes the run under ``<results_dir>/train/wandb`` for ``wandb sync`` later.
A resumed training run continues its W&B run (its id is kept in ``<results_dir>/train/wandb_run_id``).
"""

from core import LoggerSpec, hookimpl, lazy
from plugins.wandb_logger.config import SECTION, check


@hookimpl
def register_loggers(register):
    register(LoggerSpec(name="wandb", open=lazy("plugins.wandb_logger.run:WandbRun"), config_sections=(SECTION,),
                        check=check, kit_overrides=("train.wandb.mode=offline",), description="Weights & Biases (online or offline; [train.wandb], TAO's fields)"))
