"""gen_trt_engine and the TensorRT runner: every input error on any machine; engines and parity
only on a CUDA machine with TensorRT (``gpu`` marker, skipped cleanly elsewhere)."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
import torch
import yaml

from core.spec.config import ExperimentConfig
from deploy.tensorrt.config import SECTION, TensorRTConfig
from core.errors import ClipcoreError, ConfigError, PluginError
from core.registry import get_registry
from deploy.tensorrt import unavailable
from deploy.tensorrt.builder import build_engines, engine_files
from deploy.tensorrt.runner import check_batch
from deploy.tensorrt.runner import open_runner as open_trt_runner
from exporters.onnx.export import export_onnx

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
NO_TRT = unavailable()


@pytest.fixture(scope="module")
def separate_export(tmp_path_factory, exports):
    torch.manual_seed(0)
    model = get_registry().backbone_for("example-tiny").tiny("example-tiny").eval()
    folder = tmp_path_factory.mktemp("export")
    export_onnx(model, exports.config(folder / "m.onnx", "separate"))
    return model, folder


def trt_config(onnx_file, engine, **tensorrt) -> ExperimentConfig:
    cfg = ExperimentConfig()
    cfg.gen_trt_engine.onnx_file, cfg.gen_trt_engine.trt_engine = str(onnx_file), str(engine)
    cfg.plugins[SECTION.path] = TensorRTConfig(**tensorrt)
    return cfg


def _copy_export(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


# --------------------------------------------------------------------------- any machine
def test_engine_names_for_both_towers(tmp_path):
    towers = {"vision": None, "text": None}
    assert engine_files(tmp_path / "e.engine", towers) == {"vision": tmp_path / "e_vision.engine",
                                                           "text": tmp_path / "e_text.engine"}
    assert engine_files(tmp_path / "e.plan", {"combined": None}) == {"combined": tmp_path / "e.plan"}


def test_missing_external_data_names_the_expected_file(separate_export, tmp_path):
    _, folder = separate_export
    export = _copy_export(folder, tmp_path / "export")
    config = export / "m_config.yaml"
    doc = yaml.safe_load(config.read_text())
    doc["deploy"]["external_data"] = {"m_vision.onnx": "m_vision_weights.bin"}
    config.write_text(yaml.safe_dump(doc))
    with pytest.raises(ClipcoreError, match="external-data file m_vision_weights.bin, which is missing"):
        build_engines(trt_config(export / "m", tmp_path / "m.engine"))


def test_text_length_must_match_the_tokenizer(separate_export, tmp_path):
    _, folder = separate_export
    export = _copy_export(folder, tmp_path / "export")
    config = export / "m_config.yaml"
    doc = yaml.safe_load(config.read_text())
    doc["deploy"]["text"]["context_length"] = 64
    config.write_text(yaml.safe_dump(doc))
    with pytest.raises(ClipcoreError, match="input input_ids has length 32, but the tokenizer in the sidecar pads to 64"):
        build_engines(trt_config(export / "m.onnx", tmp_path / "m.engine"))


def test_missing_sidecars_are_named(separate_export, tmp_path):
    _, folder = separate_export
    export = _copy_export(folder, tmp_path / "export")
    (export / "m_config.yaml").unlink()
    with pytest.raises(ClipcoreError, match="m_config.yaml and m_tokenizer/ are missing"):
        build_engines(trt_config(export / "m.onnx", tmp_path / "m.engine"))
    engines = tmp_path / "engines"
    engines.mkdir()
    (engines / "m_vision.engine").write_bytes(b"engine")
    with pytest.raises(ClipcoreError, match="sidecars m_config.yaml and m_tokenizer/ are missing"):
        open_trt_runner(engines / "m_vision.engine")


def test_unordered_profile_is_refused(separate_export, tmp_path):
    _, folder = separate_export
    cfg = trt_config(folder / "m.onnx", tmp_path / "m.engine", min_batch_size=8, opt_batch_size=4)
    with pytest.raises(ConfigError, match="min_batch_size 8, opt_batch_size 4, max_batch_size 16"):
        build_engines(cfg)


def test_batch_outside_profile_names_the_profile():
    check_batch("image", 4, (1, 16), "m.engine")
    with pytest.raises(ClipcoreError, match=r"batch 32 of input image is outside the engine's profile \(min 1, max 16"):
        check_batch("image", 32, (1, 16), "m.engine")


@pytest.mark.skipif(NO_TRT is None, reason="TensorRT and a GPU are present")
def test_without_tensorrt_the_build_says_why(separate_export, tmp_path):
    _, folder = separate_export
    with pytest.raises(ClipcoreError, match="TensorRT") as err:
        build_engines(trt_config(folder / "m.onnx", tmp_path / "m.engine"))
    assert NO_TRT in str(err.value)
    assert not (tmp_path / "m_vision.engine").exists()


def test_gen_trt_engine_action_defaults_the_engine_path(separate_export, tmp_path):
    import core.cli.gen_trt_engine as action

    _, folder = separate_export
    cfg = ExperimentConfig()
    cfg.results_dir = str(tmp_path)
    cfg.gen_trt_engine.onnx_file = str(folder / "m.onnx")
    assert action.engine_path(cfg, tmp_path / "gen_trt_engine") == tmp_path / "gen_trt_engine" / "m.engine"
    with pytest.raises(PluginError, match="gen_trt_engine.trt_engine: no installed engine builder writes .onnx files"):
        get_registry().for_suffix("engine_builders", folder / "m.onnx", key="gen_trt_engine.trt_engine")
    cfg.gen_trt_engine.onnx_file = None
    with pytest.raises(ConfigError, match="gen_trt_engine.onnx_file"):
        action.run(cfg, argparse.Namespace())


# --------------------------------------------------------------------------- GPU + TensorRT
@pytest.mark.gpu
@pytest.mark.skipif(NO_TRT is not None, reason=str(NO_TRT))
@pytest.mark.parametrize("data_type", ["fp32", "fp16"])
def test_engines_match_onnx_runtime(separate_export, tmp_path, data_type, exports):
    from deploy.onnxruntime_runner import open_runner as open_ort
    from deploy.tensorrt.runner import open_runner as open_trt

    _, folder = separate_export
    cfg = trt_config(folder / "m", tmp_path / "e.engine", data_type=data_type, min_batch_size=1,
                     opt_batch_size=4, max_batch_size=8)
    cfg.gen_trt_engine.timing_cache = str(tmp_path / "timing.cache")
    engines = build_engines(cfg)
    assert [e.name for e in engines] == ["e_vision.engine", "e_text.engine"]
    assert (tmp_path / "e_config.yaml").is_file() and (tmp_path / "e_tokenizer" / "tokenizer.json").is_file()
    assert (tmp_path / "timing.cache").stat().st_size > 0
    trt, ort = open_trt(tmp_path / "e.engine"), open_ort(folder / "m.onnx")
    images = np.random.default_rng(0).standard_normal((11, 3, 32, 32), dtype=np.float32)  # > max batch: chunked
    atol, cosine = (1e-4, 0.99999) if data_type == "fp32" else (1e-2, 0.999)
    exports.assert_close(trt.encode_images(images), ort.encode_images(images), atol=atol, min_cosine=cosine)
    exports.assert_close(trt.encode_texts(exports.TEXTS), ort.encode_texts(exports.TEXTS), atol=atol, min_cosine=cosine)
    graph = trt._graph("vision")
    with pytest.raises(ClipcoreError, match="outside the engine's profile"):
        graph.run({"image": np.zeros((9, 3, 32, 32), np.float32)}, ["image_embedding"])


# --------------------------------------------------------------------------- int8 (rules and calibration: any machine)
def int8_config(pairs_data, onnx_file, engine, **tensorrt) -> ExperimentConfig:
    from core.spec.load import load_config

    cfg = load_config(pairs_data / "dataset.toml", ["export.calibration_images=16", "evaluate.batch_size=8"])
    cfg.gen_trt_engine.onnx_file, cfg.gen_trt_engine.trt_engine = str(onnx_file), str(engine)
    cfg.plugins[SECTION.path] = TensorRTConfig(data_type="int8", **tensorrt)
    return cfg


def test_int8_is_refused_without_dataset_val(separate_export, pairs_data, tmp_path):
    _, folder = separate_export
    cfg = int8_config(pairs_data, folder / "m", tmp_path / "e.engine")
    cfg.dataset.val.datasets = []
    with pytest.raises(ConfigError, match="dataset.val.datasets: tensorrt.data_type = int8 is scored on dataset.val "
                                          "before the engine is kept, and dataset.val has no data"):
        build_engines(cfg)


def test_int8_is_refused_for_an_fp16_export_or_a_single_tower(separate_export, pairs_data, tmp_path):
    _, folder = separate_export
    export = _copy_export(folder, tmp_path / "export")
    (export / "m_text.onnx").rename(tmp_path / "m_text.onnx")
    with pytest.raises(ConfigError, match="m_vision.onnx has only its vision tower"):
        build_engines(int8_config(pairs_data, export / "m_vision.onnx", tmp_path / "e.engine"))
    (tmp_path / "m_text.onnx").rename(export / "m_text.onnx")
    doc = yaml.safe_load((export / "m_config.yaml").read_text())
    doc["deploy"]["precision"] = "fp16"
    (export / "m_config.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="m_config.yaml is an fp16 export; an int8 engine needs the fp32 or int8 export"):
        build_engines(int8_config(pairs_data, export / "m", tmp_path / "e.engine"))
    assert not list(tmp_path.glob("e.*")) and not list(tmp_path.glob("e_*"))


def test_int8_cache_names_follow_the_engine_and_the_setting(pairs_data, tmp_path):
    from deploy.tensorrt.calibration import cache_file

    cfg = int8_config(pairs_data, "m", tmp_path / "e.engine")
    assert cache_file(cfg, tmp_path / "e_vision.engine") == tmp_path / "e_vision.calib.json"
    cfg.plugins[SECTION.path] = TensorRTConfig(data_type="int8", calibration_cache=str(tmp_path / "c" / "my.calib.json"))
    assert cache_file(cfg, tmp_path / "e_text.engine") == tmp_path / "c" / "my_text.calib.json"
    assert cache_file(cfg, tmp_path / "e.engine") == tmp_path / "c" / "my.calib.json"
    cfg.plugins[SECTION.path] = TensorRTConfig(data_type="int8", calibration_cache=str(tmp_path / "ranges.bin"))
    assert cache_file(cfg, tmp_path / "e_vision.engine") == tmp_path / "ranges_vision.bin"


def test_int8_ranges_are_measured_on_training_images_and_cached(separate_export, pairs_data, tmp_path, monkeypatch,
                                                                caplog):
    import json

    import onnx

    import deploy.tensorrt.calibration as calibration
    from core import artifact

    _, folder = separate_export
    export = _copy_export(folder, tmp_path / "export")
    artifacts = artifact.locate(export / "m", (".onnx",), key="onnx_file")
    onnx_path, cache = artifacts.files["vision"], tmp_path / "e_vision.calib.json"
    cfg = int8_config(pairs_data, export / "m", tmp_path / "e.engine")
    ranges = calibration.activation_ranges(cfg, onnx_path, artifacts, cache)
    graph = onnx.load(str(onnx_path)).graph
    tensors = {o for node in graph.node for o in node.output} | {i.name for i in graph.input}
    assert {"image", "image_embedding"} <= ranges.keys() <= tensors
    assert all(v >= 0 for v in ranges.values()) and ranges["image_embedding"] <= 1.0 + 1e-6  # L2-normalised
    assert ranges["image"] > 0.5  # pixels of real training images (this model normalises to [0, 1])
    doc = json.loads(cache.read_text())
    assert doc["calibration_images"] == 16 and doc["ranges"] == ranges and len(doc["onnx_sha256"]) == 64

    measured = []
    real = calibration._measure
    monkeypatch.setattr(calibration, "_measure", lambda *a: measured.append(a) or real(*a))
    assert calibration.activation_ranges(cfg, onnx_path, artifacts, cache) == ranges
    assert measured == [], "a matching cache is reused"
    cfg.export.calibration_images = 8
    calibration.activation_ranges(cfg, onnx_path, artifacts, cache)
    assert len(measured) == 1 and json.loads(cache.read_text())["calibration_images"] == 8
    changed = onnx.load(str(onnx_path))
    changed.doc_string = "another model"
    onnx.save(changed, str(onnx_path))
    cache.write_text("{not json")
    calibration.activation_ranges(cfg, onnx_path, artifacts, cache)
    assert len(measured) == 2 and "calibrating again" in caplog.text
    assert not list(tmp_path.glob(".*")), "no temporary files are left"


def test_the_gate_scores_against_a_runner_of_the_export(separate_export, pairs_data, tmp_path):
    from core import accuracy_gate
    from deploy.onnxruntime_runner import open_runner as open_ort

    _, folder = separate_export
    cfg = int8_config(pairs_data, folder / "m", tmp_path / "e.engine")
    record = accuracy_gate(cfg, open_ort(folder / "m"), open_ort(folder / "m"), "int8",
                           key="gen_trt_engine.tensorrt.data_type")
    assert record["recall_drop_points"] == {"i2t_R@1": 0.0, "t2i_R@1": 0.0}
    assert min(record["min_cosine"].values()) > 0.99999

    class Shuffled:  # a broken engine: every image embedding belongs to another image
        def __init__(self, runner):
            self.runner = runner
            self.has_vision = self.has_text = True
            self.logit_scale, self.logit_bias = runner.logit_scale, runner.logit_bias
            self.encode_texts = runner.encode_texts

        def encode_images(self, images):
            return np.roll(self.runner.encode_images(images), 1, axis=0)

    with pytest.raises(ClipcoreError, match="gen_trt_engine.tensorrt.data_type: the int8 export loses"):
        accuracy_gate(cfg, open_ort(folder / "m"), Shuffled(open_ort(folder / "m")), "int8",
                      key="gen_trt_engine.tensorrt.data_type")


# --------------------------------------------------------------------------- int8 engines (GPU + TensorRT)
@pytest.mark.gpu
@pytest.mark.skipif(NO_TRT is not None, reason=str(NO_TRT))
@pytest.mark.parametrize("source", ["fp32", "int8"])
def test_int8_engines_pass_the_gate_and_record_it(tiny_example_model, pairs_data, tmp_path, source):
    from core.spec.load import load_config

    export_cfg = load_config(pairs_data / "dataset.toml", [f"export.onnx_file={tmp_path / 'x' / 'm.onnx'}",
                                                           "export.encoder_type=separate", f"export.precision={source}",
                                                           "export.calibration_images=16", "export.input_height=32",
                                                           "export.input_width=32", "export.max_recall_drop=100",
                                                           "export.min_cosine=0.5"])
    export_onnx(tiny_example_model, export_cfg)
    cfg = int8_config(pairs_data, tmp_path / "x" / "m", tmp_path / "e.engine", max_batch_size=8)
    cfg.export.max_recall_drop, cfg.export.min_cosine = 100.0, 0.5  # random weights: R@1 is at chance
    assert [e.name for e in build_engines(cfg)] == ["e_vision.engine", "e_text.engine"]
    engine = yaml.safe_load((tmp_path / "e_config.yaml").read_text())["deploy"]["engine"]
    assert engine["data_type"] == "int8" and engine["precision_gate"]["int8"].keys() == {"i2t_R@1", "t2i_R@1"}
    assert (tmp_path / "e_vision.calib.json").is_file() == (source == "fp32")


def test_int8_calibration_needs_a_static_batch_of_images(pairs_data, tmp_path, tiny_example_model, exports):
    from core import artifact
    from deploy.tensorrt.calibration import activation_ranges

    export_onnx(tiny_example_model, exports.config(tmp_path / "s.onnx", batch_size=16, input_height=32, input_width=32))
    artifacts = artifact.locate(tmp_path / "s.onnx", (".onnx",), key="onnx_file")
    cfg = int8_config(pairs_data, tmp_path / "s.onnx", tmp_path / "e.engine")
    cfg.export.calibration_images = 8
    with pytest.raises(ConfigError, match="export.calibration_images: 8 calibration images are fewer than the "
                                          "export's static batch of 16"):
        activation_ranges(cfg, tmp_path / "s.onnx", artifacts, tmp_path / "e.calib.json")
