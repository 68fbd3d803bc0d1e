"""The training loop in one process: outputs, checkpoint contents, precision, accumulation,
freezing, pretrained weights, resume rules, and the NaN / out-of-memory / world-size errors."""

from __future__ import annotations

import json

import pytest
import torch

from core.runtime.build import build_model
from core.weights import load_checkpoint
from core.errors import ClipcoreError, ConfigError
from core.registry import get_registry
from core.train.trainer import NonFiniteLoss, Trainer


@pytest.fixture(scope="module", autouse=True)
def one_thread(training):  # training: the synthetic data and nan_after loss installed
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _run(cfg) -> Trainer:
    trainer = Trainer(cfg)
    trainer.train()
    return trainer


def test_run_writes_checkpoints_metrics_tensorboard_curves_logs_and_config(tmp_path, training):
    from core.spec.load import load_config

    cfg = training.config(tmp_path, keep_last=1)
    trainer = _run(cfg)
    out = tmp_path / "train"
    assert trainer.total_steps == 2 * 4 and trainer.step == 8
    assert not (out / "epoch_1.pth").exists() and (out / "epoch_2.pth").is_file()  # keep_last = 1
    assert (out / "latest.pth").samefile(out / "epoch_2.pth")
    ckpt = torch.load(out / "latest.pth", map_location="cpu", weights_only=True)
    assert {"model", "optimizer", "scheduler", "scaler", "train_state", "data", "rng"} <= set(ckpt)
    assert ckpt["train_state"]["epoch"] == 2 and ckpt["train_state"]["step"] == 8
    assert set(ckpt["rng"][0]) == {"torch", "cuda", "numpy", "python"}
    assert ckpt["scheduler"]["last_epoch"] == 8
    trained = build_model(cfg, checkpoint=str(out / "latest.pth"))
    for name, value in trainer.clip.state_dict().items():
        torch.testing.assert_close(trained.state_dict()[name], value, rtol=0, atol=0)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, 9))
    assert {"train/loss", "train/lr/vision", "train/lr/text", "train/lr/logit", "train/logit_scale",
            "train/samples_per_s", "train/grad_norm"} <= set(records[0])
    assert records[-1]["train/loss"] < records[0]["train/loss"]
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "training_curves.png").stat().st_size > 10_000
    assert "saved" in (out / "logs" / "rank0.log").read_text()
    resolved = load_config(out / "config.toml")
    assert resolved.model.type == "example-tiny" and resolved.train.keep_last == 1
    assert resolved.model.init_logit_scale == pytest.approx(get_registry().get(
        "losses", "siglip", key="k").init_logit_scale)


class KeyRecorder(torch.nn.Module):
    """Wraps the trainer's loss and records the match keys it receives."""

    def __init__(self, loss):
        super().__init__()
        self.loss, self.seen = loss, []

    def forward(self, *args, match_keys=None):
        self.seen.append(match_keys)
        return self.loss(*args, match_keys=match_keys)


@pytest.mark.parametrize("kinds, columns", [(None, [0, 1, 2]), (["group"], [2]), (["text", "image"], [1, 0]),
                                            ([], None)])
def test_the_loss_gets_the_match_keys_of_the_compatible_positive_kinds(tmp_path, training, kinds, columns):
    from tests.fake_plugins.synthetic_data import MATCH_KEYS

    extra = {} if kinds is None else {"compatible_positives": kinds}
    trainer = Trainer(training.config(tmp_path, num_epochs=1, accum_steps=2, **extra))
    trainer.loss_fn = recorder = KeyRecorder(trainer.loss_fn)
    trainer.train()
    if columns is None:
        assert recorder.seen and all(keys is None for keys in recorder.seen)
        return
    for keys in recorder.seen:  # accumulation: the loss sees both micro-batches' keys
        assert keys.shape == (32, len(columns))
        assert all((MATCH_KEYS[:, columns] == row).all(1).any() for row in keys)


def test_compatible_positives_must_be_distinct_known_kinds(tmp_path, training):
    from core.spec.load import load_config

    with pytest.raises(ConfigError) as err:
        load_config(None, training.overrides(tmp_path) + ['train.compatible_positives=["image", "caption"]'])
    assert "train.compatible_positives" in str(err.value) and "distinct items of image, text, group" in str(err.value)


def test_bf16_trains_on_cpu(tmp_path, training):
    trainer = _run(training.config(tmp_path, num_epochs=1, precision="bf16"))
    assert trainer.step == 4
    assert all(torch.isfinite(p).all() for p in trainer.clip.parameters())
    assert not trainer.scaler.is_enabled()


def test_fp16_on_cpu_is_refused_with_the_fix(tmp_path, training):
    with pytest.raises(ConfigError) as err:
        Trainer(training.config(tmp_path, num_epochs=1, precision="fp16"))
    assert str(err.value).startswith("train.precision: fp16 training needs a CUDA GPU")
    assert 'train.precision = "bf16"' in str(err.value)


def test_accumulation_counts_optimizer_steps_over_micro_batches(tmp_path, training):
    trainer = _run(training.config(tmp_path, num_epochs=2, accum_steps=2))
    assert trainer.steps_per_epoch == 2 and trainer.total_steps == 4 and trainer.step == 4
    assert trainer.samples_seen == 2 * 64


def test_accum_steps_larger_than_an_epoch_is_a_config_error(tmp_path, training):
    with pytest.raises(ConfigError, match="train.accum_steps"):
        Trainer(training.config(tmp_path, accum_steps=5))


def test_frozen_vision_tower_does_not_change_and_has_no_optimizer_state(tmp_path, training):
    import attrs

    cfg = training.config(tmp_path, num_epochs=1)
    cfg = attrs.evolve(cfg, model=attrs.evolve(cfg.model, freeze_vision_encoder=True))
    trainer = Trainer(cfg)
    before = {k: v.clone() for k, v in trainer.clip.vision_tower.state_dict().items()}
    text_before = trainer.clip.text_tower["proj"].weight.detach().clone()
    trainer.train()
    for name, value in trainer.clip.vision_tower.state_dict().items():
        assert torch.equal(value, before[name]), name
    assert not torch.equal(trainer.clip.text_tower["proj"].weight, text_before)
    vision = {id(p) for p in trainer.clip.vision_tower.parameters()}
    assert not any(id(p) in vision for p in trainer.optimizer.state)


def test_pretrained_model_path_starts_from_the_weights_only(tmp_path, training):
    first = _run(training.config(tmp_path / "a", num_epochs=1))
    weights = tmp_path / "a" / "train" / "latest.pth"
    trainer = Trainer(training.config(tmp_path / "b", pretrained_model_path=str(weights)))
    for name, value in first.clip.state_dict().items():
        assert torch.equal(trainer.clip.state_dict()[name], value), name
    assert trainer.step == 0 and not trainer.optimizer.state
    trainer.log.close()


def test_resume_refuses_a_weights_only_checkpoint(tmp_path, training):
    from core.runtime.checkpoint import model_checkpoint, save_atomic

    trainer = Trainer(training.config(tmp_path / "a"))
    trainer.log.close()
    path = save_atomic(model_checkpoint(trainer.clip), tmp_path / "weights.pth")
    with pytest.raises(ClipcoreError, match="pretrained_model_path") as err:
        Trainer(training.config(tmp_path / "b", resume_training_checkpoint_path=str(path)))
    assert "train.resume_training_checkpoint_path" in str(err.value)


def test_auto_resume_without_a_checkpoint_says_so_loudly(tmp_path, training):
    trainer = Trainer(training.config(tmp_path, resume_training_checkpoint_path="auto"))
    trainer.log.close()
    assert "STARTING FROM SCRATCH" in (tmp_path / "train" / "logs" / "rank0.log").read_text()


def test_nan_loss_stops_with_causes_and_keeps_the_last_good_checkpoint(tmp_path, training):
    cfg = training.config(tmp_path, loss_type="nan_after", checkpoint_interval_unit="step", checkpoint_interval=1)
    with pytest.raises(NonFiniteLoss) as err:
        _run(cfg)
    message = str(err.value)
    assert "NaN or infinite at step 4" in message
    for cause in ("learning rate", "warmup", "captions", "grad_clip_norm"):
        assert cause in message
    latest = tmp_path / "train" / "latest.pth"
    assert str(latest) in message and latest.samefile(tmp_path / "train" / "step_3.pth")
    ckpt = load_checkpoint(latest)
    assert ckpt["train_state"]["step"] == 3
    assert "training stopped: NonFiniteLoss" in (tmp_path / "train" / "logs" / "rank0.log").read_text()
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values())


@pytest.mark.parametrize("error", [RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                   MemoryError(), torch.OutOfMemoryError("out of memory")])
def test_out_of_memory_names_the_levers(tmp_path, monkeypatch, error, training):
    trainer = Trainer(training.config(tmp_path))

    def explode(*args, **kwargs):
        raise error

    monkeypatch.setattr(trainer.clip, "image_features", explode)
    with pytest.raises(ClipcoreError) as err:
        trainer.train()
    message = str(err.value)
    assert "out of host memory at step 1" in message
    for lever in ("dataset.train.batch_size (now 16)", "train.accum_steps", "train.grad_checkpointing",
                  "train.precision", "model.freeze_vision_encoder"):
        assert lever in message


def test_out_of_memory_in_the_optimizer_step_too(tmp_path, monkeypatch, training):
    trainer = Trainer(training.config(tmp_path))
    monkeypatch.setattr(trainer.optimizer, "step", lambda *a, **k: (_ for _ in ()).throw(
        torch.OutOfMemoryError("CUDA out of memory")))
    with pytest.raises(ClipcoreError, match="out of host memory at step 1"):
        trainer.train()


def test_gradient_checkpointing_trains_identically(tmp_path, training):
    plain = _run(training.config(tmp_path / "plain", num_epochs=1))
    checkpointed = _run(training.config(tmp_path / "ckpt", num_epochs=1, grad_checkpointing=True))
    assert checkpointed.clip.grad_checkpointing
    for name, value in plain.clip.state_dict().items():
        torch.testing.assert_close(checkpointed.clip.state_dict()[name], value, rtol=1e-5, atol=1e-6)


def test_other_runtime_errors_are_not_disguised(tmp_path, monkeypatch, training):
    trainer = Trainer(training.config(tmp_path))
    monkeypatch.setattr(trainer.clip, "image_features", lambda *a: (_ for _ in ()).throw(RuntimeError("shape")))
    with pytest.raises(RuntimeError, match="shape"):
        trainer.train()


def test_world_size_mismatch_names_both_numbers(tmp_path, monkeypatch, training):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError) as err:
        Trainer(training.config(tmp_path, num_gpus=1))
    assert "WORLD_SIZE=2" in str(err.value) and "1 × 1 = 1" in str(err.value)


def test_several_processes_outside_torchrun_is_a_config_error(tmp_path, training):
    with pytest.raises(ConfigError, match="not started by torchrun") as err:
        Trainer(training.config(tmp_path, num_gpus=2))
    assert "core train" in str(err.value)


def test_validation_logs_retrieval_metrics_and_keeps_the_best_checkpoint(tmp_path, training):
    cfg = training.config(tmp_path, validate=True, num_epochs=3, checkpoint_interval=2)
    trainer = _run(cfg)
    out = tmp_path / "train"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if "val/t2i_mAP" in r]
    assert [r["step"] for r in val] == [4, 8, 12]
    for direction in ("i2t", "t2i"):
        for metric in ("R@1", "R@5", "R@10", "mAP", "MedR", "MeanR", "AUC"):
            assert f"val/{direction}_{metric}" in val[0]
    best = max(val, key=lambda r: r["val/t2i_mAP"])
    ckpt = load_checkpoint(out / "best.pth")
    assert ckpt["train_state"]["step"] == best["step"]
    assert ckpt["train_state"]["best_value"] == pytest.approx(best["val/t2i_mAP"])
    assert trainer.checkpoints.best_value == pytest.approx(best["val/t2i_mAP"])
    assert sorted(p.name for p in out.glob("epoch_*.pth")) == ["epoch_2.pth", "epoch_3.pth"]
    assert "validation at epoch 3 step 12" in (out / "logs" / "rank0.log").read_text()


def test_step_validation_interval(tmp_path, training):
    _run(training.config(tmp_path, validate=True, num_epochs=1, val_check_interval=3))
    records = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val/t2i_R@1" in r] == [3]


def test_core_train_launches_torchrun_for_several_processes(tmp_path, monkeypatch, training):
    import argparse

    import core.cli.launch as launch
    import core.cli.train as train_module

    calls = []
    monkeypatch.setattr(launch, "run_torchrun", lambda cmd, env: calls.append((cmd, env)) or 0)
    args = argparse.Namespace(config="clip.toml", results_dir=str(tmp_path), num_gpus=2,
                              overrides=["train.num_epochs=3"])
    train_module.run(training.config(tmp_path, num_gpus=2), args)
    (cmd, env), = calls
    assert cmd[1:4] == ["-m", "torch.distributed.run", "--nproc_per_node=2"]
    assert "--nnodes=1" in cmd and "--standalone" in cmd
    assert cmd[cmd.index("-m", 2):] == ["-m", "core.train", "--config", "clip.toml", f"results_dir={tmp_path}",
                                        "train.num_gpus=2", "train.num_epochs=3"]

    monkeypatch.setattr(launch, "run_torchrun", lambda cmd, env: 1)
    with pytest.raises(ClipcoreError, match="torchrun worker") as err:
        train_module.run(training.config(tmp_path, num_gpus=2), args)
    assert "logs" in str(err.value)


def test_two_nodes_need_the_rendezvous_environment(tmp_path, monkeypatch, training):
    from core.runtime.distributed import torchrun_command

    cfg = training.config(tmp_path, num_gpus=4, num_nodes=2)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        torchrun_command(cfg.train, [])
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.setenv("RDZV_ID", "job7")
    cmd = torchrun_command(cfg.train, ["--config", "x.toml"])
    assert {"--nproc_per_node=4", "--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=10.0.0.1:29500",
            "--rdzv-id=job7", "--rdzv-conf=join_timeout=600", "--max-restarts=0"} <= set(cmd)
    assert "--standalone" not in cmd
