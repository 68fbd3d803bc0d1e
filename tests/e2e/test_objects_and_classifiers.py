"""Classification and object-level use from the command line, on `core demo-data`'s class folders
and detection frames, for a built-in family (clipcore-demo-tiny, OpenCLIP) and the example plugin:
linear probe → calibrate → export with the classifier → torch-free `classify`; detections →
object embeddings → re-identification and object search. Every family's tiny model runs the
same actions in-process (`test_every_family_probes_and_embeds_objects`)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from core.cli.main import main

MODELS = {"example-tiny": 32, "clipcore-demo-tiny": 64}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("objects") / "data"
    assert main(["demo-data", str(data), "--n", "8", "--val", "4", "--class-images", "12",
                 "--detection-frames", "10"]) == 0
    return data


@pytest.fixture(scope="module", params=list(MODELS))
def run(request, demo, tmp_path_factory):
    """A seeded model of the parameter's type saved as a checkpoint, and the overrides every action
    shares (model, checkpoint, output folder, no worker processes)."""
    from core.runtime.build import build_model
    from core.runtime.checkpoint import model_checkpoint, save_atomic
    from core.spec.load import load_config

    model_type, size = request.param, MODELS[request.param]
    root = tmp_path_factory.mktemp(model_type)
    model_args = [f"model.type={model_type}", "model.pretrained=false", f"model.image_size={size}"]
    torch.manual_seed(0)
    model = build_model(load_config(None, model_args)).eval()
    checkpoint = save_atomic(model_checkpoint(model), root / "model.pth")
    args = [*model_args, f"results_dir={root / 'results'}"]
    for action in ("linear_probe", "calibrate", "inference", "evaluate"):
        args += [f"{action}.checkpoint={checkpoint}", f"{action}.num_workers=0"]
    return model, args, root / "results"


def test_probe_calibrate_export_and_classify(run, demo, tmp_path):
    from core import preprocess_images
    from core.classifier import load_classifier
    from deploy.onnxruntime_runner import open_runner

    model, args, results = run
    classes = demo / "classes"
    assert main(["linear-probe", *args, f"linear_probe.train_dir={classes / 'train'}",
                 f"linear_probe.test_dir={classes / 'test'}", "linear_probe.init=zeroshot",
                 "linear_probe.max_iter=30"]) == 0
    probe = json.loads((results / "linear_probe" / "results.json").read_text())
    assert probe["images"]["test"] == 36 and len(probe["classes"]) == 6
    assert 0 <= probe["probe"]["top1"] <= 1 and (results / "linear_probe" / "confusion_matrix.png").is_file()

    assert main(["calibrate", *args, f"calibrate.classifier={results / 'linear_probe' / 'probe_head.pt'}",
                 f"calibrate.val_dir={classes / 'test'}"]) == 0
    calibration = json.loads((results / "calibrate" / "results.json").read_text())
    assert calibration["nll_after"] <= calibration["nll_before"] + 1e-9
    assert (results / "calibrate" / "reliability.png").is_file()

    calibrated = results / "calibrate" / "classifier.pt"
    size = MODELS[args[0].split("=")[1]]
    assert main(["export", *args, f"export.checkpoint={results.parent / 'model.pth'}", f"export.classifier={calibrated}",
                 f"export.input_height={size}", f"export.input_width={size}", f"export.onnx_file={tmp_path / 'm.onnx'}"]) == 0
    runner = open_runner(tmp_path / "m.onnx")
    images = sorted((classes / "test").rglob("*.png"))[::6]
    classifier = load_classifier(calibrated)
    with torch.no_grad():
        pixels = torch.from_numpy(preprocess_images(images, runner.deploy["preprocess"]))
        want = classifier.probabilities(model.encode_image(pixels, normalize=True)).numpy()
    for row, probs in zip(runner.classify(images, top_k=2), want):
        top = np.argsort(-probs, kind="stable")[:2]
        assert [name for name, _ in row] == [classifier.classes[c] for c in top]
        np.testing.assert_allclose([p for _, p in row], probs[top], atol=1e-5)


def test_object_embeddings_reid_and_object_search(run, demo, capsys):
    model, args, results = run
    coco = json.loads((demo / "detections" / "detections.json").read_text())
    assert main(["inference", *args, f"inference.detections={demo / 'detections' / 'detections.json'}"]) == 0
    with h5py.File(results / "inference" / "object_embeddings.h5", "r") as f:
        assert f.attrs["embedding_type"] == "object" and len(f["embeddings"]) == len(coco["annotations"])
        assert list(f["instance_ids"][()]) == [a["instance_id"] for a in coco["annotations"]]
        assert set(f["camera_ids"][()]) == {0, 1}

    assert main(["evaluate", *args, f"evaluate.reid_query={results / 'inference' / 'object_embeddings.h5'}"]) == 0
    reid = json.loads((results / "evaluate" / "results.json").read_text())["reid"]
    assert reid["query_objects"] == len(coco["annotations"]) and 0 <= reid["mAP"] <= 1
    assert reid["rank-1"] <= reid["rank-5"] <= reid["rank-10"]

    capsys.readouterr()
    assert main(["search", "--images", str(results / "inference" / "object_embeddings.h5"), "--object", "0",
                 "-k", "3", *[x for a in args for x in ("-o", a)]]) == 0
    assert "frames/00000.png" in capsys.readouterr().out


FAMILIES = ["siglip2-so400m-patch14-224", "c-radio_v3-b", "clipcore-demo-tiny", "example-tiny"]


@pytest.mark.parametrize("model_type", FAMILIES)
def test_every_family_probes_and_embeds_objects(model_type, demo, tmp_path):
    """The probe's features, the zero-shot init and the object crops go through the backbone
    contract alone: each family's tiny model runs them (in-process, as the actions do)."""
    from core.cli.inference import infer
    from core.cli.linear_probe import _probe_and_report
    from core.eval.embed import ModelEncoder
    from core.registry import get_registry
    from core.runtime.distributed import World
    from core.spec.load import load_config

    torch.manual_seed(0)
    model = get_registry().backbone_for(model_type).tiny(model_type).eval()
    classes = demo / "classes"
    cfg = load_config(None, [f"model.type={model_type}", f"results_dir={tmp_path}", "linear_probe.num_workers=0",
                             f"linear_probe.train_dir={classes / 'train'}", f"linear_probe.test_dir={classes / 'test'}",
                             "linear_probe.init=zeroshot", "linear_probe.max_iter=20", "inference.num_workers=0",
                             f"inference.detections={demo / 'detections' / 'detections.json'}"])
    encoder = ModelEncoder(model, torch.device("cpu"), source={"checkpoint": "", "pretrained": "tiny"})
    world = World(rank=0, size=1, local_rank=0, device=torch.device("cpu"))
    _probe_and_report(cfg, encoder, world, tmp_path / "linear_probe")
    assert json.loads((tmp_path / "linear_probe" / "results.json").read_text())["probe"]["top1"] >= 0
    infer(cfg, encoder, world, tmp_path / "inference")
    with h5py.File(tmp_path / "inference" / "object_embeddings.h5", "r") as f:
        embeddings = f["embeddings"][()]
    assert len(embeddings) > 30 and np.allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-4)
