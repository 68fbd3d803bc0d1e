"""The torch-free deploy runtime: preprocessing, tokenisation rules, artifact discovery, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from core.backbone import PreprocessSpec
from core.errors import ClipcoreError
from core import artifact
from core.preprocess import preprocess_images
from core.preprocess import SidecarTokenizer, canonicalize_text as canonicalize

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- preprocessing
@pytest.mark.parametrize("mode", ["squash", "shortest"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
@pytest.mark.parametrize("size", [(24, 24), (16, 28)])
def test_preprocess_matches_the_pytorch_eval_transform(tmp_path, mode, interpolation, size, exports):
    from core.runtime.transforms import eval_transform

    spec = PreprocessSpec(height=size[0], width=size[1], mean=(0.48, 0.45, 0.40), std=(0.27, 0.26, 0.28),
                          resize_mode=mode, interpolation=interpolation)
    paths = exports.write_images(tmp_path, sizes=((40, 30), (17, 50), (64, 64), (24, 24)))
    transform = eval_transform(spec)
    want = np.stack([transform(Image.open(p)).numpy() for p in paths])
    have = preprocess_images(paths, spec.to_dict())
    assert have.dtype == np.float32 and have.shape == want.shape
    assert np.abs(have - want).max() <= 1e-5


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    spec = PreprocessSpec(height=8, width=8, mean=(0.5,) * 3, std=(0.5,) * 3, resize_mode="squash",
                          interpolation="bilinear").to_dict()
    with pytest.raises(ClipcoreError, match="broken.jpg"):
        preprocess_images([bad], spec)


# --------------------------------------------------------------------------- tokenisation rules
def _wordpiece_dir(folder: Path) -> Path:
    """A BERT-style tokenizer directory ([CLS] text [SEP]) built offline."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b", "c", "d", "cat", "dog", "photo", "of", "!", ",", "_"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                            unk_token="[UNK]").save_pretrained(str(folder))
    return folder


def _spec(**kw):
    return {"context_length": 6, "pad_id": 0, "padding_side": "right", "lowercase": False, "canonicalize": False,
            "strip_sep_token": False, "mask_policy": "none", "pooling": "first", **kw}


def test_canonicalize_follows_big_vision():
    assert canonicalize("A_Photo, of   a CAT!!") == "a photo of a cat"
    assert canonicalize("  ") == ""


def test_tokenizer_rules(tmp_path):
    folder = _wordpiece_dir(tmp_path / "tok")
    plain = SidecarTokenizer(folder, _spec())
    assert plain(["cat dog", ""]).tolist() == [[2, 8, 9, 3, 0, 0], [2, 3, 0, 0, 0, 0]]
    assert plain(["A"]).tolist() == [[2, 1, 3, 0, 0, 0]]  # case kept: "A" is unknown
    assert SidecarTokenizer(folder, _spec(lowercase=True))(["A"]).tolist() == [[2, 4, 3, 0, 0, 0]]
    canon = SidecarTokenizer(folder, _spec(canonicalize=True))
    assert canon(["Cat_dog!"]).tolist() == [[2, 8, 9, 3, 0, 0]]
    # truncation keeps the special tokens; [SEP] stripping re-pads
    assert plain(["a b c d a b"]).tolist() == [[2, 4, 5, 6, 7, 3]]
    stripped = SidecarTokenizer(folder, _spec(strip_sep_token=True))
    assert stripped(["a b c d a b", "cat"]).tolist() == [[2, 4, 5, 6, 7, 0], [2, 8, 0, 0, 0, 0]]
    left = SidecarTokenizer(folder, _spec(padding_side="left"))
    assert left(["cat"]).tolist() == [[0, 0, 0, 2, 8, 3]]
    assert plain([]).shape == (0, 6)


def test_tokenizer_directory_without_tokenizer_json(tmp_path):
    with pytest.raises(ClipcoreError, match="no tokenizer.json"):
        SidecarTokenizer(tmp_path, _spec())


# --------------------------------------------------------------------------- finding files and sidecars
def _fake_export(folder: Path, stem: str, towers, suffix=".onnx") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for tower in towers:
        artifact.tower_file(folder / stem, tower, suffix).write_bytes(b"x")


def test_find_model_files_from_file_base_or_one_tower(tmp_path):
    _fake_export(tmp_path, "m", ["vision", "text"])
    _fake_export(tmp_path, "c", ["combined"])
    both = {"vision": tmp_path / "m_vision.onnx", "text": tmp_path / "m_text.onnx"}
    assert artifact.find_model_files(tmp_path / "m.onnx", [".onnx"], key="k") == (tmp_path / "m", both)
    assert artifact.find_model_files(tmp_path / "m", [".onnx"], key="k")[1] == both
    assert artifact.find_model_files(tmp_path / "m_text.onnx", [".onnx"], key="k")[1] == both
    assert artifact.find_model_files(tmp_path / "c.onnx", [".onnx"], key="k")[1] == {"combined": tmp_path / "c.onnx"}
    (tmp_path / "m_vision.onnx").unlink()
    assert artifact.find_model_files(tmp_path / "m_text.onnx", [".onnx"], key="k")[1] == {"text": tmp_path / "m_text.onnx"}
    with pytest.raises(ClipcoreError, match="no model file found") as err:
        artifact.find_model_files(tmp_path / "nothing.onnx", [".onnx"], key="evaluate.onnx_file")
    assert "nothing_vision.onnx" in str(err.value) and "evaluate.onnx_file" in str(err.value)


def test_sidecars_found_in_tao_locations_or_clear_error(tmp_path):
    engines = tmp_path / "run" / "gen_trt_engine"
    _fake_export(engines, "m", ["combined"], ".engine")
    with pytest.raises(ClipcoreError, match="m_config.yaml and m_tokenizer/ are missing") as err:
        artifact.locate(engines / "m.engine", [".engine"], key="trt_engine")
    assert str(tmp_path / "run" / "export") in str(err.value)
    export = tmp_path / "run" / "export"
    (export / "m_tokenizer").mkdir(parents=True)
    (export / "m_config.yaml").write_text(yaml.safe_dump({"model": {"type": "x"}}))
    with pytest.raises(ClipcoreError, match="no clipcore `deploy` section"):
        artifact.locate(engines / "m.engine", [".engine"], key="trt_engine")
    (export / "m_config.yaml").write_text(yaml.safe_dump({"deploy": {"format": artifact.FORMAT, "version": 99}}))
    with pytest.raises(ClipcoreError, match="version 99"):
        artifact.locate(engines / "m.engine", [".engine"], key="trt_engine")


def test_external_data_file_missing_names_the_expected_file(tmp_path):
    onnx_file = tmp_path / "m.onnx"
    onnx_file.write_bytes(b"x")
    deploy = {"external_data": {"m.onnx": "m_weights.bin"}}
    with pytest.raises(ClipcoreError, match="m_weights.bin.*missing") as err:
        artifact.check_external_data(onnx_file, deploy)
    assert "never rename" in str(err.value)
    (tmp_path / "m_weights.bin").write_bytes(b"w")
    artifact.check_external_data(onnx_file, deploy)


# --------------------------------------------------------------------------- torch-free
def test_runtime_modules_never_import_torch():
    """The ONNX Runtime deploy path imports no torch and no transformers."""
    code = ("import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None; "
            "import deploy.onnxruntime_runner, deploy.runner, core.preprocess, core.artifact; "
            "print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
