"""The classifier contract: a linear head over a model's L2-normalised image embeddings.

A classifier file (``core linear-probe`` writes one, ``core calibrate`` writes a calibrated one,
``core export`` bakes one into the image graph) is a ``weights_only`` torch checkpoint holding
``format = "clipcore-classifier"`` and:

- ``weight`` ``[C, D]``, ``bias`` ``[C]``: ``logits = embedding @ weight.T + bias``;
- ``classes`` (folder names) and ``class_names`` (display names), in label order;
- ``scoring``: ``softmax`` (one class per image: ``probabilities = softmax(logits / T)``) or
  ``sigmoid`` (multi-label, SigLIP-style: ``probabilities = sigmoid(logits / T + offset)``);
- ``temperature`` ``T`` and ``offset`` (1 and 0 until calibrated), and ``thresholds``: per class,
  the probability at which a sigmoid classifier reports it (``None``: not calibrated for that class);
- ``source``: where the embeddings came from (model type, checkpoint, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import attrs
import torch
from torch import nn

from core.errors import DataError

FORMAT = "clipcore-classifier"
Scoring = Literal["softmax", "sigmoid"]


@attrs.frozen(kw_only=True)
class Classifier:
    """A classification head and what it needs to be used (module doc)."""

    weight: torch.Tensor
    bias: torch.Tensor
    classes: list[str]
    class_names: list[str]
    scoring: Scoring = "softmax"
    temperature: float = 1.0
    offset: float = 0.0
    thresholds: list[float | None] | None = None
    source: dict[str, Any] = attrs.field(factory=dict)

    def logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        return embeddings.float() @ self.weight.T + self.bias

    def probabilities(self, embeddings: torch.Tensor) -> torch.Tensor:
        return probabilities(self.logits(embeddings), self.scoring, self.temperature, self.offset)

    def sidecar(self) -> dict[str, Any]:
        """What a deployed classifier's runner needs (the ``deploy.classifier`` sidecar entry)."""
        return {"classes": list(self.classes), "class_names": list(self.class_names), "scoring": self.scoring,
                "temperature": float(self.temperature), "offset": float(self.offset),
                "thresholds": None if self.thresholds is None else list(self.thresholds)}

    def state(self) -> dict[str, Any]:
        """The classifier file's content (module doc), for ``torch.save``."""
        return {"format": FORMAT, "weight": self.weight.detach().float().contiguous(),
                "bias": self.bias.detach().float().contiguous(), **self.sidecar(),
                "source": {k: str(v) for k, v in self.source.items()}}


def probabilities(logits: torch.Tensor, scoring: Scoring, temperature: float = 1.0, offset: float = 0.0
                  ) -> torch.Tensor:
    """Softmax over classes of ``logits / temperature``, or per-class sigmoid of
    ``logits / temperature + offset``."""
    scaled = logits / temperature
    return scaled.softmax(-1) if scoring == "softmax" else (scaled + offset).sigmoid()


def load_classifier(path: str | Path, *, key: str = "classifier") -> Classifier:
    """A classifier file (module doc), loaded with ``weights_only=True`` and checked."""
    from core.weights import load_torch_file

    file = Path(path).expanduser()
    state = load_torch_file(file, where=key)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DataError(f"{file} is not a classifier file", where=key,
                        fix="pass the probe_head.pt of `core linear-probe` or the classifier of `core calibrate`")
    weight, bias = state["weight"], state["bias"]
    if weight.ndim != 2 or bias.shape != (weight.shape[0],) or len(state["classes"]) != weight.shape[0]:
        raise DataError(f"{file} is inconsistent: weight {tuple(weight.shape)}, bias {tuple(bias.shape)}, "
                        f"{len(state['classes'])} classes", where=key, fix="write it again with clipcore")
    return Classifier(weight=weight, bias=bias, classes=list(state["classes"]), class_names=list(state["class_names"]),
                      scoring=state["scoring"], temperature=float(state["temperature"]),
                      offset=float(state.get("offset", 0.0)), thresholds=state["thresholds"], source=dict(state.get("source", {})))


class ClassifierHead(nn.Module):
    """``embedding`` -> ``logits``, ``probabilities`` of a :class:`Classifier` (for export)."""

    def __init__(self, classifier: Classifier):
        super().__init__()
        self.register_buffer("weight", classifier.weight.detach().float().clone())
        self.register_buffer("bias", classifier.bias.detach().float().clone())
        self.scoring, self.temperature, self.offset = classifier.scoring, classifier.temperature, classifier.offset

    def forward(self, embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = embedding @ self.weight.T + self.bias
        return logits, probabilities(logits, self.scoring, self.temperature, self.offset)
