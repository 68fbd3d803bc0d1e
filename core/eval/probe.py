"""Linear probes: a logistic-regression head on frozen, L2-normalised image embeddings.

The head maps an embedding ``x`` ``[D]`` to logits ``W x + b`` ``[C]``. It is fitted with torch's
L-BFGS (strong-Wolfe line search) on the whole set at once, minimising

    mean cross-entropy + (λ / 2) · ‖W − W₀‖²        (the bias is not penalised)

``W₀`` is the anchor:

- ``init = "random"``: zero, the CLIP paper's probe (the fit starts from small seeded random
  weights; the problem is convex, so the start only matters through ``max_iter``);
- ``init = "zeroshot"``: the zero-shot classifier ``τ·T`` (``T`` the class prompts' text
  embeddings, ``τ`` the one scale that fits the training set best), which the fit also starts
  from. A large λ keeps the zero-shot classifier, a small one gives the plain probe; with few
  examples the search stops in between, which is why it beats a random start there.

λ is chosen as in the CLIP paper (Radford et al. 2021, appendix A.3): validation accuracy at
λ = 10⁻⁶, 10⁻⁴, …, 10⁶, then the interval around the best is halved until it reaches 8 steps per
decade (a tie in accuracy goes to the lower validation loss).
"""

from __future__ import annotations

from typing import Literal, Sequence

import attrs
import numpy as np
import torch
import torch.nn.functional as F

COARSE_EXPONENTS = (-6, -4, -2, 0, 2, 4, 6)   # log10 λ of the first sweep
FINEST_STEP = 0.125                            # log10 λ resolution: 8 steps per decade
Init = Literal["random", "zeroshot"]


@attrs.frozen
class Head:
    """A fitted linear head: ``logits = x @ weight.T + bias``."""

    weight: torch.Tensor   # [C, D]
    bias: torch.Tensor     # [C]

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias


@attrs.frozen
class Trial:
    """One λ of the search and how the head fitted with it did on the validation split."""

    lam: float
    accuracy: float
    loss: float


def best_scale(scores: torch.Tensor, y: torch.Tensor, scoring: str = "softmax", *, shift: bool = False,
               max_iter: int = 100) -> tuple[float, float]:
    """The multiplier ``s`` (and with ``shift``, the offset ``b``) for which ``s · scores + b`` fits
    labels ``y`` best: cross-entropy over classes (``softmax``), or binary cross-entropy of each
    class against ``y`` (``sigmoid``). The zero-shot scale ``τ`` is ``s`` on cosine scores;
    temperature scaling is ``T = 1 / s`` on logits (Platt scaling adds ``b`` for sigmoid)."""
    scores = scores.double()
    target = F.one_hot(y, scores.shape[1]).double()
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)   # log s, b
    optimizer = torch.optim.LBFGS([params], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        z = scores * params[0].exp() + (params[1] if shift else 0.0)
        loss = F.cross_entropy(z, y) if scoring == "softmax" else F.binary_cross_entropy_with_logits(z, target)
        loss.backward()
        return loss

    optimizer.step(closure)
    found = params.detach()
    return float(found[0].exp()), float(found[1]) if shift else 0.0


def fit_head(x: torch.Tensor, y: torch.Tensor, num_classes: int, lam: float, *, anchor: torch.Tensor | None = None,
             seed: int = 0, max_iter: int = 1000) -> Head:
    """The head minimising the module's objective on features ``x`` ``[N, D]`` and labels ``y``
    ``[N]``; ``anchor`` is ``W₀`` (``None``: zero, and a seeded random start)."""
    x = x.float()
    if anchor is None:
        generator = torch.Generator().manual_seed(seed)
        start = torch.randn(num_classes, x.shape[1], generator=generator) * 0.01
        target = torch.zeros(num_classes, x.shape[1])
    else:
        start, target = anchor.float().clone(), anchor.float()
    weight = start.requires_grad_(True)
    bias = torch.zeros(num_classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, history_size=20, tolerance_grad=1e-6,
                                  tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * lam * (weight - target).pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return Head(weight.detach(), bias.detach())


def search_lambda(train: tuple[torch.Tensor, torch.Tensor], val: tuple[torch.Tensor, torch.Tensor],
                  num_classes: int, *, anchor: torch.Tensor | None = None, seed: int = 0,
                  max_iter: int = 1000) -> tuple[float, list[Trial]]:
    """The λ (module doc) with the best validation accuracy, and every λ tried (in order)."""
    tried: dict[float, Trial] = {}

    def score(exponent: float) -> Trial:
        exponent = round(exponent, 6)
        if exponent not in tried:
            head = fit_head(*train, num_classes, 10.0 ** exponent, anchor=anchor, seed=seed, max_iter=max_iter)
            with torch.no_grad():
                logits = head.logits(val[0].float())
                tried[exponent] = Trial(10.0 ** exponent, float((logits.argmax(1) == val[1]).float().mean()),
                                        float(F.cross_entropy(logits, val[1])))
        return tried[exponent]

    def best(exponents: Sequence[float]) -> float:
        return max(exponents, key=lambda e: (score(e).accuracy, -score(e).loss))

    center = best(COARSE_EXPONENTS)
    step = float(COARSE_EXPONENTS[1] - COARSE_EXPONENTS[0])
    while step > FINEST_STEP:
        step /= 2
        low, high = COARSE_EXPONENTS[0], COARSE_EXPONENTS[-1]
        center = best([e for e in (center - step, center, center + step) if low <= e <= high])
    return 10.0 ** center, list(tried.values())


# --------------------------------------------------------------------------- splits
def stratified_split(labels: np.ndarray, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Indices of ``labels`` split per class: one array per fraction (each class gives
    ``round(fraction · size)`` items, at least one) and a last array with the rest; seeded."""
    rng = np.random.default_rng(seed)
    parts: list[list[int]] = [[] for _ in range(len(fractions) + 1)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for part, fraction in zip(parts, fractions):
            take = max(1, int(round(fraction * len(members))))
            part += members[start:start + take].tolist()
            start += take
        parts[-1] += members[start:].tolist()
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def k_shot(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """``k`` indices per class (all of a class that has fewer), drawn with ``seed``; sorted."""
    rng = np.random.default_rng(seed)
    chosen = [rng.choice(np.flatnonzero(labels == label), size=min(k, int((labels == label).sum())), replace=False)
              for label in np.unique(labels)]
    return np.sort(np.concatenate(chosen))


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    values = np.asarray(values, dtype=np.float64)
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0
