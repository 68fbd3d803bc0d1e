"""Reduced-precision ONNX exports (``export.precision``) and the accuracy gate that keeps or refuses
them: fp16 with its fp32 islands, int8 static QDQ calibrated on training images, the sidecar record,
and every refusal (a failing gate writes nothing, no training images, unreadable calibration
images skipped and reported)."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import yaml

from core.cli.main import main
from core.errors import ClipcoreError, ConfigError, DataError
from core.eval.precision import CALIBRATION_SKIPPED_FILE, accuracy_gate
from core.spec.load import load_config
from deploy.onnxruntime_runner import open_runner
from exporters.onnx.export import export_onnx


def config(data, onnx_file, **export):
    cfg = load_config(data / "dataset.toml", [f"export.onnx_file={onnx_file}", "export.input_height=32",
                                              "export.input_width=32", "evaluate.batch_size=8"])
    for key, value in export.items():
        setattr(cfg.export, key, value)
    return cfg


def gate_record(path):
    return yaml.safe_load(path.with_name(path.stem.removesuffix("_vision") + "_config.yaml").read_text())["deploy"]


def test_fp16_keeps_normalisation_in_fp32_and_records_the_gate(tiny_example_model, pairs_data, tmp_path):
    (path,) = export_onnx(tiny_example_model, config(pairs_data, tmp_path / "m.onnx", precision="fp16"))
    graph = onnx.load(str(path)).graph
    halves = {i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16}
    assert halves, "the weights are fp16"
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)}
    assert types["image"] == types["image_embedding"] == onnx.TensorProto.FLOAT  # fp32 in and out
    for node in graph.node:
        if node.op_type in ("LayerNormalization", "Softmax", "ReduceL2"):
            assert not any(name in halves for name in node.input), node.name
    deploy = gate_record(path)
    assert deploy["precision"] == "fp16"
    gate = deploy["precision_gate"]
    assert gate["images"] == 24 and gate["texts"] == 96 and set(gate["fp32"]) == {"i2t_R@1", "t2i_R@1"}
    assert min(gate["min_cosine"].values()) > 0.999 and max(gate["recall_drop_points"].values()) <= 1.0
    runner = open_runner(path)
    assert runner.encode_texts(["a red circle"]).shape == (1, 32)


def test_int8_is_static_qdq_calibrated_on_training_images(tiny_example_model, pairs_data, tmp_path):
    cfg = config(pairs_data, tmp_path / "m.onnx", precision="int8", encoder_type="separate", calibration_images=32,
                 max_recall_drop=100.0, min_cosine=0.5)
    vision, text = export_onnx(tiny_example_model, cfg)
    for path in (vision, text):
        ops = {n.op_type for n in onnx.load(str(path)).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops, path.name
        assert [n for n in onnx.load(str(path)).graph.node if n.op_type == "DequantizeLinear"
                and any(a.name == "axis" for a in n.attribute)], "per-channel weights"
    deploy = gate_record(vision)
    assert deploy["precision"] == "int8" and deploy["precision_gate"]["int8"].keys() == {"i2t_R@1", "t2i_R@1"}
    assert min(deploy["precision_gate"]["min_cosine"].values()) > 0.9


def test_a_failing_gate_refuses_the_export_with_both_numbers_and_writes_nothing(tiny_example_model, pairs_data, tmp_path):
    cfg = config(pairs_data, tmp_path / "m.onnx", precision="int8", calibration_images=16, min_cosine=1.0)
    with pytest.raises(ClipcoreError) as err:
        export_onnx(tiny_example_model, cfg)
    message = str(err.value)
    assert message.startswith("export.precision: the int8 export's") and "lowest cosine 0.9" in message
    assert "allowed: 1" in message and "nothing was written" in message
    assert "i2t_R@1" in message and "t2i_R@1" in message  # fp32 / int8 values of both
    assert sorted(p.name for p in tmp_path.iterdir()) == []


class _Shuffled:
    """A runner whose image embeddings belong to other images: a broken reduced model."""

    def __init__(self, runner):
        self.runner = runner
        self.has_vision = self.has_text = True
        self.logit_scale, self.logit_bias = runner.logit_scale, runner.logit_bias

    def encode_images(self, images):
        return np.roll(self.runner.encode_images(images), 1, axis=0)

    def encode_texts(self, texts):
        return self.runner.encode_texts(texts)


def test_the_gate_refuses_a_recall_drop_naming_both_numbers(tiny_example_model, pairs_data, tmp_path):
    (path,) = export_onnx(tiny_example_model, config(pairs_data, tmp_path / "m.onnx"))
    cfg = config(pairs_data, tmp_path / "m.onnx", min_cosine=0.01)
    kept = accuracy_gate(cfg, tiny_example_model, open_runner(path), "fp32")
    assert kept["recall_drop_points"] == {"i2t_R@1": 0.0, "t2i_R@1": 0.0}
    cfg.evaluate.batch_size = 24  # one batch: the shuffled rows are other images
    with pytest.raises(ClipcoreError) as err:
        accuracy_gate(cfg, tiny_example_model, _Shuffled(open_runner(path)), "int8")
    message = str(err.value)
    assert "export.precision: the int8 export loses" in message and "points of" in message
    drop = kept["fp32"]
    assert any(f"fp32 {100 * drop[k]:.2f}" in message for k in drop) and "allowed: 1)" in message


def test_int8_needs_training_images(tiny_example_model, pairs_data, tmp_path):
    cfg = config(pairs_data, tmp_path / "m.onnx", precision="int8")
    cfg.dataset.train.datasets = []
    with pytest.raises(DataError, match="dataset.train.datasets: no datasets are configured"):
        export_onnx(tiny_example_model, cfg)


def test_reduced_precision_needs_dataset_val(tiny_example_model, pairs_data, tmp_path):
    cfg = config(pairs_data, tmp_path / "m.onnx", precision="fp16")
    cfg.dataset.val.datasets = []
    with pytest.raises(ConfigError, match="export.precision = fp16 is scored on dataset.val before it is kept"):
        export_onnx(tiny_example_model, cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_unreadable_calibration_images_are_skipped_and_reported(tiny_example_model, pairs_data, tmp_path, caplog):
    images = tmp_path / "train"
    (images / "images").mkdir(parents=True)
    (images / "captions").mkdir()
    for i, source in enumerate(sorted((pairs_data / "train" / "images").iterdir())[:20]):
        (images / "images" / source.name).write_bytes(source.read_bytes() if i % 4 else b"not a png")
        (images / "captions" / f"{source.stem}.txt").write_text("a shape")
    cfg = config(pairs_data, tmp_path / "out" / "m.onnx", precision="int8", calibration_images=8, max_recall_drop=100.0,
                 min_cosine=0.5)
    cfg.dataset.train.datasets[0].image_dir = str(images / "images")
    cfg.dataset.train.datasets[0].caption_dir = str(images / "captions")
    export_onnx(tiny_example_model, cfg)
    skipped = [json.loads(line) for line in (tmp_path / "out" / CALIBRATION_SKIPPED_FILE).read_text().splitlines()]
    assert skipped and all(r["reason"] == "corrupt-image" and r["phase"] == "calibration" for r in skipped)
    assert any("export calibration: skipped" in r.getMessage() for r in caplog.records)


def test_validate_reports_a_reduced_precision_without_dataset_val(tmp_path, capsys):
    spec = tmp_path / "clip.toml"
    spec.write_text('[export]\nprecision = "int8"\n')
    assert main(["validate", "-c", str(spec), "--action", "export"]) == 2
    err = capsys.readouterr().err
    assert "dataset.val.datasets: export.precision = 'int8' is scored on dataset.val" in err


def test_an_exporter_refuses_a_precision_it_does_not_declare(fake_plugin):
    from core.registry import load_registry
    from core.spec.load import check

    source = """
    from core import Exporter, hookimpl

    @hookimpl
    def register_exporters(register):
        register(Exporter(name="fp32only", suffixes=(".f32",), export=lambda model, cfg: []))
    """
    registry = load_registry(plugins=[fake_plugin("fp32only", source)])
    cfg = load_config(None, ["export.onnx_file=model.f32", "export.precision=int8",
                             "dataset.val.datasets.0.image_dir=/x"], registry=registry)
    with pytest.raises(ConfigError) as err:
        check(cfg, "export", registry, check_paths=False)
    assert "export.precision: the fp32only exporter does not write int8" in str(err.value)
    assert "use one of: fp32" in str(err.value)
