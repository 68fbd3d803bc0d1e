"""``[train.mlflow]``: where the MLflow logger writes."""

from __future__ import annotations

import importlib.util

import attrs

from core import ConfigError, ConfigSection, at_least, opt


@attrs.define
class MlflowConfig:
    """MLflow logger (train.loggers = [..., "mlflow"])."""

    tracking_uri: str | None = opt(
        None, 'Tracking server or store ("http://host:5000", "sqlite:///mlflow.db", "databricks"); unset: '
              "MLflow's own choice (MLFLOW_TRACKING_URI, else its default).")
    experiment_name: str = opt("clipcore", "Experiment the run goes in (created when missing).")
    artifact_location: str | None = opt(None, "Artifact location of a new experiment; unset: the server's default.")
    run_name: str | None = opt(None, "Run name; unset: the results folder's name.")
    log_params: bool = opt(True, "Record the resolved spec as the run's parameters (dotted keys).")
    http_timeout: int = opt(10, "Seconds per request to a tracking server (unless MLFLOW_HTTP_REQUEST_TIMEOUT "
                                "is set).", validator=at_least(1))
    http_retries: int = opt(1, "Retries of a failed request (unless MLFLOW_HTTP_REQUEST_MAX_RETRIES is set); a "
                               "server that stays down turns the logger off with one warning.", validator=at_least(0))


SECTION = ConfigSection("train.mlflow", MlflowConfig)


def check(cfg) -> None:
    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("the mlflow logger needs the mlflow package, which is not installed", where="train.loggers",
                          fix="pip install 'clipcore[mlflow]'")
