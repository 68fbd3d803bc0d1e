"""Retrieval and zero-shot classification metrics, computed exactly in bounded memory.

One module serves training validation, ``core evaluate`` and deploy-time evaluation.

**Retrieval** (:func:`retrieval_metrics`). Inputs: L2-normalised image embeddings ``[N, D]``,
text embeddings ``[M, D]`` and ``caption_image[j]``, the image text ``j`` describes. Similarity is
the dot product (cosine). Ground truth comes from image identity: an image's positives are all
its captions (``i2t``), a caption's positive is its image (``t2i``); with ``image_group``, images
sharing a group id are one identity (duplicates, or class-level positives), so every caption of
any image of the group is a positive of every image of the group, and vice versa.

For one query with ``n_pos >= 1`` positives among ``G`` gallery items, order the gallery by
descending score. ``rank_k`` is the 1-based rank of the query's k-th best positive. Tied scores
(duplicated images, identical captions, a collapsed model) follow ``tie_policy``:

- ``expected`` (default): every metric is its expected value over a uniformly random order of the
  tied items. Without ties this is exactly CLIP_benchmark's computation; a model that scores
  everything equally gets chance level (``R@1 = n_pos / G``), never a perfect score.
- ``pessimistic``: a negative whose score equals a positive's is ranked above it, so
  ``rank_k = k + #{negatives scoring >= its score}`` (ties among positives change no metric).

Queries without tied positives take the fast vectorised path under both policies; a query where a
positive ties another item is scored exactly, tie group by tie group (``expected``). ``MedR`` is
then the median of the queries' expected first ranks.

- ``R@k`` (any-hit, CLIP_benchmark and the papers): 1 if ``rank_1 <= k``, averaged over queries.
- ``fracR@k``: the fraction of the query's positives in the top k (TAO's code's "recall").
  Equal to ``R@k`` when every query has one positive.
- ``mAP``: mean over queries of AP = ``mean_k(k / rank_k)``.
- ``MedR`` / ``MeanR``: median / mean of ``rank_1`` (lower is better).
- ``AUC``: per-query ROC AUC, averaged over queries: the fraction of (positive, negative) pairs
  where the positive scores strictly higher (Mann-Whitney U / (n_pos * n_neg); a tie counts ½
  under ``expected``, 0 under ``pessimistic``). 1.0 for perfect retrieval, about 0.5 for random scores; equal
  to ``sklearn.metrics.roc_auc_score`` whenever no negative ties a positive. Queries whose
  gallery holds no negative are left out of ``AUC`` only.

Queries without any positive (an image with no caption) are left out of every average and
counted under ``{dir}_queries_without_positive``; ``{dir}_queries`` counts the scored ones.

Scale: each direction scores query rows in chunks of at most ``chunk_bytes`` (scores plus one
comparison mask), counts the negatives above each positive with vectorised comparisons (or one
row sort when a query has many positives) and keeps only per-query results, so memory is
``O(chunk_bytes + N + M)`` beyond the embeddings; the ``N x M`` matrix never exists. The scores
are computed once per direction (two matrix products) so that a query's positive and negative
scores always come from the same computation and exact ties stay exact. Scores are computed with
``torch`` on the embeddings' device; counting runs on the CPU.

**Classification** (:func:`classification_metrics`): top-k accuracy under the same tie policy
(``pessimistic``: correct at k when fewer than k other classes score >= the true class;
``expected``: the probability that a random order of the tied classes puts it in the top k), and
per-class accuracy.
"""

from __future__ import annotations

from math import comb
from typing import Literal, Sequence

import numpy as np
import torch

from core.errors import DataError

KS = (1, 5, 10)
TIE_POLICIES = ("expected", "pessimistic")
TiePolicy = Literal["expected", "pessimistic"]
DIRECTIONS = ("i2t", "t2i")
DEFAULT_CHUNK_BYTES = 256 * 2**20
SORT_ABOVE = 12        # more positives than this in one query: count by sorting the row instead
_BYTES_PER_SCORE = 5   # a float32 score plus a bool comparison mask


def retrieval_metrics(image_embeddings, text_embeddings, caption_image, *, image_group=None,
                      ks: Sequence[int] = KS, chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                      tie_policy: TiePolicy = "expected") -> dict[str, float]:
    """Bidirectional retrieval metrics (module docstring) under ``{i2t,t2i}_{R@k,fracR@k,mAP,
    MedR,MeanR,AUC}`` keys, plus ``{dir}_queries`` and ``{dir}_queries_without_positive``.

    Embeddings are torch tensors (any device) or arrays, rows L2-normalised; ``caption_image``
    holds ``M`` image indices; ``image_group`` (optional, ``N`` ints) merges images into one
    identity.
    """
    images, texts = _as_tensor(image_embeddings, "image"), _as_tensor(text_embeddings, "text")
    n, m = len(images), len(texts)
    if images.shape[1] != texts.shape[1]:
        raise ValueError(f"image embeddings have dim {images.shape[1]}, text embeddings {texts.shape[1]}")
    if n == 0 or m == 0:
        raise DataError(f"retrieval needs images and captions, got {n} images and {m} captions",
                        where="dataset.val", fix="point dataset.val.datasets at images with captions")
    caption_image = _int_array(caption_image, m, "caption_image")
    if caption_image.min() < 0 or caption_image.max() >= n:
        raise ValueError(f"caption_image values must lie in [0, {n}), got [{caption_image.min()}, {caption_image.max()}]")
    image_label = np.arange(n) if image_group is None else _int_array(image_group, n, "image_group")
    text_label = image_label[caption_image]
    out: dict[str, float] = {}
    out.update(_direction("i2t", images, texts, image_label, text_label, ks, chunk_bytes, tie_policy))
    out.update(_direction("t2i", texts, images, text_label, image_label, ks, chunk_bytes, tie_policy))
    return out


def classification_metrics(image_embeddings, class_embeddings, labels, *, ks: Sequence[int] = (1, 5),
                           chunk_bytes: int = DEFAULT_CHUNK_BYTES, tie_policy: TiePolicy = "expected"
                           ) -> dict[str, object]:
    """Zero-shot classification: ``top{k}`` accuracy for each ``k`` (capped at the number of
    classes), ``per_class`` accuracy (list, by class index; ``None`` for a class without images)
    and ``mean_per_class`` (mean over classes with images)."""
    images, classes = _as_tensor(image_embeddings, "image"), _as_tensor(class_embeddings, "class")
    n, c = len(images), len(classes)
    if n == 0 or c == 0:
        raise DataError(f"classification needs images and classes, got {n} images and {c} classes",
                        where="evaluate.classification_dir", fix="point it at one folder of images per class")
    labels = _int_array(labels, n, "labels")
    above = np.empty(n, dtype=np.int64)
    tied = np.empty(n, dtype=np.int64)
    rows = max(1, chunk_bytes // (_BYTES_PER_SCORE * c))
    for start in range(0, n, rows):
        chunk = slice(start, min(start + rows, n))
        above[chunk], tied[chunk] = _true_class_rank(_scores(images[chunk], classes), labels[chunk])
    return _accuracies(above, tied, labels, c, ks, tie_policy)


def score_metrics(scores, labels, *, ks: Sequence[int] = (1, 5), tie_policy: TiePolicy = "expected"
                  ) -> dict[str, object]:
    """:func:`classification_metrics` of a classifier's scores ``[n, classes]`` (logits or
    probabilities: any scores where higher means more likely)."""
    scores = np.asarray(scores.detach().cpu() if isinstance(scores, torch.Tensor) else scores, dtype=np.float64)
    labels = _int_array(labels, len(scores), "labels")
    return _accuracies(*_true_class_rank(scores, labels), labels, scores.shape[1], ks, tie_policy)


def _true_class_rank(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the classes other than the true one scoring above it, and those tying it."""
    if len(labels) and (labels.min() < 0 or labels.max() >= scores.shape[1]):
        raise ValueError(f"labels must lie in [0, {scores.shape[1]}), got [{labels.min()}, {labels.max()}]")
    true = scores[np.arange(len(scores)), labels]
    above = np.count_nonzero(scores > true[:, None], axis=1)
    return above, np.count_nonzero(scores == true[:, None], axis=1) - 1


def _accuracies(above: np.ndarray, tied: np.ndarray, labels: np.ndarray, c: int, ks: Sequence[int],
                tie_policy: TiePolicy) -> dict[str, object]:
    if tie_policy == "pessimistic":
        above, tied = above + tied, np.zeros_like(tied)

    def correct_at(k: int) -> np.ndarray:  # the true class lands at above + U, U uniform on 1..tied+1
        return np.clip((k - above) / (tied + 1), 0.0, 1.0)

    out: dict[str, object] = {f"top{k}": float(np.mean(correct_at(k))) for k in ks if k <= c}
    hits = np.bincount(labels, weights=correct_at(1), minlength=c)
    sizes = np.bincount(labels, minlength=c)
    per_class = [float(h / s) if s else None for h, s in zip(hits, sizes)]
    out["per_class"] = per_class
    out["mean_per_class"] = float(np.mean([a for a in per_class if a is not None]))
    return out


# --------------------------------------------------------------------------- one direction
def _direction(name: str, queries: torch.Tensor, gallery: torch.Tensor, query_label: np.ndarray,
               gallery_label: np.ndarray, ks: Sequence[int], chunk_bytes: int, tie_policy: TiePolicy
               ) -> dict[str, float]:
    g = len(gallery)
    order = np.argsort(gallery_label, kind="stable")
    sorted_labels = gallery_label[order]
    first = np.searchsorted(sorted_labels, query_label, side="left")
    n_pos = np.searchsorted(sorted_labels, query_label, side="right") - first
    scored = np.flatnonzero(n_pos > 0)
    n_neg = g - n_pos[scored]

    rank1 = np.empty(len(scored), dtype=np.float64)
    recall = np.empty((len(ks), len(scored)))
    ap = np.empty(len(scored))
    auc = np.full(len(scored), np.nan)
    frac = np.empty((len(ks), len(scored)))
    rows = max(1, chunk_bytes // (_BYTES_PER_SCORE * g))
    for start in range(0, len(scored), rows):
        chunk = slice(start, min(start + rows, len(scored)))
        idx = scored[chunk]
        counts = n_pos[idx]
        # positive pairs of this chunk: local query row and gallery index, grouped by row
        row = np.repeat(np.arange(len(idx)), counts)
        offsets = np.cumsum(counts) - counts
        within = np.arange(len(row)) - np.repeat(offsets, counts)
        scores = _scores(queries[torch.as_tensor(idx, device=queries.device)], gallery)
        col = order[np.repeat(first[idx], counts) + within]
        pos_score = scores[row, col]
        scores[row, col] = -np.inf  # from here on, the rows hold negatives only
        pos_score = pos_score[np.lexsort((-pos_score, row))]  # best positive first within each row
        above = _count_at_least(scores, row, within, pos_score, int(counts.max()))
        rank = within + 1 + above
        rank1[chunk] = rank[offsets]
        ap[chunk] = np.bincount(row, weights=(within + 1) / rank, minlength=len(idx)) / counts
        neg = n_neg[chunk]
        has_neg = neg > 0
        auc_sum = np.bincount(row, weights=1.0 - above / np.maximum(neg, 1)[row], minlength=len(idx))
        auc[chunk] = np.where(has_neg, auc_sum / counts, np.nan)
        for i, k in enumerate(ks):
            frac[i, chunk] = np.bincount(row, weights=(rank <= k).astype(float), minlength=len(idx)) / counts
            recall[i, chunk] = rank1[chunk] <= k
        if tie_policy == "expected":
            strict = _count_at_least(scores, row, within, np.nextafter(pos_score, np.inf), int(counts.max()))
            tied_rows = np.unique(row[strict != above])  # a negative ties a positive (positives alone change nothing)
            for r in tied_rows:
                pairs = slice(offsets[r], offsets[r] + counts[r])
                negatives = scores[r][np.isfinite(scores[r])]
                q = start + r
                rank1[q], ap[q], auc[q], expected_recall, expected_frac = _expected_query(
                    pos_score[pairs], negatives, ks)
                recall[:, q], frac[:, q] = expected_recall, expected_frac

    out = {f"{name}_R@{k}": float(recall[i].mean()) for i, k in enumerate(ks)}
    out.update({f"{name}_fracR@{k}": float(frac[i].mean()) for i, k in enumerate(ks)})
    out[f"{name}_mAP"] = float(ap.mean())
    out[f"{name}_MedR"] = float(np.median(rank1))
    out[f"{name}_MeanR"] = float(rank1.mean())
    out[f"{name}_AUC"] = float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan")
    out[f"{name}_queries"] = len(scored)
    out[f"{name}_queries_without_positive"] = len(query_label) - len(scored)
    return out


def _expected_query(positives: np.ndarray, negatives: np.ndarray, ks: Sequence[int]):
    """One query's metrics in expectation over a uniformly random order of tied items: expected first
    rank, expected AP, AUC (ties ½), and per ``k`` the any-hit recall and the fraction of positives in
    the top k. Tie groups are walked best first; a group of ``n`` items holding ``p`` positives starts
    after ``before`` items, ``found`` of them positives."""
    scores = np.concatenate([positives, negatives])
    is_pos = np.r_[np.ones(len(positives), bool), np.zeros(len(negatives), bool)]
    values, group = np.unique(-scores, return_inverse=True)  # groups by descending score
    sizes = np.bincount(group, minlength=len(values))
    pos_in = np.bincount(group, weights=is_pos, minlength=len(values)).astype(int)
    n_pos, n_neg = len(positives), len(negatives)
    before = found = 0
    rank1 = None
    recall, frac = np.zeros(len(ks)), np.zeros(len(ks))
    ap = auc = 0.0
    for n, p in zip(sizes, pos_in):
        if p:
            if rank1 is None:  # the first positive is the first of p among n in random order
                rank1 = before + (n + 1) / (p + 1)
                recall = np.array([0.0 if k <= before else 1.0 - comb(n - p, min(k - before, n))
                                   / comb(n, min(k - before, n)) for k in ks])
            frac += p * np.clip((np.asarray(ks) - before) / n, 0.0, 1.0)
            for j in range(1, p + 1):  # the j-th positive of the group sits at position i with this probability
                ap += sum((found + j) / (before + i) * comb(i - 1, j - 1) * comb(n - i, p - j)
                          for i in range(j, n - p + j + 1)) / comb(n, p)
            auc += p * (n_neg - (before - found) - (n - p) / 2)  # negatives below, ties half
        before, found = before + n, found + p
    auc = auc / (n_pos * n_neg) if n_neg else np.nan
    return rank1, ap / n_pos, auc, recall, frac / n_pos


def _count_at_least(scores: np.ndarray, row: np.ndarray, within: np.ndarray, threshold: np.ndarray,
                    max_pos: int) -> np.ndarray:
    """For each pair ``p``: how many entries of ``scores[row[p]]`` are ``>= threshold[p]``."""
    if max_pos > SORT_ABOVE:
        ordered = np.sort(scores, axis=1)
        out = np.empty(len(row), dtype=np.int64)
        bounds = np.flatnonzero(np.diff(row, prepend=-1, append=len(scores)))
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            out[lo:hi] = scores.shape[1] - np.searchsorted(ordered[row[lo]], threshold[lo:hi], side="left")
        return out
    padded = np.full((len(scores), max_pos), np.inf, dtype=scores.dtype)
    padded[row, within] = threshold
    counts = np.empty((len(scores), max_pos), dtype=np.int64)
    for k in range(max_pos):
        counts[:, k] = np.count_nonzero(scores >= padded[:, k:k + 1], axis=1)
    return counts[row, within]


# --------------------------------------------------------------------------- inputs
def _scores(queries: torch.Tensor, gallery: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return (queries @ gallery.T).cpu().numpy()


def _as_tensor(x, what: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise ValueError(f"{what} embeddings must be [rows, dim], got shape {tuple(t.shape)}")
    t = t.float()
    if len(t) and not bool(torch.isfinite(t).all()):
        raise DataError(f"{what} embeddings contain NaN or inf", where="model",
                        fix="the model produced non-finite outputs (diverged training or a broken "
                            "checkpoint); evaluate an earlier checkpoint")
    norms = t.norm(dim=1)
    if len(t) and not bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-2)):
        raise ValueError(f"{what} embeddings must be L2-normalised (row norms range "
                         f"{norms.min().item():.4g}..{norms.max().item():.4g})")
    return t


def _int_array(x, length: int, what: str) -> np.ndarray:
    a = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x)
    if a.shape != (length,) or (length and not np.issubdtype(a.dtype, np.integer)):
        raise ValueError(f"{what} must be {length} integers, got shape {a.shape} dtype {a.dtype}")
    return a.astype(np.int64)
