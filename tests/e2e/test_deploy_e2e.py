"""Deploy-time `core evaluate` / `core inference` with `onnx_file` give the PyTorch path's metrics
and HDF5 files; the ONNX Runtime runner works in a fresh venv without torch (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from core.runtime.checkpoint import model_checkpoint, save_atomic
from core.cli.main import main
from core.registry import get_registry

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
CAPTIONS = ["a red cube", "two blue spheres", "a green cone on the left", "a small yellow star",
            "a purple ring", "three orange squares", "a grey triangle", "a white circle"]
MODEL = ["model.type=example-tiny", "model.pretrained=false", "model.image_size=32"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, exports):
    """Images with captions, a checkpoint, and its separate ONNX export."""
    root = tmp_path_factory.mktemp("deploy")
    images = exports.write_images(root / "images", sizes=[(30 + 7 * i, 50 - 3 * i) for i in range(len(CAPTIONS))])
    for path, caption in zip(images, CAPTIONS):
        path.with_suffix(".txt").write_text(caption)
    (root / "prompts.txt").write_text("\n".join(CAPTIONS[:5]) + "\n")
    torch.manual_seed(0)
    model = get_registry().backbone_for("example-tiny").tiny("example-tiny")
    checkpoint = save_atomic(model_checkpoint(model), root / "tiny.pth")
    assert main(["export", *MODEL, f"results_dir={root}", f"export.checkpoint={checkpoint}",
                 "export.input_height=32", "export.input_width=32", "--encoder", "separate"]) == 0
    return root, checkpoint, root / "export" / "tiny_vision.onnx"


def _common(root, out):
    return [*MODEL, f"results_dir={root / out}", f"dataset.val.datasets.0.image_dir={root / 'images'}",
            "dataset.val.num_workers=0", f"inference.datasets.0.image_dir={root / 'images'}",
            f"inference.text_file={root / 'prompts.txt'}", "inference.num_workers=0", "evaluate.num_workers=0",
            "evaluate.batch_size=3", "inference.batch_size=3"]


def test_evaluate_metrics_match_the_pytorch_path(setup):
    root, checkpoint, onnx_file = setup
    assert main(["evaluate", *_common(root, "torch"), f"evaluate.checkpoint={checkpoint}"]) == 0
    assert main(["evaluate", *_common(root, "onnx"), f"evaluate.onnx_file={onnx_file}"]) == 0
    want = json.loads((root / "torch" / "evaluate" / "results.json").read_text())
    have = json.loads((root / "onnx" / "evaluate" / "results.json").read_text())
    metrics = [k for k, v in want.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    assert "t2i_mAP" in metrics and have["num_images"] == len(CAPTIONS)
    for key in metrics:
        assert have[key] == pytest.approx(want[key], abs=1e-3), key


def test_inference_files_match_the_pytorch_path(setup, exports):
    root, checkpoint, onnx_file = setup
    assert main(["inference", *_common(root, "torch"), f"inference.checkpoint={checkpoint}"]) == 0
    assert main(["inference", *_common(root, "onnx"), f"inference.onnx_file={onnx_file}"]) == 0
    for name, rows in (("image_embeddings.h5", "image_paths"), ("text_embeddings.h5", "texts")):
        with h5py.File(root / "torch" / "inference" / name) as want, h5py.File(root / "onnx" / "inference" / name) as have:
            assert list(have[rows].asstr()) == list(want[rows].asstr())
            for attr in ("embedding_dim", "embedding_type", "num_images", "num_texts"):
                assert have.attrs.get(attr) == want.attrs.get(attr), attr
            exports.assert_close(have["embeddings"][:], want["embeddings"][:])


TORCH_FREE_SCRIPT = """
import sys, numpy as np
assert "torch" not in sys.modules
from deploy.onnxruntime_runner import open_runner
runner = open_runner(sys.argv[1], providers=["CPUExecutionProvider"])
np.save(sys.argv[2], runner.encode_images(sys.argv[4:]))
np.save(sys.argv[3], runner.encode_texts(["a red cube", "two blue spheres", ""]))
assert "torch" not in sys.modules and "transformers" not in sys.modules
print("torch-free ok")
"""


@pytest.mark.slow
def test_ort_runner_in_a_fresh_venv_without_torch(setup, tmp_path, exports):
    """numpy + onnxruntime + tokenizers + pillow + pyyaml (+ pluggy, which `core/__init__` imports)."""
    root, checkpoint, onnx_file = setup
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "numpy", "onnxruntime", "tokenizers", "pillow",
                    "pyyaml", "pluggy"], check=True)
    assert subprocess.run([str(python), "-c", "import torch"], capture_output=True).returncode != 0
    images = sorted(str(p) for p in (root / "images").glob("*.png"))
    out = subprocess.run([str(python), "-c", TORCH_FREE_SCRIPT, str(onnx_file), str(tmp_path / "img.npy"),
                          str(tmp_path / "txt.npy"), *images], cwd=tmp_path, capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "PYTHONPATH": str(REPO)})
    assert out.returncode == 0 and "torch-free ok" in out.stdout, out.stderr
    from deploy.onnxruntime_runner import open_runner

    runner = open_runner(onnx_file)
    exports.assert_close(np.load(tmp_path / "img.npy"), runner.encode_images(images), atol=1e-6)
    exports.assert_close(np.load(tmp_path / "txt.npy"), runner.encode_texts(["a red cube", "two blue spheres", ""]), atol=1e-6)
