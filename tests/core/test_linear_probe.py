"""`core linear-probe`: the head's fit and λ search, the splits, the metrics against brute force,
the feature cache, the outputs, and bad class folders."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from core.cli.main import main
from core.eval.metrics import score_metrics
from core.eval.probe import (COARSE_EXPONENTS, FINEST_STEP, fit_head, k_shot, search_lambda, stratified_split,
                             best_scale)

CLASSES = ("red", "green", "blue", "yellow")


# --------------------------------------------------------------------------- the head
def blobs(n_per_class: int, classes: int = 4, dim: int = 8, noise: float = 0.6, seed: int = 0, centres=None):
    """Unit features around unit class centres (seeded by ``seed`` unless given); the centres are
    what a perfect text tower gives."""
    g = torch.Generator().manual_seed(seed)
    if centres is None:
        centres = F.normalize(torch.randn(classes, dim, generator=g), dim=-1)
    classes, dim = centres.shape
    y = torch.arange(classes).repeat_interleave(n_per_class)
    x = F.normalize(centres[y] + noise * torch.randn(len(y), dim, generator=g), dim=-1)
    return x, y, centres


@pytest.mark.parametrize("anchor", [False, True])
def test_the_fitted_head_is_the_minimum_of_the_objective(anchor):
    x, y, centres = blobs(10)
    lam = 0.01
    target = 5 * centres if anchor else torch.zeros_like(centres)
    head = fit_head(x, y, 4, lam, anchor=target if anchor else None)
    w = head.weight.double().requires_grad_(True)
    b = head.bias.double().requires_grad_(True)
    loss = F.cross_entropy(x.double() @ w.T + b, y) + 0.5 * lam * (w - target.double()).pow(2).sum()
    loss.backward()
    assert w.grad.abs().max() < 1e-4 and b.grad.abs().max() < 1e-4


def test_a_huge_lambda_keeps_the_anchor():
    x, y, centres = blobs(5)
    anchor = 7 * centres
    head = fit_head(x, y, 4, 1e6, anchor=anchor)
    assert torch.allclose(head.weight, anchor, atol=1e-3)


def test_best_scale_minimises_the_zero_shot_loss():
    x, y, centres = blobs(10)
    tau, _ = best_scale(x @ centres.T, y)
    loss = lambda t: float(F.cross_entropy(t * x @ centres.T, y))  # noqa: E731
    assert loss(tau) <= min(loss(tau * 0.9), loss(tau * 1.1))


def test_the_search_follows_the_clip_protocol():
    x, y, centres = blobs(12, seed=1)
    vx, vy, _ = blobs(12, seed=2, centres=centres)
    lam, trials = search_lambda((x, y), (vx, vy), 4, max_iter=200)
    exponents = [round(float(np.log10(t.lam)), 6) for t in trials]
    assert exponents[:len(COARSE_EXPONENTS)] == list(COARSE_EXPONENTS)
    assert len(set(exponents)) == len(exponents)            # no λ fitted twice
    best = max(trials, key=lambda t: (t.accuracy, -t.loss))
    assert lam == best.lam
    fine = sorted(e for e in exponents if abs(e - np.log10(lam)) <= 2 * FINEST_STEP + 1e-9)
    assert any(np.isclose(abs(e - np.log10(lam)), FINEST_STEP) for e in fine)  # reached 8 steps per decade


def test_zeroshot_init_beats_a_random_start_with_one_example_per_class():
    """Noisy features, informative text: the zero-shot anchor wins on average over draws."""
    x, y, centres = blobs(40, classes=6, dim=12, noise=1.0, seed=3)
    val = blobs(20, noise=1.0, seed=4, centres=centres)[:2]
    test = blobs(40, noise=1.0, seed=5, centres=centres)[:2]
    gains = []
    for draw in range(4):
        idx = torch.from_numpy(k_shot(y.numpy(), 1, draw))
        accuracy = {}
        for name, anchor in (("random", None), ("zeroshot", best_scale(x[idx] @ centres.T, y[idx])[0] * centres)):
            lam, _ = search_lambda((x[idx], y[idx]), val, 6, anchor=anchor, max_iter=200)
            head = fit_head(x[idx], y[idx], 6, lam, anchor=anchor, max_iter=200)
            accuracy[name] = float((head.logits(test[0]).argmax(1) == test[1]).float().mean())
        gains.append(accuracy["zeroshot"] - accuracy["random"])
    assert np.mean(gains) > 0.05


# --------------------------------------------------------------------------- splits
def test_stratified_split_and_k_shot():
    labels = np.repeat(np.arange(3), [10, 5, 3])
    val, test, train = stratified_split(labels, [0.2, 0.2], seed=0)
    assert sorted(np.concatenate([val, test, train]).tolist()) == list(range(len(labels)))
    for part in (val, test, train):
        assert set(labels[part]) == {0, 1, 2}            # every class in every part
    assert np.array_equal(stratified_split(labels, [0.2, 0.2], seed=0)[0], val)
    assert not np.array_equal(stratified_split(labels, [0.2, 0.2], seed=1)[2], train)
    chosen = k_shot(labels, 4, seed=0)
    assert np.bincount(labels[chosen]).tolist() == [4, 4, 3]   # a small class gives all it has


# --------------------------------------------------------------------------- metrics
def brute_force_topk(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Expected top-k accuracy over every order of tied classes, by enumeration."""
    hits = []
    for row, label in zip(scores, labels):
        orders = [p for p in itertools.permutations(range(len(row)))
                  if all(row[p[i]] >= row[p[i + 1]] for i in range(len(p) - 1))]
        hits.append(np.mean([label in p[:k] for p in orders]))
    return float(np.mean(hits))


def test_score_metrics_against_enumeration():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, size=(40, 5)).astype(float)   # many ties
    labels = rng.integers(0, 5, size=40)
    found = score_metrics(scores, labels, ks=(1, 2, 5))
    for k in (1, 2, 5):
        assert found[f"top{k}"] == pytest.approx(brute_force_topk(scores, labels, k))
    per_class = [brute_force_topk(scores[labels == c], labels[labels == c], 1) for c in range(5)]
    assert found["per_class"] == pytest.approx(per_class)


# --------------------------------------------------------------------------- the action
def probe_spec(tmp_path: Path, color_clip, **fields) -> Path:
    body = "\n[linear_probe]\nnum_workers = 0\nbatch_size = 7\nmax_iter = 300\n" + "".join(
        f"{k} = {json.dumps(v)}\n" for k, v in fields.items())
    return color_clip.write_spec(tmp_path / "spec.toml", tmp_path / "results", body)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, color_clip) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("probe")
    return color_clip.class_folders(root / "train", 12, 0), color_clip.class_folders(root / "test", 6, 1)


def features_of(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """color-clip's image embedding (the normalised mean colour), computed without the model."""
    xs, ys = [], []
    for label, name in enumerate(sorted(p.name for p in folder.iterdir())):
        for path in sorted((folder / name).iterdir()):
            rgb = np.asarray(Image.open(path).convert("RGB"), np.float32).mean((0, 1)) / 127.5 - 1
            xs.append(rgb / np.linalg.norm(rgb))
            ys.append(label)
    return torch.tensor(np.stack(xs)), torch.tensor(ys)


def test_probe_end_to_end(folders, tmp_path, color_clip):
    train_dir, test_dir = folders
    spec = probe_spec(tmp_path, color_clip, train_dir=str(train_dir), test_dir=str(test_dir))
    assert main(["linear-probe", "-c", str(spec)]) == 0
    out = tmp_path / "results" / "linear_probe"
    results = json.loads((out / "results.json").read_text())
    assert results["classes"] == sorted(CLASSES)
    assert results["images"] == {"train": 40, "val": 8, "test": 24}    # 2 of 12 per class held out
    assert results["features_from_cache"] == {"train": False, "val": False, "test": False}
    # the same numbers from features computed here and the pure functions
    x, y = features_of(train_dir)
    test_x, test_y = features_of(test_dir)
    confusion = np.asarray(results["confusion"])
    assert confusion.sum() == 24 and np.trace(confusion) / 24 == pytest.approx(results["probe"]["top1"])
    head = torch.load(out / "probe_head.pt", weights_only=True)
    assert head["classes"] == sorted(CLASSES) and head["weight"].shape == (4, 3)
    logits = test_x @ head["weight"].T + head["bias"]
    assert score_metrics(logits, test_y)["top1"] == pytest.approx(results["probe"]["top1"])
    classes = F.normalize(torch.tensor([[c / 127.5 - 1 for c in color_clip.colors[n]] for n in sorted(CLASSES)]), dim=-1)
    assert results["zeroshot"]["top1"] == pytest.approx(score_metrics(test_x @ classes.T, test_y)["top1"])
    assert results["probe"]["top1"] >= results["zeroshot"]["top1"] - 1e-9
    assert (out / "confusion_matrix.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(x) == 48

    # second run: every split from the cache; a changed image invalidates only its split
    assert main(["linear-probe", "-c", str(spec)]) == 0
    again = json.loads((out / "results.json").read_text())
    assert again["features_from_cache"] == {"train": True, "val": True, "test": True}
    assert again["probe"]["top1"] == results["probe"]["top1"]
    changed = next((test_dir / "red").iterdir())
    Image.new("RGB", (12, 10), (0, 0, 255)).save(changed)
    assert main(["linear-probe", "-c", str(spec)]) == 0
    assert json.loads((out / "results.json").read_text())["features_from_cache"] == {
        "train": True, "val": True, "test": False}


def test_k_shot_reports_mean_and_std_over_draws(folders, tmp_path, color_clip):
    train_dir, test_dir = folders
    spec = probe_spec(tmp_path, color_clip, train_dir=str(train_dir), test_dir=str(test_dir), shots=2,
                      shot_seeds=3, init="zeroshot")
    assert main(["linear-probe", "-c", str(spec)]) == 0
    results = json.loads((tmp_path / "results" / "linear_probe" / "results.json").read_text())
    draws = results["draws"]
    assert [d["seed"] for d in draws] == [0, 1, 2]
    top1 = [d["top1"] for d in draws]
    assert results["probe"]["top1_mean"] == pytest.approx(np.mean(top1))
    assert results["probe"]["top1_std"] == pytest.approx(np.std(top1, ddof=1))
    assert results["probe"]["train_images"] == 8


@pytest.mark.parametrize("case, message", [
    ("one_class", "has 1 class folder; a classifier needs at least 2"),
    ("empty_class", "has no images"),
    ("unknown_test_class", "is not a class of linear_probe.train_dir"),
    ("too_small", "needs at least 3 per class"),
    ("unset", "linear_probe.train_dir"),
])
def test_bad_class_folders(case, message, tmp_path, color_clip, capsys):
    train, test = tmp_path / "train", tmp_path / "test"
    fields = {"train_dir": str(train)}
    if case == "one_class":
        color_clip.class_folders(train, 4, 0, classes=("red",))
    elif case == "empty_class":
        color_clip.class_folders(train, 4, 0, classes=("red", "green"))
        (train / "blue").mkdir()
    elif case == "unknown_test_class":
        color_clip.class_folders(train, 4, 0, classes=("red", "green"))
        color_clip.class_folders(test, 2, 0, classes=("red", "magenta"))
        fields["test_dir"] = str(test)
    elif case == "too_small":
        color_clip.class_folders(train, 4, 0, classes=("red", "green"))
        (train / "green" / "000.png").unlink()
        (train / "green" / "001.png").unlink()
    else:
        fields = {}
    assert main(["linear-probe", "-c", str(probe_spec(tmp_path, color_clip, **fields))]) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and "Traceback" not in err
