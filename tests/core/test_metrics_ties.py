"""evaluate.tie_policy: ``expected`` (default) is the expectation over a random order of tied items,
checked against exact enumeration of every order; ``pessimistic`` ranks tied negatives first."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from core.eval.metrics import classification_metrics, retrieval_metrics

KS = (1, 2, 3)


def enumerate_orders(scores: np.ndarray, query_label: np.ndarray, gallery_label: np.ndarray) -> dict[str, float]:
    """Metrics averaged over every order of the gallery that is consistent with the scores."""
    r_at, first, aps = {k: [] for k in KS}, [], []
    for q in range(len(scores)):
        values = []
        for perm in itertools.permutations(range(scores.shape[1])):
            perm = np.array(perm)
            if np.any(np.diff(scores[q][perm]) > 0):  # not sorted by descending score
                continue
            ranks = np.flatnonzero(gallery_label[perm] == query_label[q]) + 1
            values.append((ranks[0], np.mean(np.arange(1, len(ranks) + 1) / ranks)))
        v = np.array(values)
        first.append(v[:, 0].mean())
        aps.append(v[:, 1].mean())
        for k in KS:
            r_at[k].append(np.mean(v[:, 0] <= k))
    return {**{f"R@{k}": float(np.mean(r_at[k])) for k in KS}, "MeanR": float(np.mean(first)),
            "mAP": float(np.mean(aps))}


@pytest.fixture
def duplicated():
    """4 images (2 of them identical) and 6 captions (2 of them identical text embeddings)."""
    g = torch.Generator().manual_seed(3)
    images = F.normalize(torch.randn(4, 8, generator=g), dim=1)
    images[2] = images[0]
    caption_image = np.array([0, 1, 2, 3, 0, 2])
    texts = F.normalize(images[torch.as_tensor(caption_image)] + 0.4 * torch.randn(6, 8, generator=g), dim=1)
    texts[5] = texts[0]
    return images, texts, caption_image


def test_expected_policy_equals_the_average_over_every_tie_order(duplicated):
    images, texts, caption_image = duplicated
    got = retrieval_metrics(images, texts, caption_image, ks=KS)
    scores = (images @ texts.T).numpy()
    for name, s, q, g in (("i2t", scores, np.arange(4), caption_image), ("t2i", scores.T, caption_image, np.arange(4))):
        want = enumerate_orders(s, q, g)
        for key, value in want.items():
            assert got[f"{name}_{key}"] == pytest.approx(value, abs=1e-9), (name, key)


def test_pessimistic_policy_ranks_tied_negatives_first(duplicated):
    images, texts, caption_image = duplicated
    pessimistic = retrieval_metrics(images, texts, caption_image, ks=KS, tie_policy="pessimistic")
    expected = retrieval_metrics(images, texts, caption_image, ks=KS)
    assert pessimistic["t2i_R@1"] < expected["t2i_R@1"]
    assert pessimistic["i2t_MeanR"] > expected["i2t_MeanR"]


def test_without_ties_both_policies_give_clip_benchmarks_numbers():
    g = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(20, 16, generator=g), dim=1)
    caption_image = np.arange(40) % 20
    texts = F.normalize(images[torch.as_tensor(caption_image)] + 0.8 * torch.randn(40, 16, generator=g), dim=1)
    a = retrieval_metrics(images, texts, caption_image)
    b = retrieval_metrics(images, texts, caption_image, tie_policy="pessimistic")
    assert a == b
    scores = texts @ images.T  # CLIP_benchmark: a text is right at k when its image is in the top k
    topk = scores.topk(5, dim=1).indices
    assert a["t2i_R@5"] == pytest.approx((topk == torch.as_tensor(caption_image)[:, None]).any(1).float().mean().item())


def test_a_collapsed_model_scores_chance_not_perfect():
    images = F.normalize(torch.ones(10, 4), dim=1)
    texts = F.normalize(torch.ones(20, 4), dim=1)
    caption_image = np.arange(20) % 10
    got = retrieval_metrics(images, texts, caption_image)
    assert got["t2i_R@1"] == pytest.approx(1 / 10)
    assert got["i2t_R@1"] == pytest.approx(2 / 20)
    assert got["t2i_AUC"] == pytest.approx(0.5)
    classes = classification_metrics(images, F.normalize(torch.ones(5, 4), dim=1), np.arange(10) % 5)
    assert classes["top1"] == pytest.approx(1 / 5)
