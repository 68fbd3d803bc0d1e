"""The ``mlflow`` logger: the run in an MLflow tracking server or store (``[train.mlflow]``).

Metrics go by step (MLflow's names allow no ``@``: ``val/t2i_R@1`` is logged as
``val/t2i_R_at_1``); the resolved spec as parameters (dotted keys); the training curves as an
artifact; the best checkpoint's path and metrics as tags (weights are not uploaded). A resumed
training run continues its MLflow run (its id is kept in ``<results_dir>/train/mlflow_run_id``).
"""

from core import LoggerSpec, hookimpl, lazy
from plugins.mlflow_logger.config import SECTION, check


@hookimpl
def register_loggers(register):
    register(LoggerSpec(name="mlflow", open=lazy("plugins.mlflow_logger.run:MlflowRun"), config_sections=(SECTION,),
                        check=check, kit_overrides=("train.mlflow.tracking_uri=sqlite:///{tmp}/mlflow.db",
                                                    "train.mlflow.artifact_location=file://{tmp}/artifacts"),
                        description="MLflow tracking (server URI, database or store; [train.mlflow])"))
