"""`core export` and deploy-time model selection (`onnx_file` / `trt_engine` in evaluate and inference)."""

from __future__ import annotations

import os

import numpy as np
import torch

from core.cli.main import main
from core.spec.config import ExperimentConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
TINY = ["model.type=example-tiny", "model.pretrained=false", "model.image_size=32",
        "export.input_height=32", "export.input_width=32"]


def test_core_export_separate_then_refuse_then_force(tmp_path, capsys):
    args = ["export", *TINY, f"results_dir={tmp_path}", "--encoder", "separate"]
    assert main(args) == 0
    folder = tmp_path / "export"
    assert sorted(p.name for p in folder.iterdir()) == [
        "example-tiny_config.yaml", "example-tiny_text.onnx", "example-tiny_tokenizer", "example-tiny_vision.onnx"]
    assert main(args) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0


def test_core_export_input_size_must_match_the_backbone(tmp_path, capsys):
    assert main(["export", "model.type=example-tiny", "model.pretrained=false", f"results_dir={tmp_path}",
                 "export.input_height=224", "export.input_width=224"]) == 2
    err = capsys.readouterr().err
    assert "input size 224x224 does not match example-tiny, which takes 256x256" in err
    assert "export.input_height=256 export.input_width=256" in err


def test_output_file_is_named_after_the_checkpoint(tmp_path):
    from core.cli.export import output_path

    cfg = ExperimentConfig()
    cfg.model.type = "openclip:ViT-B-32"
    assert output_path(cfg, tmp_path) == tmp_path / "openclip_ViT-B-32.onnx"
    cfg.export.checkpoint = "/x/step-100.pth"
    assert output_path(cfg, tmp_path) == tmp_path / "step-100.onnx"
    cfg.export.onnx_file = "/y/model.onnx"
    assert str(output_path(cfg, tmp_path)) == "/y/model.onnx"


def test_evaluate_and_inference_open_the_onnx_runner(tmp_path):
    from core.eval.embed import open_encoder

    assert main(["export", *TINY, f"results_dir={tmp_path}", "--encoder", "separate"]) == 0
    cfg = ExperimentConfig()
    cfg.inference.onnx_file = str(tmp_path / "export" / "example-tiny_text.onnx")
    encoder = open_encoder(cfg, "inference")
    assert encoder.has_vision and encoder.has_text  # the partner tower is found
    embeddings = encoder.encode_texts(["a red cube", "b"]).numpy()
    assert embeddings.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, rtol=1e-5)
