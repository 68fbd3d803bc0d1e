"""core.weights: logit initialisation from the loss plugin, safe weight-file reading, path detection."""

from __future__ import annotations

import math

import attrs
import pytest
import torch
from safetensors.torch import save_file

from core.config import ExperimentConfig
from core.errors import ClipcoreError
from core.weights import init_logit_values, looks_like_path, missing_weights_error, read_weights_file


def cfg_with(loss: str, **model) -> ExperimentConfig:
    cfg = ExperimentConfig()
    return attrs.evolve(cfg, model=attrs.evolve(cfg.model, **model), train=attrs.evolve(cfg.train, loss_type=loss))


def test_init_logit_values_follow_loss_then_overrides():
    assert init_logit_values(cfg_with("siglip")) == pytest.approx((math.log(10), -10.0))
    assert init_logit_values(cfg_with("clip")) == (pytest.approx(math.log(1 / 0.07)), None)
    assert init_logit_values(cfg_with("not-registered")) == pytest.approx((math.log(10), -10.0))
    assert init_logit_values(cfg_with("clip", init_logit_bias=-2.71)) == pytest.approx((math.log(1 / 0.07), -2.71))
    assert init_logit_values(cfg_with("siglip", init_logit_scale=1.0, init_logit_bias=0.5)) == (1.0, 0.5)


def test_read_weights_file_unwraps_and_strips(tmp_path):
    tensors = {"a.weight": torch.ones(2), "b": torch.zeros(1)}
    torch.save({"model": {f"module.{k}": v for k, v in tensors.items()}, "step": 3}, tmp_path / "w.pth")
    save_file(tensors, str(tmp_path / "w.safetensors"))
    for name in ("w.pth", "w.safetensors"):
        read = read_weights_file(tmp_path / name)
        assert read.clipcore_type is None and read.state_dict.keys() == tensors.keys()
    torch.save({"format": "clipcore", "model_type": "t", "model": tensors}, tmp_path / "c.pth")
    assert read_weights_file(tmp_path / "c.pth").clipcore_type == "t"


def test_read_weights_file_errors(tmp_path):
    with pytest.raises(ClipcoreError, match="weights file not found"):
        read_weights_file(tmp_path / "missing.pth")
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ClipcoreError, match="holds no state dict"):
        read_weights_file(tmp_path / "list.pth")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ClipcoreError, match="cannot read safetensors file"):
        read_weights_file(tmp_path / "junk.safetensors")


def test_paths_ids_and_tags_are_told_apart(tmp_path):
    assert looks_like_path(str(tmp_path)) and looks_like_path("./weights") and looks_like_path("w.pth")
    assert looks_like_path("/models/x") and looks_like_path("a/b/c")
    assert not looks_like_path("google/siglip2-so400m-patch16-256") and not looks_like_path("laion2b_s34b_b79k")


def test_missing_weights_error_always_offers_random_init():
    message = str(missing_weights_error("m", ["here", "there"], ["way one"]))
    assert "'m'" in message and "here; there" in message and "(1) way one" in message
    assert "model.pretrained = false" in message and "clipcore checkpoint" in message
