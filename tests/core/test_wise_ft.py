"""``core wise-ft``: interpolation, the choice rule, the outputs, and bad ``--alphas``."""

from __future__ import annotations

import json

import pytest
import torch

from core.cli.main import main
from core.cli.wise_ft import choose, interpolate, parse_alphas
from core.errors import ConfigError

torch.set_num_threads(1)


@pytest.mark.parametrize("text, alphas", [("0:1:0.25", [0, 0.25, 0.5, 0.75, 1.0]), ("0,0.5,1", [0, 0.5, 1.0]),
                                          ("0.3", [0.3]), ("0:1:0.1", [round(i / 10, 10) for i in range(11)])])
def test_alphas(text, alphas):
    assert parse_alphas(text) == pytest.approx(alphas)


@pytest.mark.parametrize("text", ["0:1", "a,b", "0:1:0", "1:0:0.1", "0,1.5", ""])
def test_bad_alphas_are_one_message(text):
    with pytest.raises(ConfigError, match="--alphas"):
        parse_alphas(text)


def test_interpolation_and_the_choice_rule():
    start, end = {"w": torch.zeros(2), "n": torch.tensor(3)}, {"w": torch.ones(2), "n": torch.tensor(5)}
    mid = interpolate(start, end, 0.25)
    assert torch.equal(mid["w"], torch.full((2,), 0.25)) and mid["n"].item() == 5
    rows = [{"alpha": a, "metrics": {"t": t, "g": g}} for a, t, g in [(0, 0.1, 0.8), (0.5, 0.5, 0.795), (1, 0.7, 0.6)]]
    assert choose(rows, "t", "g", 0.01)["alpha"] == 0.5
    assert choose(rows, "t", None, 0.01)["alpha"] == 1


def test_core_wise_ft_end_to_end(tmp_path, training, capsys):
    from core.train.trainer import Trainer
    from core.weights import load_checkpoint

    Trainer(training.config(tmp_path, validate=True, num_epochs=1)).train()
    spec = training.write_spec(tmp_path / "spec.toml", tmp_path)
    reference = [f"dataset.val.datasets.0.image_dir={tmp_path}", "dataset.reference.type=synthetic",
                 f"dataset.reference.datasets.0.image_dir={tmp_path}", "dataset.reference.num_workers=0",
                 "dataset.reference.batch_size=32"]
    code = main(["wise-ft", "-c", str(spec), "--finetuned", str(tmp_path / "train" / "latest.pth"),
                 "--alphas", "0:1:0.5", *reference])
    out = capsys.readouterr().out
    assert code == 0 and "chose α" in out
    results = json.loads((tmp_path / "wise_ft" / "results.json").read_text())
    assert [r["alpha"] for r in results["alphas"]] == [0, 0.5, 1.0]
    assert all({"val/t2i_mAP", "ref/t2i_R@1"} <= r["metrics"].keys() for r in results["alphas"])
    chosen = load_checkpoint(tmp_path / "wise_ft" / "wise_ft.pth")["wise_ft"]
    assert chosen["alpha"] == results["rule"]["alpha"] and (tmp_path / "wise_ft" / "wise_ft.png").stat().st_size > 0

    import yaml

    assert main(["export", "-c", str(spec), f"export.checkpoint={tmp_path / 'wise_ft' / 'wise_ft.pth'}",
                 f"export.onnx_file={tmp_path / 'm.onnx'}", "export.input_height=32", "export.input_width=32"]) == 0
    deploy = yaml.safe_load((tmp_path / "m_config.yaml").read_text())["deploy"]
    assert deploy["provenance"]["wise_ft"]["alpha"] == chosen["alpha"]  # the chosen α travels to deployment


def test_bad_alphas_on_the_command_line(tmp_path, training, capsys):
    spec = training.write_spec(tmp_path / "spec.toml", tmp_path)
    code = main(["wise-ft", "-c", str(spec), "--finetuned", str(tmp_path / "x.pth"), "--alphas", "zero:one",
                 "dataset.val.datasets.0.image_dir=synthetic"])
    assert code == 2 and "--alphas: cannot read 'zero:one' as alphas" in capsys.readouterr().err


def test_wise_ft_merges_lora_adapters_before_interpolating(tmp_path, training, capsys):
    from core.runtime.checkpoint import model_checkpoint, save_atomic
    from core.runtime.build import build_model
    from core.train.trainer import Trainer
    from core.weights import load_checkpoint

    base = save_atomic(model_checkpoint(build_model(training.config(tmp_path / "start"))), tmp_path / "base.pth")
    lora = ["model.peft.enabled=true", f"train.pretrained_model_path={base}"]
    Trainer(load_config_with(training, tmp_path, lora)).train()
    assert "base" in load_checkpoint(tmp_path / "train" / "latest.pth")  # adapters only
    spec = training.write_spec(tmp_path / "spec.toml", tmp_path)
    code = main(["wise-ft", "-c", str(spec), "--finetuned", str(tmp_path / "train" / "latest.pth"), "--alphas", "0,1",
                 f"dataset.val.datasets.0.image_dir={tmp_path}", *lora])
    assert code == 0, capsys.readouterr().err
    weights = load_checkpoint(tmp_path / "wise_ft" / "wise_ft.pth")["model"]
    assert not any(".lora_" in k for k in weights)  # interpolated in the base architecture


def load_config_with(training, results, extra):
    from core.spec.load import load_config

    return load_config(None, [*training.overrides(results, validate=True, num_epochs=1), *extra])
