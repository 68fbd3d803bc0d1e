"""core.weights: logit initialisation from the loss plugin, safe weight-file reading, path detection."""

from __future__ import annotations

import argparse
import os

import attrs
import pytest
import torch
from safetensors.torch import save_file

from core.weights import load_checkpoint
from core.spec.config import ExperimentConfig
from core.errors import ClipcoreError
from core.weights import init_logit_values, load_torch_file, looks_like_path, missing_weights_error, read_weights_file


def cfg_with(loss: str, **model) -> ExperimentConfig:
    cfg = ExperimentConfig()
    return attrs.evolve(cfg, model=attrs.evolve(cfg.model, **model), train=attrs.evolve(cfg.train, loss_type=loss))


def test_init_logit_values_are_what_core_resolved():
    assert init_logit_values(cfg_with("siglip")) == (0.0, None)  # unresolved: multiplier 1, no bias
    assert init_logit_values(cfg_with("clip", init_logit_bias=-2.71)) == (0.0, -2.71)
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


class RunsCommand:
    """Unpickles as ``os.system(command)``: what a hostile checkpoint does."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


SAFE_LOADERS = {"load_torch_file": lambda path: load_torch_file(path, where="model.pretrained"),
                "read_weights_file": read_weights_file, "load_checkpoint": load_checkpoint}


@pytest.mark.parametrize("loader", SAFE_LOADERS.values(), ids=SAFE_LOADERS.keys())
def test_hostile_pickle_runs_nothing_and_is_named(tmp_path, loader):
    marker = tmp_path / "ran"
    path = tmp_path / "hostile.pth"
    torch.save({"format": "clipcore", "model": {}, "payload": RunsCommand(f"touch {marker}")}, path)
    with pytest.raises(ClipcoreError) as err:
        loader(path)
    assert not marker.exists()
    message = str(err.value)
    assert f"{path} needs the Python global `{os.system.__module__}.system` to unpickle; clipcore refuses it" in message
    assert f"python -m zipfile -l {path}" in message and "python -m pickletools" in message
    assert "Only if you trust the file and its source, re-save just its tensors" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message


@pytest.mark.parametrize("loader", SAFE_LOADERS.values(), ids=SAFE_LOADERS.keys())
def test_foreign_global_is_named(tmp_path, loader):
    path = tmp_path / "lightning.ckpt"
    torch.save({"format": "clipcore", "state_dict": {}, "hparams": argparse.Namespace(lr=1e-4)}, path)
    with pytest.raises(ClipcoreError) as err:
        loader(path)
    message = str(err.value)
    assert "needs the Python global `argparse.Namespace` to unpickle" in message
    assert "weights_only=False" not in message and "add_safe_globals" not in message


def test_files_the_safe_loader_cannot_parse(tmp_path):
    (tmp_path / "junk.pth").write_bytes(bytes(range(163, 256)))
    with pytest.raises(ClipcoreError, match=r"junk.pth is refused by torch's safe loader \(Unsupported operand 163\)"):
        load_torch_file(tmp_path / "junk.pth", where="model.pretrained")
    torch.save({"w": torch.zeros(1000)}, tmp_path / "whole.pth")
    (tmp_path / "half.pth").write_bytes((tmp_path / "whole.pth").read_bytes()[:2000])
    with pytest.raises(ClipcoreError) as err:
        load_torch_file(tmp_path / "half.pth", where="checkpoint")
    assert str(err.value).startswith(f"checkpoint: cannot read {tmp_path / 'half.pth'}: PytorchStreamReader failed")
    assert "fix: the file is truncated, corrupt or not a PyTorch file" in str(err.value)
