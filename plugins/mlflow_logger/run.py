"""One training run in MLflow, through ``MlflowClient`` (no global active run)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any

from core import Run
from plugins.mlflow_logger.config import SECTION

RUN_ID_FILE = "mlflow_run_id"
BATCH = 100           # MLflow's per-request limit on params
PARAM_CHARS = 6000    # MLflow's limit on a param value
_NOT_ALLOWED = re.compile(r"[^A-Za-z0-9_\-. :/]")
#: MLflow's request settings the user set in the environment (they win over [train.mlflow]).
USER_ENV = {k for k in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES") if k in os.environ}


def metric_name(key: str) -> str:
    """``key`` as MLflow accepts it (``@`` -> ``_at_``, other disallowed characters -> ``_``)."""
    return _NOT_ALLOWED.sub("_", key.replace("@", "_at_"))


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Dotted keys of a nested table, values as text (lists of tables indexed)."""
    out: dict[str, str] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                out.update(flatten(item, f"{name}.{i}."))
        else:
            out[name] = (value if isinstance(value, str) else json.dumps(value))[:PARAM_CHARS]
    return out


class MlflowRun:
    def __init__(self, run: Run):
        from mlflow import MlflowClient

        cfg = SECTION.of(run.cfg)
        for name, value in (("MLFLOW_HTTP_REQUEST_TIMEOUT", cfg.http_timeout),
                            ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", cfg.http_retries)):
            if name not in USER_ENV:
                os.environ[name] = str(value)
        self._client = MlflowClient(tracking_uri=cfg.tracking_uri)
        id_file = run.out_dir / RUN_ID_FILE
        if run.resumed and id_file.is_file():
            self._run_id = id_file.read_text(encoding="utf-8").strip()
            self._client.update_run(self._run_id, status="RUNNING")
            return
        experiment = self._client.get_experiment_by_name(cfg.experiment_name)
        experiment_id = (experiment.experiment_id if experiment is not None else
                         self._client.create_experiment(cfg.experiment_name, artifact_location=cfg.artifact_location))
        self._run_id = self._client.create_run(experiment_id, run_name=cfg.run_name or run.name).info.run_id
        id_file.write_text(self._run_id + "\n", encoding="utf-8")
        if cfg.log_params:
            from mlflow.entities import Param

            params = [Param(k, v) for k, v in flatten(run.config).items()]
            for start in range(0, len(params), BATCH):
                self._client.log_batch(self._run_id, params=params[start:start + BATCH])

    def log_metrics(self, metrics: dict[str, float], *, step: int, epoch: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self._run_id, metrics=[Metric(metric_name(k), float(v), now, step)
                                                      for k, v in {**metrics, "epoch": epoch}.items()])

    def log_file(self, path: Path) -> None:
        self._client.log_artifact(self._run_id, str(path))

    def log_checkpoint(self, path: Path, metrics: dict[str, float]) -> None:
        self._client.set_tag(self._run_id, "best_checkpoint", str(path))
        self._client.set_tag(self._run_id, "best_metrics", json.dumps(metrics))

    def close(self, *, failed: bool) -> None:
        self._client.set_terminated(self._run_id, "FAILED" if failed else "FINISHED")
