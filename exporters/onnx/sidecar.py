"""Build the ``<stem>_config.yaml`` sidecar of an export (read back by :mod:`core.artifact`).

Logit-scale convention, stated once: the ONNX ``logit_scale`` output and ``deploy.logit_scale.exp``
are the multiplier ``exp(s)``; ``deploy.logit_scale.log`` and TAO's ``model.init_logit_scale`` are
the log-space parameter ``s``. Logits are ``exp(s) * cos(image, text) + bias``; ``matching`` says
how a runtime turns them into probabilities (``sigmoid`` for SigLIP-style models with a bias,
``softmax`` over candidates otherwise).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import attrs

from core import artifact

CONVENTION = ("ONNX output logit_scale = exp = exp(log); log is the trained log-space parameter "
              "(TAO's model.init_logit_scale); logits = exp * cos(image, text) + logit_bias")


def logit_values(model) -> tuple[float, float | None]:
    """The trained (log-space scale, bias or None)."""
    bias = None if model.logit_bias is None else float(model.logit_bias.detach())
    return float(model.logit_scale.detach()), bias


def deploy_section(model, cfg, files: dict[str, Path], external: dict[str, str],
                   io: dict[str, dict[str, list]]) -> dict[str, Any]:
    """The ``deploy`` section: everything a runtime needs and nothing it must guess."""
    scale, bias = logit_values(model)
    return {
        "format": artifact.FORMAT,
        "version": artifact.VERSION,
        "model_type": model.model_type,
        "embed_dim": int(model.embed_dim),
        "encoder_type": cfg.export.encoder_type,
        "files": {tower: path.name for tower, path in files.items()},
        "external_data": external,
        "batch_size": cfg.export.batch_size,
        "attention_mask_input": cfg.export.attention_mask_input,
        "inputs": io["inputs"],
        "outputs": io["outputs"],
        "preprocess": model.preprocess.to_dict(),
        "text": {**model.tokenizer.spec.to_dict(),
                 "attention_mask": "ignored (all-ones inside; text is encoded without a padding mask)"
                 if cfg.export.attention_mask_input else "not an input"},
        "logit_scale": {"log": scale, "exp": math.exp(scale), "convention": CONVENTION},
        "logit_bias": 0.0 if bias is None else bias,
        "matching": "softmax" if bias is None else "sigmoid",
        "precision": cfg.export.precision,
        "provenance": dict(model.provenance),
    }


def config_document(model, cfg, deploy: dict[str, Any]) -> dict[str, Any]:
    """TAO's sidecar layout (the experiment config, trained logit values in ``model``) plus ``deploy``."""
    doc = attrs.asdict(cfg)
    scale, bias = logit_values(model)
    doc["model"].update(type=model.model_type, init_logit_scale=scale, init_logit_bias=0.0 if bias is None else bias,
                        canonicalize_text=bool(model.tokenizer.spec.canonicalize))
    doc["deploy"] = deploy
    return doc
