"""Build the model an action needs: the configured type from its plugin, optionally filled from a
clipcore checkpoint."""

from __future__ import annotations

import attrs

from core.backbone import ClipModel
from core.checkpoint import load_model_weights
from core.registry import get_registry


def build_model(cfg, checkpoint: str | None = None, *, key: str = "checkpoint") -> ClipModel:
    """The model for ``cfg.model.type``.

    With ``checkpoint`` (a clipcore checkpoint; ``key`` is the config key it came from) the
    architecture is built without downloading pretrained weights and filled from the file;
    without it, weights come from ``cfg.model.pretrained``.
    """
    family = get_registry().backbone_for(cfg.model.type)
    if checkpoint:
        cfg = attrs.evolve(cfg, model=attrs.evolve(cfg.model, pretrained=False))
    model = family.build(cfg)
    if checkpoint:
        load_model_weights(model, checkpoint, key=key)
    return model
