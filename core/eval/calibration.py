"""Calibration of a classifier's probabilities, and how to measure it.

- **Temperature scaling** (Guo et al. 2017): one ``T`` for which ``softmax(logits / T)`` has the
  lowest negative log-likelihood on a calibration split; it changes no ranking. For sigmoid
  scoring, Platt scaling: ``sigmoid(logits / T + offset)``, both fitted the same way (one pair for
  all classes, so the ranking within a class is unchanged).
- **Per-class thresholds** (sigmoid, multi-label): for each class, the lowest probability at which
  reporting the class reaches ``target_precision`` on the calibration split (the highest recall at
  that precision). A class whose calibration images are all of it, or none of it, cannot be
  calibrated and is reported, not guessed.
- **ECE** (expected calibration error) over ``bins`` equal-width probability bins:
  ``Σ_b n_b / N · |accuracy_b − confidence_b|``. For softmax, each image counts once with its top
  class's probability (confidence) and whether that class is right; for sigmoid, every (image,
  class) pair counts with its probability and whether the image is of that class.
"""

from __future__ import annotations

import attrs
import numpy as np
import torch
import torch.nn.functional as F

from core.eval.probe import best_scale


@attrs.frozen
class Reliability:
    """Per bin: ``count``, mean ``confidence`` and observed ``accuracy`` (NaN in an empty bin)."""

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray

    @property
    def ece(self) -> float:
        filled = self.count > 0
        return float(np.sum(self.count[filled] * np.abs(self.accuracy[filled] - self.confidence[filled]))
                     / self.count.sum())


def reliability(probabilities: torch.Tensor, labels: torch.Tensor, scoring: str, bins: int = 15) -> Reliability:
    """The reliability table of ``probabilities`` ``[N, C]`` for ``labels`` ``[N]`` (module doc)."""
    probs = probabilities.double().numpy()
    labels = labels.numpy()
    if scoring == "softmax":
        confidence, correct = probs.max(1), (probs.argmax(1) == labels).astype(np.float64)
    else:
        confidence = probs.reshape(-1)
        correct = (np.arange(probs.shape[1])[None, :] == labels[:, None]).reshape(-1).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / count
        accuracy = np.bincount(which, weights=correct, minlength=bins) / count
    return Reliability(edges, count, mean_conf, accuracy)


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, scoring: str) -> tuple[float, float]:
    """``(T, offset)`` minimising the calibration split's negative log-likelihood (offset 0 for softmax)."""
    scale, offset = best_scale(logits, labels, scoring, shift=scoring == "sigmoid")
    return 1.0 / scale, offset


def nll(logits: torch.Tensor, labels: torch.Tensor, scoring: str, temperature: float = 1.0,
        offset: float = 0.0) -> float:
    """Mean negative log-likelihood (cross-entropy, or binary cross-entropy per class)."""
    z = logits.double() / temperature + (offset if scoring == "sigmoid" else 0.0)
    if scoring == "softmax":
        return float(F.cross_entropy(z, labels))
    return float(F.binary_cross_entropy_with_logits(z, F.one_hot(labels, z.shape[1]).double()))


def precision_thresholds(probabilities: torch.Tensor, labels: torch.Tensor, target: float
                         ) -> tuple[list[float | None], dict[int, str]]:
    """Per class, the lowest threshold reaching ``target`` precision, and ``{class: why not}`` for
    the classes that get none."""
    probs, labels = probabilities.double().numpy(), labels.numpy()
    thresholds: list[float | None] = []
    skipped: dict[int, str] = {}
    for c in range(probs.shape[1]):
        positive = labels == c
        if positive.all() or not positive.any():
            thresholds.append(None)
            skipped[c] = ("has no calibration image of another class" if positive.any()
                          else "has no calibration image")
            continue
        order = np.argsort(-probs[:, c], kind="stable")
        hits = np.cumsum(positive[order])
        precision = hits / np.arange(1, len(order) + 1)
        scores = probs[order, c]
        # a threshold can only sit where the score changes: take the last index of each score run
        ends = np.r_[scores[1:] != scores[:-1], True]
        reaching = np.flatnonzero(ends & (precision >= target))
        if not len(reaching):
            thresholds.append(None)
            skipped[c] = f"reaches precision {target} at no threshold"
            continue
        thresholds.append(float(scores[reaching[-1]]))
    return thresholds, skipped
