"""Validation during training: the retrieval metrics of ``core evaluate`` on ``dataset.val``,
computed with the model being trained and logged as ``val/{i2t,t2i}_{R@k,fracR@k,mAP,MedR,MeanR,AUC}``.

Every rank embeds its share of the set (an FSDP-sharded model needs every rank's forward), the
embeddings are gathered and rank 0 scores the whole set once (:func:`core.eval.retrieval.retrieval_results`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from core.bad_samples import BadSampleLog
from core.runtime.distributed import World
from core.eval.embed import ModelEncoder
from core.eval.metrics import DIRECTIONS
from core.eval.retrieval import retrieval_results


def validation_metrics(results: dict[str, Any]) -> dict[str, float]:
    """The ``val/…`` metrics of :func:`core.eval.retrieval.retrieval_results` (counts left out)."""
    return {f"val/{key}": float(value) for key, value in results.items()
            if key.split("_", 1)[0] in DIRECTIONS and "queries" not in key}


class Validator:
    """Runs validation for a :class:`core.train.trainer.Trainer`."""

    def __init__(self, cfg, model, world: World, out_dir: Path, bad_samples: BadSampleLog | None = None):
        self.cfg, self.model, self.world = cfg, model, world
        self.out_dir = out_dir
        self.bad_samples = bad_samples or BadSampleLog(cfg.dataset.on_bad_sample, out_dir, world.rank, phase="val")
        self.encoder = ModelEncoder(model, world.device, source={"validation": str(out_dir)})

    @torch.no_grad()
    def run(self) -> dict[str, float] | None:
        """The validation metrics on rank 0 (``None`` elsewhere); every rank must call it.
        Leaves the model in eval mode (the trainer switches it back)."""
        val = self.cfg.dataset.val
        self.model.eval()
        with self.bad_samples.in_phase("val"):
            results = retrieval_results(self.cfg, self.encoder, self.world, batch_size=val.batch_size,
                                        num_workers=val.num_workers, results_dir=self.out_dir,
                                        bad_samples=self.bad_samples)
        self.bad_samples.report("validation")
        return None if results is None else validation_metrics(results)
