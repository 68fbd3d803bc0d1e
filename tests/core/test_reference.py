"""The guard set (``dataset.reference``): measured before training and at every validation
(``ref/*``), retrieval and zero-shot classification; the best checkpoint may be bounded by its
drop; bad settings get one clear message."""

from __future__ import annotations

import json

import pytest
import torch

from core.errors import ConfigError
from core.spec.load import check, load_config

torch.set_num_threads(1)
REFERENCE = ["dataset.reference.type=synthetic", "dataset.reference.datasets.0.image_dir=synthetic",
             "dataset.reference.batch_size=32", "dataset.reference.num_workers=0"]


def classes(tmp_path, data_kit):
    root = tmp_path / "classes"
    for i, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for j in range(3):
            (root / name / f"{j}.png").write_bytes(data_kit.image_bytes(size=(32, 32), seed=10 * i + j))
    return root


def test_the_guard_set_is_measured_before_training_and_at_every_validation(tmp_path, training, data_kit):
    from core.train.trainer import Trainer

    cfg = load_config(None, [*training.overrides(tmp_path, validate=True, num_epochs=2), *REFERENCE,
                             f"dataset.reference.classification_dir={classes(tmp_path, data_kit)}",
                             "dataset.reference.num_workers=0"])
    Trainer(cfg).train()
    records = [json.loads(line) for line in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
    guarded = [r for r in records if "ref/t2i_R@1" in r]
    assert [r["step"] for r in guarded] == [0, 4, 8]  # before training, then each epoch's validation
    assert "val/t2i_R@1" not in guarded[0] and all("val/t2i_R@1" in r for r in guarded[1:])
    assert all(0 <= r["ref/classification/top1"] <= 1 for r in guarded)


def test_a_bounded_drop_keeps_the_best_checkpoint_among_guarded_validations(tmp_path, training):
    from core.train.trainer import Trainer

    cfg = load_config(None, [*training.overrides(tmp_path, validate=True, num_epochs=1), *REFERENCE,
                             "train.reference_max_drop=0.05"])
    trainer = Trainer(cfg)
    trainer.reference_baseline = {"ref/t2i_R@1": 0.5}
    assert trainer._eligible({"ref/t2i_R@1": 0.46, "val/t2i_mAP": 0.9})
    assert not trainer._eligible({"ref/t2i_R@1": 0.44, "val/t2i_mAP": 0.99})


def test_a_reference_metric_the_run_does_not_measure_fails_before_training(tmp_path, training):
    from core.train.trainer import Trainer

    cfg = load_config(None, [*training.overrides(tmp_path, num_epochs=1), *REFERENCE,
                             "train.reference_max_drop=0.01", "train.reference_metric=ref/classification/top1"])
    with pytest.raises(ConfigError, match="train.reference_metric: ref/classification/top1 is not a guard-set metric"):
        Trainer(cfg).train()


@pytest.mark.parametrize("overrides, message", [
    (["dataset.reference.classification_dir=/nowhere/classes"],
     "dataset.reference.classification_dir: folder /nowhere/classes does not exist"),
    (["dataset.reference.datasets.0.image_dir=/nowhere/images"],
     "dataset.reference.datasets.0.image_dir: path /nowhere/images does not exist"),
    (["train.reference_max_drop=0.01"], "train.reference_max_drop: is set, but there is no reference set"),
    (["train.reference_metric=val/t2i_R@1"], "train.reference_metric: 'val/t2i_R@1' is not a guard-set metric"),
])
def test_bad_guard_set_settings(tmp_path, overrides, message):
    cfg = load_config(None, ["model.type=example-tiny", "model.pretrained=false",
                             f"dataset.train.datasets.0.image_dir={tmp_path}", *overrides])
    with pytest.raises(ConfigError) as err:
        check(cfg, "train")
    assert message in str(err.value)
