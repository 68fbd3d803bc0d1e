"""core.eval.metrics against an independent brute-force reference (a full sort of every query's gallery)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from core.eval import metrics
from core.errors import DataError
from core.eval.metrics import classification_metrics, retrieval_metrics

KS = (1, 5, 10)


def reference(images: np.ndarray, texts: np.ndarray, caption_image, image_group=None) -> dict[str, float]:
    """The metrics by definition: sort each query's gallery by (-score, is_positive), i.e.
    descending score with tied negatives ahead of positives, and read the positives' ranks."""
    scores = images @ texts.T
    image_label = np.arange(len(images)) if image_group is None else np.asarray(image_group)
    text_label = image_label[np.asarray(caption_image)]
    out = {}
    for name, rows, query_label, gallery_label in (("i2t", scores, image_label, text_label),
                                                   ("t2i", scores.T, text_label, image_label)):
        first, aps, aucs, frac = [], [], [], {k: [] for k in KS}
        missing = 0
        for q, row in enumerate(rows):
            positive = gallery_label == query_label[q]
            if not positive.any():
                missing += 1
                continue
            order = sorted(range(len(row)), key=lambda j: (-row[j], bool(positive[j])))
            ranks = [r + 1 for r, j in enumerate(order) if positive[j]]
            first.append(ranks[0])
            aps.append(np.mean([(i + 1) / r for i, r in enumerate(ranks)]))
            negatives = row[~positive]
            if len(negatives):
                aucs.append(np.mean([np.mean([p > n for n in negatives]) for p in row[positive]]))
            for k in KS:
                frac[k].append(np.mean([r <= k for r in ranks]))
        for k in KS:
            out[f"{name}_R@{k}"] = np.mean([r <= k for r in first])
            out[f"{name}_fracR@{k}"] = np.mean(frac[k])
        out[f"{name}_mAP"] = np.mean(aps)
        out[f"{name}_MedR"] = float(np.median(first))
        out[f"{name}_MeanR"] = np.mean(first)
        out[f"{name}_AUC"] = np.mean(aucs) if aucs else math.nan
        out[f"{name}_queries"] = len(first)
        out[f"{name}_queries_without_positive"] = missing
    return out


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for key in want:
        if math.isnan(want[key]):
            assert math.isnan(got[key]), key
        else:
            assert got[key] == pytest.approx(want[key], abs=1e-9), key


def multi_caption_case(seed: int, n: int = 40, dim: int = 16, noise: float = 1.0):
    """Images with 0 to 4 captions each (some without any), captions near their image."""
    rng = np.random.default_rng(seed)
    images = unit(rng.normal(size=(n, dim)))
    caption_image = np.concatenate([np.full(rng.integers(0, 5), i) for i in range(n)]).astype(np.int64)
    rng.shuffle(caption_image)
    texts = unit(images[caption_image] + noise * rng.normal(size=(len(caption_image), dim)) / math.sqrt(dim))
    return images, texts, caption_image


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_multi_caption_matches_reference(seed):
    images, texts, caption_image = multi_caption_case(seed)
    got = retrieval_metrics(images, texts, caption_image)
    assert_same(got, reference(images, texts, caption_image))
    assert got["i2t_queries_without_positive"] > 0  # the case really has images without captions
    assert got["i2t_R@5"] != got["i2t_fracR@5"]     # and multi-positive queries


def test_chunking_and_sorting_paths_give_the_same_result(monkeypatch):
    images, texts, caption_image = multi_caption_case(3)
    want = reference(images, texts, caption_image)
    assert_same(retrieval_metrics(images, texts, caption_image, chunk_bytes=1), want)  # one query per chunk
    monkeypatch.setattr(metrics, "SORT_ABOVE", 0)  # count by sorting each row
    assert_same(retrieval_metrics(images, texts, caption_image, chunk_bytes=5000), want)


def test_ties_are_pessimistic_and_match_reference():
    """Entries of +-0.5 in 4-D: unit vectors whose dot products are exact multiples of 1/4, so
    many scores tie exactly."""
    rng = np.random.default_rng(7)
    images = rng.choice([-0.5, 0.5], size=(30, 4)).astype(np.float32)
    caption_image = rng.integers(0, 30, size=60)
    texts = rng.choice([-0.5, 0.5], size=(60, 4)).astype(np.float32)
    texts[:30] = images[caption_image[:30]]  # half the captions equal their image
    want = reference(images, texts, caption_image)
    assert_same(retrieval_metrics(images, texts, caption_image, tie_policy="pessimistic"), want)
    # a collapsed model (every score tied) ranks each positive after every negative
    constant = np.tile(np.array([[0.5, 0.5, 0.5, 0.5]], np.float32), (30, 1))
    got = retrieval_metrics(constant, constant[caption_image], caption_image, tie_policy="pessimistic")
    assert got["t2i_MedR"] == 30 and got["t2i_AUC"] == 0.0 and got["t2i_R@10"] == 0.0


def test_hand_computed_case():
    """Image 1's first caption equals image 0's caption: a tied negative for image 0."""
    images = np.array([[1, 0], [0, 1]], np.float32)
    texts = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    got = retrieval_metrics(images, texts, [0, 1, 1], tie_policy="pessimistic")
    # i2t: image 0 -> positive t0 ties with t1: rank 2, AP 1/2, AUC 1/2;
    #      image 1 -> positives t2 (rank 1) and t1 (score 0, tied with t0: rank 3), AP (1 + 2/3)/2
    assert got["i2t_R@1"] == 0.5 and got["i2t_fracR@1"] == 0.25 and got["i2t_fracR@5"] == 1.0
    assert got["i2t_mAP"] == pytest.approx((1 / 2 + 5 / 6) / 2)
    assert (got["i2t_MedR"], got["i2t_MeanR"], got["i2t_AUC"]) == (1.5, 1.5, 0.5)
    # t2i: t0 -> rank 1; t1 -> image 0 scores higher: rank 2, AUC 0; t2 -> rank 1
    assert got["t2i_R@1"] == pytest.approx(2 / 3) and got["t2i_mAP"] == pytest.approx(5 / 6)
    assert (got["t2i_MedR"], got["t2i_MeanR"], got["t2i_AUC"]) == (1.0, pytest.approx(4 / 3), pytest.approx(2 / 3))


def test_perfect_retrieval_scores_one_and_random_auc_is_one_half():
    """TAO defect 1: its AUC gives about 0.5 for perfect retrieval."""
    images = unit(np.random.default_rng(0).normal(size=(50, 32)))
    caption_image = np.repeat(np.arange(50), 2)
    perfect = retrieval_metrics(images, images[caption_image], caption_image)
    for d in ("i2t", "t2i"):
        assert perfect[f"{d}_AUC"] == 1.0 and perfect[f"{d}_mAP"] == 1.0 and perfect[f"{d}_R@1"] == 1.0
        assert perfect[f"{d}_MedR"] == 1.0 and perfect[f"{d}_MeanR"] == 1.0
    rng = np.random.default_rng(1)
    noise = retrieval_metrics(unit(rng.normal(size=(400, 32))), unit(rng.normal(size=(800, 32))),
                              np.repeat(np.arange(400), 2))
    assert noise["i2t_AUC"] == pytest.approx(0.5, abs=0.02) and noise["t2i_AUC"] == pytest.approx(0.5, abs=0.02)


def test_image_groups_make_duplicates_positives():
    """TAO defect 2: a duplicated image counts as a negative. With image_group it is the same identity."""
    base = unit(np.random.default_rng(4).normal(size=(10, 8)))
    images = np.concatenate([base, base[:1]])          # image 10 duplicates image 0
    caption_image = np.arange(11)
    texts = images.copy()
    plain = retrieval_metrics(images, texts, caption_image)
    assert plain["t2i_R@1"] < 1.0                      # the tie with the duplicate ranks it first
    group = np.concatenate([np.arange(10), [0]])
    grouped = retrieval_metrics(images, texts, caption_image, image_group=group)
    assert grouped["t2i_R@1"] == 1.0 and grouped["i2t_R@1"] == 1.0 and grouped["t2i_AUC"] == 1.0
    assert_same(grouped, reference(images, texts, caption_image, image_group=group))


def test_query_without_positive_is_excluded_and_counted():
    images = np.eye(3, dtype=np.float32)
    got = retrieval_metrics(images, images[:2], [0, 1])   # image 2 has no caption
    assert got["i2t_queries"] == 2 and got["i2t_queries_without_positive"] == 1
    assert got["i2t_R@1"] == 1.0 and got["t2i_queries"] == 2


def test_torch_inputs_match_numpy_inputs():
    images, texts, caption_image = multi_caption_case(5)
    assert retrieval_metrics(torch.from_numpy(images), torch.from_numpy(texts), torch.from_numpy(caption_image)) == \
        retrieval_metrics(images, texts, caption_image)


def test_bad_inputs_have_clear_messages():
    images = np.eye(3, dtype=np.float32)
    bad = images.copy()
    bad[1, 1] = np.nan
    with pytest.raises(DataError, match="image embeddings contain NaN or inf"):
        retrieval_metrics(bad, images, [0, 1, 2])
    with pytest.raises(DataError, match="retrieval needs images and captions, got 3 images and 0 captions"):
        retrieval_metrics(images, np.zeros((0, 3), np.float32), [])
    with pytest.raises(ValueError, match=r"caption_image values must lie in \[0, 3\)"):
        retrieval_metrics(images, images, [0, 1, 3])
    with pytest.raises(ValueError, match="must be L2-normalised"):
        retrieval_metrics(images * 2, images, [0, 1, 2])


def test_classification_known_answer_and_ties():
    classes = np.eye(4, dtype=np.float32)
    images = unit(np.array([[1, 0.1, 0, 0], [0.1, 1, 0, 0], [0, 0, 1, 0.2],   # correct
                            [0, 0, 0.2, 1],                                   # class 2 image, wrong
                            [1, 1, 0, 0]], np.float32))                       # class 1, tied with class 0
    got = classification_metrics(images, classes, [0, 1, 2, 2, 1], ks=(1, 2, 5), tie_policy="pessimistic")
    assert got["top1"] == pytest.approx(3 / 5)        # the tie counts against the image
    assert got["top2"] == 1.0 and "top5" not in got   # k above the class count is not reported
    assert got["per_class"] == [1.0, 0.5, 0.5, None]
    assert got["mean_per_class"] == pytest.approx(2 / 3)
    assert classification_metrics(images, classes, [0, 1, 2, 2, 1], chunk_bytes=1,
                                  tie_policy="pessimistic")["per_class"] == got["per_class"]
