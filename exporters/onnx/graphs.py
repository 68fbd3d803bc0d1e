"""The modules that are traced into ONNX: TAO's I/O contract around a :class:`core.backbone.ClipModel`.

Every graph also returns ``logit_scale`` (already exponentiated: the multiplier) and
``logit_bias`` (0 for models without a bias) as 0-d float32 outputs. Embeddings are
L2-normalised. With a classifier (``export.classifier``), the graphs that take ``image`` also
return its ``logits`` and ``probabilities`` ``[N, classes]`` (:class:`core.ClassifierHead`). The ``attention_mask`` input is not part of the traced graph (every family encodes
text without a padding mask, ``TextSpec.mask_policy == "none"``); the exporter adds it afterwards
as an ignored graph input when asked to.
"""

from __future__ import annotations

import torch
from torch import nn

CLASSIFIER_OUTPUTS = ("logits", "probabilities")


def logit_outputs(model) -> tuple[torch.Tensor, torch.Tensor]:
    scale = model.logit_scale.exp().reshape(())
    bias = model.logit_bias.reshape(()) if model.logit_bias is not None else torch.zeros(())
    return scale, bias


class VisionGraph(nn.Module):
    """``image`` -> ``image_embedding``, ``logit_scale``, ``logit_bias`` (and the classifier's outputs)."""

    inputs = ("image",)

    def __init__(self, model, head: nn.Module | None = None):
        super().__init__()
        self.model, self.head = model, head
        self.outputs = ("image_embedding", "logit_scale", "logit_bias") + (CLASSIFIER_OUTPUTS if head else ())

    def forward(self, image):
        embedding = self.model.encode_image(image, normalize=True)
        return (embedding, *logit_outputs(self.model), *(self.head(embedding) if self.head else ()))


class TextGraph(nn.Module):
    """``input_ids`` -> ``text_embedding``, ``logit_scale``, ``logit_bias`` (a classifier does not apply)."""

    inputs, outputs = ("input_ids",), ("text_embedding", "logit_scale", "logit_bias")

    def __init__(self, model, head: nn.Module | None = None):
        super().__init__()
        self.model = model

    def forward(self, input_ids):
        return (self.model.encode_text(input_ids, normalize=True), *logit_outputs(self.model))


class CombinedGraph(nn.Module):
    """``image``, ``input_ids`` -> ``image_embedding``, ``text_embedding``, ``logit_scale``, ``logit_bias``."""

    inputs = ("image", "input_ids")

    def __init__(self, model, head: nn.Module | None = None):
        super().__init__()
        self.model, self.head = model, head
        self.outputs = (("image_embedding", "text_embedding", "logit_scale", "logit_bias")
                        + (CLASSIFIER_OUTPUTS if head else ()))

    def forward(self, image, input_ids):
        embedding = self.model.encode_image(image, normalize=True)
        return (embedding, self.model.encode_text(input_ids, normalize=True), *logit_outputs(self.model),
                *(self.head(embedding) if self.head else ()))


GRAPHS = {"combined": CombinedGraph, "vision": VisionGraph, "text": TextGraph}
