"""Validation during training: the retrieval metrics of ``core evaluate`` on ``dataset.val``,
computed with the model being trained and logged as ``val/{i2t,t2i}_{R@k,fracR@k,mAP,MedR,MeanR,AUC}``,
and the same on the guard set ``dataset.reference`` as ``ref/…`` (plus ``ref/classification/top1``,
``top5``, ``mean_per_class`` for its zero-shot classification folder).

Every rank embeds its share of the set (an FSDP-sharded model needs every rank's forward), the
embeddings are gathered and rank 0 scores the whole set once (:func:`core.eval.retrieval.retrieval_results`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch

from core.bad_samples import BadSampleLog
from core.runtime.distributed import World
from core.eval.embed import ModelEncoder
from core.eval.classification import classification_results
from core.eval.metrics import DIRECTIONS
from core.eval.retrieval import retrieval_results


def validation_metrics(results: dict[str, Any], prefix: str = "val") -> dict[str, float]:
    """The ``<prefix>/…`` metrics of :func:`core.eval.retrieval.retrieval_results` (counts left out)."""
    return {f"{prefix}/{key}": float(value) for key, value in results.items()
            if key.split("_", 1)[0] in DIRECTIONS and "queries" not in key}


def logged_metrics(cfg) -> list[str]:
    """Every metric name validation logs for ``cfg`` (``[]`` without validation data)."""
    from core.eval.metrics import retrieval_metrics

    keys = list(validation_metrics(retrieval_metrics(torch.eye(2), torch.eye(2), [0, 1]), "x"))
    names = [f"val/{k[2:]}" for k in keys] if cfg.dataset.val.datasets else []
    if cfg.dataset.reference.datasets:
        names += [f"ref/{k[2:]}" for k in keys]
    if cfg.dataset.reference.classification_dir:
        names += [f"ref/classification/{k}" for k in ("top1", "top5", "mean_per_class")]
    return names


class Validator:
    """Runs validation for a :class:`core.train.trainer.Trainer`."""

    def __init__(self, cfg, model, world: World, out_dir: Path, bad_samples: BadSampleLog | None = None):
        self.cfg, self.model, self.world = cfg, model, world
        self.out_dir = out_dir
        self.bad_samples = bad_samples or BadSampleLog(cfg.dataset.on_bad_sample, out_dir, world.rank, phase="val")
        self.encoder = ModelEncoder(model, world.device, source={"validation": str(out_dir)})

    @torch.no_grad()
    def run(self, *, target: bool = True) -> dict[str, float] | None:
        """The validation metrics on rank 0 (``None`` elsewhere); every rank must call it: ``val/*``
        on ``dataset.val`` (when ``target`` and it has datasets) and ``ref/*`` on the guard set
        ``dataset.reference`` (retrieval, ``ref/classification/*``). Leaves the model in eval mode
        (the trainer switches it back)."""
        cfg, metrics = self.cfg, {}
        self.model.eval()
        with self.bad_samples.in_phase("val"):
            if target and cfg.dataset.val.datasets:
                metrics.update(self._retrieval(cfg, cfg.dataset.val, "val"))
            ref = cfg.dataset.reference
            if ref.datasets:  # the guard set is a validation set with extra fields
                metrics.update(self._retrieval(attrs.evolve(cfg, dataset=attrs.evolve(cfg.dataset, val=ref)), ref, "ref"))
            if ref.classification_dir:
                ev = attrs.evolve(cfg.evaluate, classification_dir=ref.classification_dir,
                                  class_names_file=ref.class_names_file, batch_size=ref.batch_size,
                                  num_workers=ref.num_workers)
                found = classification_results(attrs.evolve(cfg, evaluate=ev), self.encoder, self.world, self.bad_samples)
                if found is not None:
                    metrics.update({f"ref/classification/{k}": float(found[k]) for k in ("top1", "top5", "mean_per_class")
                                    if k in found})
        self.bad_samples.report("validation")
        return metrics if self.world.is_main else None

    def _retrieval(self, cfg, section, prefix: str) -> dict[str, float]:
        results = retrieval_results(cfg, self.encoder, self.world, batch_size=section.batch_size,
                                    num_workers=section.num_workers, results_dir=self.out_dir,
                                    bad_samples=self.bad_samples)
        return {} if results is None else validation_metrics(results, prefix)
