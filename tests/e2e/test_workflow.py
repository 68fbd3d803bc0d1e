"""The whole workflow on demo data, from the command line, as a user runs it: generate WebDataset
demo data, train (wds through the same loop), evaluate, embed, search, export, and evaluate the
export torch-free with ONNX Runtime. TAO's `-e` and `-r` options are used throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import tomli
import tomli_w
import torch

from core.cli.main import main
from core.eval.metrics import retrieval_metrics

REPO = Path(__file__).resolve().parents[2]
SPEC = """\
[model]
type = "example-tiny"
pretrained = false
image_size = 32

[train]
num_epochs = 1
loss_type = "clip"
precision = "fp32"
checkpoint_interval = 1
validation_interval = 1

[evaluate]
num_workers = 0

[inference]
num_workers = 0
text_file = "{prompts}"

[[inference.datasets]]
image_dir = "{data}/val/images"

[export]
input_height = 32
input_width = 32
"""
PROMPTS = ["a red circle", "a small blue square", "a green triangle on the left"]


@pytest.fixture(scope="module")
def workflow(tmp_path_factory):
    root = tmp_path_factory.mktemp("workflow")
    data, results = root / "data", root / "results"
    assert main(["demo-data", str(data), "--format", "wds", "--n", "96", "--val", "24", "--seed", "3"]) == 0
    (root / "prompts.txt").write_text("\n".join(PROMPTS) + "\n\n")
    spec = root / "clip.toml"
    table = tomli.loads(SPEC.format(prompts=root / "prompts.txt", data=data))
    table["dataset"] = tomli.loads((data / "dataset.toml").read_text())["dataset"]
    for split in ("train", "val"):
        table["dataset"][split].update(batch_size=16, num_workers=0)
    spec.write_text(tomli_w.dumps(table))
    torch.manual_seed(0)
    assert main(["train", "-e", str(spec), "-r", str(results)]) == 0
    return root, spec, results


def test_wds_training_writes_checkpoints_through_the_common_loop(workflow):
    _, _, results = workflow
    assert (results / "train" / "latest.pth").is_file() and (results / "train" / "epoch_1.pth").is_file()
    lines = [json.loads(line) for line in (results / "train" / "metrics.jsonl").read_text().splitlines()]
    assert any("val/t2i_mAP" in line for line in lines)


def test_evaluate_inference_and_search(workflow, capsys, monkeypatch):
    _, spec, results = workflow
    checkpoint = results / "train" / "latest.pth"
    assert main(["evaluate", "-e", str(spec), "-r", str(results), f"evaluate.checkpoint={checkpoint}"]) == 0
    metrics = json.loads((results / "evaluate" / "results.json").read_text())
    assert metrics["num_images"] == 24 and {"i2t_R@1", "t2i_mAP", "t2i_AUC"} <= set(metrics)

    assert main(["inference", "-e", str(spec), "-r", str(results), f"inference.checkpoint={checkpoint}"]) == 0
    with h5py.File(results / "inference" / "image_embeddings.h5") as f:
        assert f["embeddings"].shape == (24, 32) and f.attrs["num_images"] == 24
        paths = list(f["image_paths"].asstr())
    with h5py.File(results / "inference" / "text_embeddings.h5") as f:
        assert list(f["texts"].asstr()) == PROMPTS

    capsys.readouterr()
    monkeypatch.setenv("COLUMNS", "400")  # whole paths on one line
    assert main(["search", "--images", str(results / "inference" / "image_embeddings.h5"), "a red circle", "-k", "3"]) == 0
    out = capsys.readouterr().out
    assert sum(Path(p).name in out for p in paths) == 3


TORCH_FREE = """
import sys, json
sys.modules["torch"] = None  # any import of torch fails
from deploy.onnxruntime_runner import open_runner
import numpy as np
onnx_file, images, captions, out = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
runner = open_runner(onnx_file)
np.savez(out, images=runner.encode_images(images), texts=runner.encode_texts(captions))
"""


def test_separate_export_evaluated_torch_free_matches_the_checkpoint(workflow):
    root, spec, results = workflow
    checkpoint = results / "train" / "latest.pth"
    assert main(["export", "-e", str(spec), "-r", str(results), f"export.checkpoint={checkpoint}",
                 "--encoder", "separate"]) == 0
    onnx_file = results / "export" / "latest_vision.onnx"
    assert onnx_file.is_file() and (results / "export" / "latest_text.onnx").is_file()

    from core.data import DataRequest
    from core.registry import get_registry
    from core.spec.load import load_config

    cfg = load_config(str(spec), [f"results_dir={results}"])
    val = get_registry().get("dataset_formats", "custom", key="dataset.val.type").retrieval(
        DataRequest(config=cfg, transform=lambda image: image, tokenizer=None, batch_size=16))
    out = root / "torch_free.npz"
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", TORCH_FREE, str(onnx_file), json.dumps(list(val.image_paths)),
                    json.dumps(list(val.captions)), str(out)], check=True, env=env, cwd=root)
    embedded = np.load(out)
    deployed = retrieval_metrics(embedded["images"], embedded["texts"], np.asarray(val.caption_image))
    assert main(["evaluate", "-e", str(spec), "-r", str(results), f"evaluate.checkpoint={checkpoint}"]) == 0
    reference = json.loads((results / "evaluate" / "results.json").read_text())
    for key in ("i2t_R@1", "t2i_R@1", "i2t_mAP", "t2i_mAP", "t2i_AUC"):
        assert abs(deployed[key] - reference[key]) <= 1e-3, key
