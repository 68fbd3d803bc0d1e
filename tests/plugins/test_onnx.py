"""ONNX export: TAO's I/O contract, sidecars, and ONNX Runtime vs PyTorch parity for every
registered backbone family at tiny size, combined and separate, at two batch sizes."""

from __future__ import annotations

import math
import os
import re

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import yaml
from PIL import Image

from core.errors import ClipcoreError
from core.registry import get_registry
from deploy.onnxruntime_runner import open_runner
from exporters.onnx.export import export_onnx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
ALL_TYPES = os.environ.get("CLIPCORE_EXPORT_ALL_TYPES") == "1"


def _types() -> list:
    """One model type per registered family (every type with CLIPCORE_EXPORT_ALL_TYPES=1)."""
    params = []
    for entry in get_registry().entries["backbones"].values():
        types = entry.obj.types if ALL_TYPES else entry.obj.types[:1]
        params += [pytest.param(t, id=t) for t in types]
    return params


@pytest.fixture(scope="module", params=["combined", "separate"])
def encoder(request):
    return request.param


@pytest.fixture(scope="module", params=_types())
def tiny_model(request):
    torch.manual_seed(0)
    model_type = request.param
    model = get_registry().backbone_for(model_type).tiny(model_type).float().eval()
    with torch.no_grad():  # a trained-looking scale and bias, so the exported values are checked
        model.logit_scale.fill_(2.7)
        if model.logit_bias is not None:
            model.logit_bias.fill_(-6.5)
    return model


@pytest.fixture(scope="module")
def exported(tiny_model, encoder, tmp_path_factory, exports):
    folder = tmp_path_factory.mktemp("export")
    cfg = exports.config(folder / "model.onnx", encoder)
    if tiny_model.export_refusal:
        with pytest.raises(ClipcoreError, match=re.escape(tiny_model.export_refusal)):
            export_onnx(tiny_model, cfg)
        pytest.skip(f"{tiny_model.model_type} refuses export (checked): {tiny_model.export_refusal}")
    files = export_onnx(tiny_model, cfg)
    return tiny_model, folder, files


def _torch_images(model, images):
    with torch.no_grad():
        return model.encode_image(torch.as_tensor(images), normalize=True).numpy()


def _torch_texts(model, texts):
    with torch.no_grad():
        return model.encode_text(model.tokenizer(texts), normalize=True).numpy()


# --------------------------------------------------------------------------- parity
@pytest.mark.parametrize("batch", [1, 3])
def test_ort_matches_pytorch(exported, batch, exports):
    model, folder, _ = exported
    runner = open_runner(folder / "model.onnx", providers=["CPUExecutionProvider"], batch_size=batch)
    pre = model.preprocess
    images = torch.randn(batch + 2, 3, pre.height, pre.width, generator=torch.Generator().manual_seed(batch)).numpy()
    exports.assert_close(runner.encode_images(images), _torch_images(model, images))
    exports.assert_close(runner.encode_texts(exports.TEXTS[: batch + 2]), _torch_texts(model, exports.TEXTS[: batch + 2]))


def test_sidecar_tokenizer_and_preprocessing_match_the_model(exported, tmp_path, exports):
    """Text tokenised through the exported _tokenizer/, images preprocessed from _config.yaml."""
    from core.runtime.transforms import eval_transform

    model, folder, _ = exported
    runner = open_runner(folder / "model.onnx", providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(runner.tokenizer(exports.TEXTS), model.tokenizer(exports.TEXTS).numpy())
    paths = exports.write_images(tmp_path)
    transform = eval_transform(model.preprocess)
    want = _torch_images(model, torch.stack([transform(Image.open(p)) for p in paths]))
    exports.assert_close(runner.encode_images(paths), want)


def test_logit_outputs_and_sidecar_convention(exported):
    model, folder, files = exported
    doc = yaml.safe_load((folder / "model_config.yaml").read_text())
    deploy, scale = doc["deploy"], float(model.logit_scale.detach())
    bias = 0.0 if model.logit_bias is None else float(model.logit_bias.detach())
    assert deploy["logit_scale"]["log"] == pytest.approx(scale) and deploy["logit_scale"]["exp"] == pytest.approx(math.exp(scale))
    assert doc["model"]["init_logit_scale"] == pytest.approx(scale)  # TAO's field: log space
    assert doc["model"]["type"] == deploy["model_type"] == model.model_type
    assert deploy["logit_bias"] == pytest.approx(bias)
    assert deploy["text"] == {**model.tokenizer.spec.to_dict(), "attention_mask": deploy["text"]["attention_mask"]}
    assert deploy["preprocess"] == yaml.safe_load(yaml.safe_dump(model.preprocess.to_dict()))
    for file in files:
        onnx.checker.check_model(str(file), full_check=True)
        session = ort.InferenceSession(str(file), providers=["CPUExecutionProvider"])
        feeds = {i.name: np.zeros([1 if isinstance(d, str) else d for d in i.shape],
                                  np.float32 if i.name == "image" else np.int64) for i in session.get_inputs()}
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
        assert got["logit_scale"].shape == () and got["logit_scale"] == pytest.approx(math.exp(scale), rel=1e-6)
        assert got["logit_bias"].shape == () and got["logit_bias"] == pytest.approx(bias, abs=1e-6)


# --------------------------------------------------------------------------- the I/O contract
def _io(path):
    graph = onnx.load(str(path)).graph
    def describe(values):
        return {v.name: (v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
                for v in values}
    return describe(graph.input), describe(graph.output)


@pytest.fixture(scope="module")
def example():
    torch.manual_seed(0)
    return get_registry().backbone_for("example-tiny").tiny("example-tiny").eval()


F32, I64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64


def test_combined_io_contract_with_dynamic_batch(example, tmp_path, exports):
    (path,) = export_onnx(example, exports.config(tmp_path / "m.onnx"))
    inputs, outputs = _io(path)
    assert list(inputs) == ["image", "input_ids", "attention_mask"]
    assert inputs == {"image": (F32, ["batch_size", 3, 32, 32]), "input_ids": (I64, ["batch_size", 32]),
                      "attention_mask": (I64, ["batch_size", 32])}
    assert outputs == {"image_embedding": (F32, ["batch_size", 32]), "text_embedding": (F32, ["batch_size", 32]),
                       "logit_scale": (F32, []), "logit_bias": (F32, [])}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "m_config.yaml", "m_tokenizer"]
    assert (tmp_path / "m_tokenizer" / "tokenizer.json").is_file()


def test_separate_static_batch_without_attention_mask(example, tmp_path, exports):
    cfg = exports.config(tmp_path / "m.onnx", "separate", batch_size=2, attention_mask_input=False)
    vision, text = export_onnx(example, cfg)
    assert (vision.name, text.name) == ("m_vision.onnx", "m_text.onnx")
    assert _io(vision) == ({"image": (F32, [2, 3, 32, 32])},
                           {"image_embedding": (F32, [2, 32]), "logit_scale": (F32, []), "logit_bias": (F32, [])})
    assert _io(text) == ({"input_ids": (I64, [2, 32])},
                         {"text_embedding": (F32, [2, 32]), "logit_scale": (F32, []), "logit_bias": (F32, [])})
    runner = open_runner(tmp_path / "m", providers=["CPUExecutionProvider"])
    assert runner.max_batch == 2
    images = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)  # padded to 2+2 rows
    exports.assert_close(runner.encode_images(images), _torch_images(example, images))
    exports.assert_close(runner.encode_texts(exports.TEXTS[:3]), _torch_texts(example, exports.TEXTS[:3]))


def test_only_the_needed_tower_is_opened(example, tmp_path, exports):
    export_onnx(example, exports.config(tmp_path / "m.onnx", "separate"))
    runner = open_runner(tmp_path / "m_vision.onnx", providers=["CPUExecutionProvider"])
    assert runner.has_vision and runner.has_text
    runner.encode_texts(["a cat"])
    assert list(runner._graphs) == ["text"]
    (tmp_path / "m_text.onnx").unlink()
    vision_only = open_runner(tmp_path / "m_vision.onnx")
    assert vision_only.has_vision and not vision_only.has_text
    with pytest.raises(ClipcoreError, match="no text tower"):
        vision_only.encode_texts(["a cat"])


def test_runner_refuses_sidecars_that_do_not_fit_the_graph(example, tmp_path, exports):
    export_onnx(example, exports.config(tmp_path / "m.onnx"))
    config = tmp_path / "m_config.yaml"
    doc = yaml.safe_load(config.read_text())
    doc["deploy"]["text"]["context_length"] = 64
    config.write_text(yaml.safe_dump(doc))
    with pytest.raises(ClipcoreError, match="input_ids input has length 32 but its tokenizer pads to 64"):
        open_runner(tmp_path / "m.onnx").encode_texts(["a cat"])
    runner = open_runner(tmp_path / "m.onnx")
    with pytest.raises(ClipcoreError, match=r"images have shape \(2, 3, 16, 16\), the model takes \[N, 3, 32, 32\]"):
        runner.encode_images(np.zeros((2, 3, 16, 16), np.float32))


def test_external_data_file(example, tmp_path, monkeypatch, exports):
    import exporters.onnx.export as export_module

    monkeypatch.setattr(export_module, "EXTERNAL_DATA_BYTES", 0)
    (path,) = export_onnx(example, exports.config(tmp_path / "m.onnx"))
    weights = tmp_path / "m_weights.bin"
    assert weights.is_file() and path.stat().st_size < weights.stat().st_size
    onnx.checker.check_model(str(path), full_check=True)
    assert yaml.safe_load((tmp_path / "m_config.yaml").read_text())["deploy"]["external_data"] == {"m.onnx": "m_weights.bin"}
    exports.assert_close(open_runner(path).encode_texts(["a cat"]), _torch_texts(example, ["a cat"]))
    weights.rename(tmp_path / "renamed.bin")
    with pytest.raises(ClipcoreError, match="m_weights.bin"):
        open_runner(path)


# --------------------------------------------------------------------------- refusals
def test_refuses_to_overwrite_without_force(example, tmp_path, exports):
    cfg = exports.config(tmp_path / "m.onnx")
    export_onnx(example, cfg)
    before = (tmp_path / "m.onnx").stat().st_mtime_ns
    with pytest.raises(ClipcoreError, match="refusing to overwrite .*m.onnx") as err:
        export_onnx(example, cfg)
    assert "--force" in str(err.value)
    assert (tmp_path / "m.onnx").stat().st_mtime_ns == before
    cfg.export.force = True
    export_onnx(example, cfg)
    assert (tmp_path / "m.onnx").stat().st_mtime_ns != before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]


def test_export_refusal_gives_the_reason(example, tmp_path, monkeypatch, exports):
    monkeypatch.setattr(example, "export_refusal", "NaFlex takes variable-resolution patches")
    with pytest.raises(ClipcoreError, match="cannot be exported to ONNX: NaFlex takes variable-resolution patches"):
        export_onnx(example, exports.config(tmp_path / "m.onnx"))
    assert not list(tmp_path.iterdir())
