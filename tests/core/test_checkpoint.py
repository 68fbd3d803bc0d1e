"""clipcore checkpoints: atomic writes, weights_only reads, clear refusals."""

import argparse

import pytest
import torch

from clipcore_example_backbone.plugin import TinyClip
from core.runtime.checkpoint import model_checkpoint, save_atomic
from core.weights import load_checkpoint, load_model_weights
from core.errors import ClipcoreError


def test_round_trip_is_exact(tmp_path):
    model = TinyClip("example-tiny")
    save_atomic(model_checkpoint(model), tmp_path / "m.pth")
    other = TinyClip("example-tiny")
    load_model_weights(other, tmp_path / "m.pth", key="evaluate.checkpoint")
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        assert torch.equal(a, b), name


def test_checkpoint_of_another_type_is_refused_by_name(tmp_path):
    save_atomic(model_checkpoint(TinyClip("example-tiny")), tmp_path / "m.pth")
    with pytest.raises(ClipcoreError, match="saved for model type 'example-tiny', but model.type is 'other-type'"):
        load_model_weights(TinyClip("other-type"), tmp_path / "m.pth", key="evaluate.checkpoint")


def test_shape_mismatch_is_one_message_not_a_torch_traceback(tmp_path):
    save_atomic(model_checkpoint(TinyClip("example-tiny", width=32)), tmp_path / "m.pth")
    with pytest.raises(ClipcoreError) as err:
        load_model_weights(TinyClip("example-tiny", width=16), tmp_path / "m.pth", key="export.checkpoint")
    assert str(err.value).startswith("export.checkpoint: ")
    assert "size mismatch" in str(err.value) and "does not match the example-tiny architecture" in str(err.value)


def test_checkpoint_needing_arbitrary_unpickling_is_refused(tmp_path):
    path = tmp_path / "pickled.pth"
    torch.save({"format": "clipcore", "args": argparse.Namespace(lr=1.0)}, path)
    with pytest.raises(ClipcoreError, match="train.pretrained_model_path: .* needs the Python global `argparse.Namespace`"):
        load_checkpoint(path, key="train.pretrained_model_path")


def test_missing_and_foreign_files(tmp_path):
    with pytest.raises(ClipcoreError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pth")
    torch.save({"state_dict": {}}, tmp_path / "tao.pth")
    with pytest.raises(ClipcoreError, match="is not a clipcore checkpoint"):
        load_checkpoint(tmp_path / "tao.pth")


def test_interrupted_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "latest.pth"
    save_atomic({"format": "clipcore", "step": 1}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"format": "clipcore", "step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pth"]
