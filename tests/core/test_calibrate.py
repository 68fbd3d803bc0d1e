"""`core calibrate` and exported classifiers: ECE, temperature and thresholds against brute force,
the action on zero-shot and probe classifiers, the classifier file, and the ONNX classifier graph
with its torch-free `classify`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.classifier import Classifier, load_classifier
from core.cli.main import main
from core.eval.calibration import fit_temperature, nll, precision_thresholds, reliability


# --------------------------------------------------------------------------- the measures
def brute_force_ece(confidence, correct, bins):
    total = 0.0
    for b in range(bins):
        low, high = b / bins, (b + 1) / bins
        members = [i for i, c in enumerate(confidence) if (low < c <= high) or (b == 0 and c == 0)]
        if members:
            total += len(members) / len(confidence) * abs(np.mean([correct[i] for i in members])
                                                          - np.mean([confidence[i] for i in members]))
    return total


def test_ece_against_the_definition():
    g = torch.Generator().manual_seed(0)
    probs = (torch.randn(200, 4, generator=g) * 2).softmax(-1)
    labels = torch.randint(0, 4, (200,), generator=g)
    softmax = reliability(probs, labels, "softmax", bins=10)
    assert softmax.ece == pytest.approx(brute_force_ece(probs.max(1).values.tolist(),
                                                        (probs.argmax(1) == labels).tolist(), 10))
    sigmoid = reliability(probs, labels, "sigmoid", bins=10)
    pairs = [(float(probs[i, c]), int(labels[i] == c)) for i in range(200) for c in range(4)]
    assert sigmoid.ece == pytest.approx(brute_force_ece([p for p, _ in pairs], [t for _, t in pairs], 10))


def test_temperature_scaling_finds_the_true_temperature():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4000, 5, generator=g) * 3
    labels = torch.multinomial((logits / 3).softmax(-1), 1, generator=g).squeeze(1)  # the truth is T = 3
    temperature, offset = fit_temperature(logits, labels, "softmax")
    assert temperature == pytest.approx(3.0, rel=0.1) and offset == 0.0
    assert nll(logits, labels, "softmax", temperature) < nll(logits, labels, "softmax")
    before, after = (reliability((logits / t).softmax(-1), labels, "softmax").ece for t in (1.0, temperature))
    assert after < before


def brute_force_threshold(scores, positive, target):
    """The lowest score s with precision(score >= s) >= target, by trying every score."""
    best = None
    for s in sorted(set(scores)):
        chosen = [p for sc, p in zip(scores, positive) if sc >= s]
        if sum(chosen) / len(chosen) >= target:
            best = s if best is None else min(best, s)
    return best


def test_precision_thresholds_against_brute_force():
    rng = np.random.default_rng(2)
    labels = torch.from_numpy(rng.integers(0, 3, 60))
    probs = torch.from_numpy(np.round(rng.random((60, 3)), 1))   # ties on purpose
    probs[labels == 0, 0] += 0.5                                 # class 0 is easy
    thresholds, skipped = precision_thresholds(probs, labels, 0.8)
    for c in range(3):
        want = brute_force_threshold(probs[:, c].tolist(), (labels == c).tolist(), 0.8)
        assert thresholds[c] == (None if want is None else pytest.approx(want)), c
        assert (c in skipped) == (want is None)
    one_class = precision_thresholds(probs[labels == 0], labels[labels == 0], 0.8)[1]
    assert one_class == {0: "has no calibration image of another class", 1: "has no calibration image",
                         2: "has no calibration image"}


# --------------------------------------------------------------------------- the action
@pytest.fixture(scope="module")
def calibration_folders(tmp_path_factory, color_clip) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("calibrate")
    return color_clip.class_folders(root / "val", 10, 3), color_clip.class_folders(root / "test", 6, 4)


def calibrate_spec(tmp_path: Path, color_clip, **fields) -> Path:
    body = "\n[calibrate]\nnum_workers = 0\nbatch_size = 8\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in fields.items())
    return color_clip.write_spec(tmp_path / "spec.toml", tmp_path / "results", body)


def test_zero_shot_softmax_calibration(calibration_folders, tmp_path, color_clip, capsys):
    val, test = calibration_folders
    assert main(["calibrate", "-c", str(calibrate_spec(tmp_path, color_clip, val_dir=str(val)))]) == 0
    out = tmp_path / "results" / "calibrate"
    results = json.loads((out / "results.json").read_text())
    assert results["classifier"] == "zero-shot" and results["measured_on"] == "val"
    assert "measured on the calibration images themselves" in " ".join(capsys.readouterr().out.split())
    assert results["nll_after"] <= results["nll_before"] + 1e-9       # T minimises the NLL it is measured on
    calibrated = load_classifier(out / "classifier.pt")
    assert calibrated.temperature == pytest.approx(results["temperature"]) and calibrated.scoring == "softmax"
    assert calibrated.classes == ["blue", "green", "red", "yellow"]
    # color-clip's zero-shot weights: its logit scale times each colour's unit vector
    colours = F.normalize(torch.tensor([[c / 127.5 - 1 for c in color_clip.colors[n]] for n in calibrated.classes]), dim=-1)
    torch.testing.assert_close(calibrated.weight, np.exp(2.3) * colours, rtol=1e-4, atol=1e-4)
    assert (out / "reliability.png").read_bytes()[:4] == b"\x89PNG"

    spec = calibrate_spec(tmp_path, color_clip, val_dir=str(val), test_dir=str(test))
    assert main(["calibrate", "-c", str(spec)]) == 0
    assert json.loads((out / "results.json").read_text())["measured_on"] == "test"


def test_sigmoid_thresholds_and_a_set_without_both_classes(calibration_folders, tmp_path, color_clip, capsys):
    val, _ = calibration_folders
    head = Classifier(weight=torch.eye(4, 3) * 5, bias=torch.zeros(4), classes=["blue", "green", "red", "yellow"],
                      class_names=["blue", "green", "red", "yellow"])
    torch.save(head.state(), tmp_path / "head.pt")
    spec = calibrate_spec(tmp_path, color_clip, val_dir=str(val), classifier=str(tmp_path / "head.pt"),
                          scoring="sigmoid", target_precision=0.5)
    assert main(["calibrate", "-c", str(spec)]) == 0
    results = json.loads((tmp_path / "results" / "calibrate" / "results.json").read_text())
    assert set(results["thresholds"]) == {"blue", "green", "red", "yellow"} and "offset" in results
    capsys.readouterr()

    only_red = tmp_path / "only_red"
    color_clip.class_folders(only_red, 5, 0, classes=("red",))
    spec = calibrate_spec(tmp_path, color_clip, val_dir=str(only_red), classifier=str(tmp_path / "head.pt"),
                          scoring="sigmoid")
    assert main(["calibrate", "-c", str(spec)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "class 'red' has no threshold: it has no calibration image of another class" in out
    assert "class 'blue' has no threshold: it has no calibration image" in out
    results = json.loads((tmp_path / "results" / "calibrate" / "results.json").read_text())
    assert results["thresholds"] == {"blue": None, "green": None, "red": None, "yellow": None}


@pytest.mark.parametrize("case, message", [
    ("unknown class", "is not a class of calibrate.classifier"),
    ("not a classifier", "is not a classifier file"),
    ("no val_dir", "calibrate.val_dir: is unset"),
])
def test_calibrate_bad_input(case, message, calibration_folders, tmp_path, color_clip, capsys):
    val, _ = calibration_folders
    fields: dict = {"val_dir": str(val)}
    if case == "unknown class":
        torch.save(Classifier(weight=torch.ones(2, 3), bias=torch.zeros(2), classes=["red", "blue"],
                              class_names=["red", "blue"]).state(), tmp_path / "head.pt")
        fields["classifier"] = str(tmp_path / "head.pt")
    elif case == "not a classifier":
        torch.save({"weight": torch.ones(2, 3)}, tmp_path / "head.pt")
        fields["classifier"] = str(tmp_path / "head.pt")
    else:
        fields = {}
    assert main(["calibrate", "-c", str(calibrate_spec(tmp_path, color_clip, **fields))]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert message in err and "Traceback" not in err


# --------------------------------------------------------------------------- the exported classifier
TINY = ["model.type=example-tiny", "model.pretrained=false", "model.image_size=32",
        "export.input_height=32", "export.input_width=32"]


@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
def test_exported_classifier_matches_pytorch(scoring, tmp_path, exports):
    """One graph: image -> embedding, logits, probabilities; ONNX Runtime equals PyTorch (1e-5), and
    `classify` ranks the classes (softmax: top k; sigmoid: those at or above their threshold)."""
    from core import preprocess_images
    from core.registry import get_registry
    from core.runtime.checkpoint import model_checkpoint, save_atomic
    from deploy.onnxruntime_runner import open_runner

    torch.manual_seed(0)
    model = get_registry().backbone_for("example-tiny").tiny("example-tiny").eval()
    checkpoint = save_atomic(model_checkpoint(model), tmp_path / "tiny.pth")
    names = ["cat", "dog", "car", "tree", "boat"]
    classifier = Classifier(weight=torch.randn(5, 32) * 4, bias=torch.randn(5), classes=names, class_names=names,
                            scoring=scoring, temperature=1.7, offset=-0.3,
                            thresholds=[0.5, None, 0.0, 1.01, 0.2] if scoring == "sigmoid" else None)
    torch.save(classifier.state(), tmp_path / "head.pt")
    assert main(["export", *TINY, f"results_dir={tmp_path}", f"export.checkpoint={checkpoint}",
                 f"export.classifier={tmp_path / 'head.pt'}"]) == 0
    runner = open_runner(tmp_path / "export" / "tiny.onnx")
    assert runner.classifier["classes"] == names and runner.classifier["temperature"] == pytest.approx(1.7)

    images = exports.write_images(tmp_path / "images")
    with torch.no_grad():
        embeddings = model.encode_image(torch.from_numpy(preprocess_images(images, runner.deploy["preprocess"])),
                                        normalize=True)
        want = classifier.probabilities(embeddings).numpy()
    exports.assert_close(runner.encode_images(images), embeddings.numpy())
    np.testing.assert_allclose(runner._run_images(images, "probabilities", len(names)), want, atol=1e-5)

    ranked = runner.classify(images, top_k=3 if scoring == "softmax" else None)
    for row, probs in zip(ranked, want):
        order = [names[c] for c in np.argsort(-probs, kind="stable")]
        if scoring == "softmax":
            expected = order[:3]
        else:  # a class without a threshold always shows; "tree" needs more than certainty
            expected = [n for n in order if classifier.thresholds[names.index(n)] is None
                        or probs[names.index(n)] >= classifier.thresholds[names.index(n)]]
            assert "tree" not in expected and "car" in expected and "dog" in expected
        assert [name for name, _ in row] == expected
        np.testing.assert_allclose([p for _, p in row], [probs[names.index(n)] for n in expected], atol=1e-5)


def test_export_refuses_a_classifier_of_another_width(tmp_path, capsys):
    torch.save(Classifier(weight=torch.ones(2, 7), bias=torch.zeros(2), classes=["a", "b"],
                          class_names=["a", "b"]).state(), tmp_path / "head.pt")
    assert main(["export", *TINY, f"results_dir={tmp_path}", f"export.classifier={tmp_path / 'head.pt'}"]) == 2
    assert "the classifier takes 7-dimensional embeddings, example-tiny makes 32-dimensional ones" in \
        " ".join(capsys.readouterr().err.split())


def test_classify_without_a_classifier_is_one_message(tmp_path):
    from core import ClipcoreError
    from deploy.onnxruntime_runner import open_runner

    assert main(["export", *TINY, f"results_dir={tmp_path}"]) == 0
    with pytest.raises(ClipcoreError, match="this export has no classifier"):
        open_runner(tmp_path / "export" / "example-tiny.onnx").classify([])
