"""Experiment loggers (``train.loggers``): TensorBoard events, an MLflow tracking store and a W&B
offline run, each read back after a real training run; a tracker that fails warns once and never
stops training; only rank 0 logs; TAO's wandb table survives convert-spec; the kit's logger checks."""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest
import torch
from PIL import Image

from core.spec.load import load_config
from core.tracking import Run, read_metrics
from core.train.trackers import Trackers
from core.train.trainer import Trainer


@pytest.fixture(scope="module", autouse=True)
def one_thread(training):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train(training, results: Path, *extra: str, validate: bool = True) -> Path:
    cfg = load_config(None, [*training.overrides(results, validate=validate), "train.validation_interval=1",
                             *extra])
    Trainer(cfg).train()
    return results / "train"


def logged_steps(out: Path, key: str) -> list[tuple[int, float]]:
    return [(r["step"], r[key]) for r in read_metrics(out / "metrics.jsonl") if key in r]


def assert_series(have: list[tuple[int, float]], want: list[tuple[int, float]]) -> None:
    """Same steps, same values (float32 storage allowed)."""
    assert [s for s, _ in have] == [s for s, _ in want] and want
    assert [v for _, v in have] == pytest.approx([v for _, v in want], rel=1e-6)


# --------------------------------------------------------------------------- TensorBoard
def test_tensorboard_events_hold_the_scalars_and_the_curves(tmp_path, training):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = train(training, tmp_path)
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0, "scalars": 0}).Reload()
    loss = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert_series(loss, logged_steps(out, "train/loss"))
    assert [e.step for e in events.Scalars("val/t2i_mAP")] == [4, 8]
    assert events.Images("training_curves")


# --------------------------------------------------------------------------- MLflow
def mlflow_options(tmp_path: Path, uri: str | None = None) -> list[str]:
    uri = uri or f"sqlite:///{tmp_path / 'mlflow.db'}"
    return ['train.loggers=["mlflow"]', f"train.mlflow.tracking_uri={uri}", "train.mlflow.experiment_name=tiny",
            f"train.mlflow.artifact_location={(tmp_path / 'artifacts').as_uri()}"]


def test_mlflow_store_holds_the_run(tmp_path, training):
    from mlflow import MlflowClient

    out = train(training, tmp_path / "results", *mlflow_options(tmp_path))
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.get_run((out / "mlflow_run_id").read_text().strip())
    assert run.info.status == "FINISHED" and run.info.run_name == "results"
    history = [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "train/loss")]
    assert_series(sorted(history), logged_steps(out, "train/loss"))
    recall = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val/t2i_R_at_1"))
    assert_series(recall, logged_steps(out, "val/t2i_R@1"))
    assert run.data.params["train.loss_type"] == "siglip" and run.data.params["model.image_size"] == "32"
    assert run.data.tags["best_checkpoint"] == str(out / "best.pth")
    assert "val/t2i_mAP" in json.loads(run.data.tags["best_metrics"])
    assert [a.path for a in client.list_artifacts(run.info.run_id)] == ["training_curves.png"]


def test_an_unreachable_mlflow_server_warns_once_and_training_goes_on(tmp_path, training, caplog):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = train(training, tmp_path, *mlflow_options(tmp_path, f"http://127.0.0.1:{port}"),
                "train.mlflow.http_retries=0", "train.mlflow.http_timeout=2", validate=False)
    assert [s for s, _ in logged_steps(out, "train/loss")] == list(range(1, 9))
    assert (out / "latest.pth").is_file()
    log = (out / "logs" / "rank0.log").read_text()
    assert log.count("logger 'mlflow' could not start") == 1 and "training goes on" in log
    assert f"127.0.0.1:{port}" in log


# --------------------------------------------------------------------------- W&B
def wandb_records(run_file: Path) -> list:
    """The records of a W&B run file (a LevelDB-style log of ``Record`` protobufs: a 7-byte
    header, then 32 KiB blocks of chunks with a 7-byte header: crc32, length, type)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, chunk, records = run_file.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            pos += left
            continue
        chunk += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a whole record, or its last chunk
            record = pb.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def test_wandb_offline_run_holds_the_run(tmp_path, training):
    out = train(training, tmp_path / "results", 'train.loggers=["wandb"]', "train.wandb.mode=offline",
                "train.wandb.project=tiny", 'train.wandb.tags=["a", "b"]')
    run_dir, = (out / "wandb").glob("offline-run-*")
    records = wandb_records(next(run_dir.glob("run-*.wandb")))
    by_kind: dict[str, list] = {}
    for record in records:
        by_kind.setdefault(record.WhichOneof("record_type"), []).append(record)
    run = by_kind["run"][0].run
    assert run.project == "tiny" and run.display_name == "results" and list(run.tags) == ["a", "b"]
    assert run.run_id == (out / "wandb_run_id").read_text().strip()
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["train"]["loss_type"] == "siglip" and config["model"]["type"] == "example-tiny"
    history = [{item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
               for r in by_kind["history"]]
    assert_series([(h["_step"], h["train/loss"]) for h in history if "train/loss" in h],
                  logged_steps(out, "train/loss"))
    summary = {u.key or "/".join(u.nested_key): json.loads(u.value_json) for r in by_kind["summary"]
               for u in r.summary.update}
    assert summary["best_checkpoint"] == str(out / "best.pth")
    assert any(f.path == "training_curves.png" for r in by_kind["files"] for f in r.files.files)
    assert by_kind["exit"][0].exit.exit_code == 0


def test_wandb_enable_false_with_the_logger_listed_is_one_message(tmp_path, training, capsys):
    from core.cli.main import main

    spec = training.write_spec(tmp_path / "clip.toml", tmp_path)
    code = main(["validate", "-c", str(spec), 'train.loggers=["wandb"]', "train.wandb.enable=false"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and 'train.loggers lists "wandb" but train.wandb.enable is false' in err


def test_an_unknown_logger_is_one_message(tmp_path, training, capsys):
    from core.cli.main import main

    spec = training.write_spec(tmp_path / "clip.toml", tmp_path)
    code = main(["validate", "-c", str(spec), 'train.loggers=["mlfow"]'])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "unknown logger 'mlfow'" in err and "mlflow" in err


# --------------------------------------------------------------------------- the fan-out
class Flaky:
    """A tracker whose ``log_metrics`` fails from its second call on."""

    def __init__(self, calls: list):
        self.calls = calls

    def log_metrics(self, metrics, *, step, epoch):
        self.calls.append(step)
        if len(self.calls) > 1:
            raise ConnectionError("server went away")

    def log_file(self, path):
        self.calls.append(path)

    def log_checkpoint(self, path, metrics):
        self.calls.append(path)

    def close(self, *, failed):
        self.calls.append(("closed", failed))


def test_a_failing_tracker_is_dropped_with_one_warning_and_only_rank_0_logs(tmp_path, monkeypatch, training):
    from core.registry import Entry, get_registry
    from core.tracking import LoggerSpec

    calls, warnings = [], []
    loggers = get_registry().entries["loggers"]
    monkeypatch.setitem(loggers, "flaky", Entry("loggers", "flaky", LoggerSpec(name="flaky", open=lambda run: Flaky(calls)),
                                                loggers["tensorboard"].provider))
    cfg = load_config(None, [*training.overrides(tmp_path), 'train.loggers=["flaky", "tensorboard"]'])
    run = Run(cfg=cfg, config={}, out_dir=tmp_path, name="t")
    trackers = Trackers(run, main=True, warn=warnings.append)
    for step in (1, 2, 3):
        trackers.log_metrics({"train/loss": 1.0}, step=step, epoch=1)
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    trackers.log_file(tmp_path / "x.png")
    trackers.close(failed=False)
    assert calls == [1, 2] and len(warnings) == 1 and "server went away" in warnings[0]
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]   # the record keeps all

    other = tmp_path / "rank1"
    other.mkdir()
    quiet = Trackers(Run(cfg=cfg, config={}, out_dir=other, name="t"), main=False, warn=warnings.append)
    quiet.log_metrics({"train/loss": 1.0}, step=1, epoch=1)
    quiet.close(failed=False)
    assert quiet.names == [] and not list(other.iterdir()) and calls == [1, 2]


# --------------------------------------------------------------------------- convert-spec and the kit
def test_convert_spec_keeps_tao_wandb_fields(tmp_path):
    from core.cli.main import main

    (tmp_path / "tao.yaml").write_text("wandb:\n  enable: true\n  project: shelf\n  tags: [clip, retail]\n"
                                       "  run_id: abc\nmodel:\n  type: example-tiny\n")
    assert main(["convert-spec", str(tmp_path / "tao.yaml"), "-o", str(tmp_path / "clip.toml")]) == 0
    cfg = load_config(tmp_path / "clip.toml")
    wandb = cfg.plugins["train.wandb"]
    assert cfg.train.loggers == ["tensorboard", "wandb"]
    assert (wandb.project, wandb.tags, wandb.run_id) == ("shelf", ["clip", "retail"], "abc")


@pytest.mark.parametrize("plugin", ["tensorboard", "mlflow", "wandb"])
def test_built_in_loggers_pass_the_kit(plugin, tmp_path, monkeypatch):
    from core.testing import checks_for, run_checks

    monkeypatch.chdir(tmp_path)
    failures = [(c.id, m) for c, m in run_checks(checks_for(plugin)) if m]
    assert not failures
