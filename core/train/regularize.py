"""The forgetting regularizer (``model.regularization``, TAO's fields): losses that keep the
fine-tuned model near a frozen copy of the starting model, the teacher.

With ``s`` / ``t`` the student's / teacher's L2-normalised embeddings (images and texts alike):

- ``reg/embedding_mse``: mean over samples of ``Σ_d (s − t)²``;
- ``reg/cosine``: mean over samples of ``1 − cos(s, t)``;
- ``reg/similarity``: mean squared difference between the student's image-text cosine similarity
  matrix over the global batch and the teacher's (this rank's image rows against every rank's
  texts; text features gathered with gradient).

Each term is averaged over this rank's samples, so the mean over ranks is the one-process value on
the concatenated batch and the gradients follow the losses' rule (``core.LossSpec``). The teacher
runs under ``no_grad`` in the training precision; it costs one extra forward per sample and a
second copy of the weights.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from core.collectives import all_gather_with_grad


class RegularizedLoss(nn.Module):
    """``loss(...) + Σ weight · term``; :attr:`teacher` holds the teacher's ``(image, text)``
    embeddings of the batch the next calls see, :attr:`terms` the last values (detached)."""

    def __init__(self, loss: nn.Module, weights: Any):
        super().__init__()
        self.loss, self.weights = loss, weights
        self.teacher: tuple[torch.Tensor, torch.Tensor] | None = None
        self.terms: dict[str, torch.Tensor] = {}

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
                logit_bias: torch.Tensor | None, match_keys: torch.Tensor | None = None) -> torch.Tensor:
        base = self.loss(image_features, text_features, logit_scale, logit_bias, match_keys=match_keys)
        t_image, t_text = self.teacher
        s = torch.cat([image_features, text_features]).float()
        t = torch.cat([t_image, t_text]).float()
        similarity = image_features.float() @ all_gather_with_grad(text_features.float()).T
        with torch.no_grad():
            t_similarity = t_image.float() @ all_gather_with_grad(t_text.float()).T
        terms = {"reg/embedding_mse": (s - t).pow(2).sum(-1).mean(),
                 "reg/cosine": (1 - F.cosine_similarity(s, t, dim=-1)).mean(),
                 "reg/similarity": (similarity - t_similarity).pow(2).mean()}
        self.terms = {k: v.detach() for k, v in terms.items()}
        w = self.weights
        return base + (w.embedding_mse_weight * terms["reg/embedding_mse"] + w.cosine_weight * terms["reg/cosine"]
                       + w.similarity_weight * terms["reg/similarity"])


@torch.no_grad()
def teacher_features(teacher: nn.Module, micro_batches: list[dict[str, torch.Tensor]], autocast: Any
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's normalised embeddings of every micro-batch, concatenated in order."""
    images, texts = [], []
    with autocast():
        for batch in micro_batches:
            out = teacher(batch["image"], batch["input_ids"], output_dict=True)
            images.append(out["image_features"])
            texts.append(out["text_features"])
    return torch.cat(images), torch.cat(texts)
