"""The weights decide whether a model has a logit bias: evaluate, inference and export never add
one; only training with a loss that needs one does, with the loss's init (resolved once, in
core.runtime.build, so every family, third-party ones included, follows the same rule)."""

from __future__ import annotations

import logging

import pytest
import torch

from core.runtime.build import build_model
from core.runtime.checkpoint import model_checkpoint, save_atomic
from core.cli.main import main
from core.errors import ClipcoreError
from core.registry import get_registry
from core.spec.load import load_config
from core.train.trainer import Trainer

DEMO = ["model.type=clipcore-demo-tiny", "model.pretrained=false"]


@pytest.fixture
def clip_style_weights(tmp_path):
    """An open_clip weights file (as NV-CLIP's are) without logit_bias."""
    model = build_model(load_config(None, DEMO))
    assert model.logit_bias is None
    path = tmp_path / "nvclip_like.pth"
    rename = {"vision_tower.": "visual.", "text_tower.": "text."}  # open_clip's CustomTextCLIP layout
    state = {}
    for key, value in model.state_dict().items():
        prefix = next((p for p in rename if key.startswith(p)), "")
        state[rename.get(prefix, "") + key[len(prefix):]] = value
    torch.save(state, path)
    return path


def test_a_clip_style_file_gets_no_bias_in_evaluate_or_export(clip_style_weights, tmp_path):
    cfg = load_config(None, ["model.type=clipcore-demo-tiny", f"model.pretrained={clip_style_weights}"])
    assert cfg.train.loss_type == "siglip"  # the default loss, which trains a bias
    assert build_model(cfg).logit_bias is None
    assert main(["export", "model.type=clipcore-demo-tiny", f"model.pretrained={clip_style_weights}",
                 f"results_dir={tmp_path}", "export.input_height=64", "export.input_width=64"]) == 0
    [sidecar] = (tmp_path / "export").glob("*_config.yaml")
    text = sidecar.read_text()
    assert "matching: softmax" in text and "sigmoid" not in text


def test_training_with_a_sigmoid_loss_adds_the_loss_bias_and_logs_it(tmp_path, caplog):
    siglip = get_registry().get("losses", "siglip", key="k")
    cfg = load_config(None, DEMO)
    with caplog.at_level(logging.INFO, logger="clipcore"):
        model = build_model(cfg, loss=siglip)
    assert model.logit_bias.item() == pytest.approx(siglip.init_logit_bias)
    assert "the siglip loss trains a logit bias; the model's starts at -10" in caplog.text
    clip = get_registry().get("losses", "clip", key="k")
    assert build_model(cfg, loss=clip).logit_bias is None


def test_a_third_party_family_gets_the_same_rule(tmp_path, training):
    cfg = training.config(tmp_path)  # example-tiny, the example plugin's family; loss siglip
    assert build_model(cfg).logit_bias is None
    assert Trainer(cfg).clip.logit_bias.item() == pytest.approx(-10.0)


def test_a_checkpoint_keeps_its_bias_and_one_without_gets_none(tmp_path, training):
    cfg = training.config(tmp_path)
    trained = build_model(cfg, loss=get_registry().get("losses", "siglip", key="k"))
    save_atomic(model_checkpoint(trained), tmp_path / "with_bias.pth")
    assert build_model(cfg, str(tmp_path / "with_bias.pth")).logit_bias.item() == pytest.approx(-10.0)
    plain = build_model(cfg)
    save_atomic(model_checkpoint(plain), tmp_path / "no_bias.pth")
    assert build_model(cfg, str(tmp_path / "no_bias.pth")).logit_bias is None


def test_a_missing_bias_names_the_loss_as_the_likely_cause(tmp_path, training):
    cfg = training.config(tmp_path)
    save_atomic(model_checkpoint(build_model(cfg)), tmp_path / "no_bias.pth")
    model = build_model(cfg, loss=get_registry().get("losses", "siglip", key="k"))
    from core.weights import load_model_weights

    with pytest.raises(ClipcoreError) as err:
        load_model_weights(model, tmp_path / "no_bias.pth", key="train.resume_training_checkpoint_path")
    assert "logit_bias" in str(err.value) and "train.loss_type must be the loss the checkpoint was trained with"\
        in str(err.value)
