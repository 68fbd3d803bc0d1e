"""Reduced-precision exports: their calibration data, and the accuracy gate that keeps or refuses them.

- :func:`calibration_data`: ``export.calibration_images`` training pairs (``dataset.train``, in the
  format's seeded order, with the evaluation transform): image tensors and token ids for an
  exporter's or engine builder's quantization calibration. Unreadable images are skipped and reported.
- :func:`accuracy_gate`: a reduced-precision export or engine (its runner) scored on ``dataset.val``
  against the fp32 model (a :class:`ClipModel`, or the runner of an fp32 export): R@1 in both
  directions, and the cosine between the two models' embeddings of every image and caption. It is
  refused, naming both numbers, when R@1 drops by more than ``export.max_recall_drop`` points or a
  cosine falls below ``export.min_cosine``; otherwise the record of what was measured is returned,
  for the sidecar.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from collections.abc import Iterator, Sequence

import attrs
import numpy as np
import torch

from core.bad_samples import BadSampleLog
from core.data import DataRequest
from core.errors import ClipcoreError, ConfigError, DataError

log = logging.getLogger("clipcore.export")

GATED_METRICS = ("i2t_R@1", "t2i_R@1")
CALIBRATION_SKIPPED_FILE = "calibration_skipped.jsonl"


@attrs.frozen
class CalibrationData:
    """``images`` float32 ``[N, 3, H, W]`` (the model's input) and ``input_ids`` int64 ``[N, L]``
    (one caption of each image); ``skipped``: unreadable images left out."""

    images: np.ndarray
    input_ids: np.ndarray
    skipped: int

    def feeds(self, inputs: Sequence[str], static_batch: int = -1, *, batch: int = 16) -> Iterator[dict[str, np.ndarray]]:
        """Batches for a graph with ONNX ``inputs`` (``image``, ``input_ids``, ``attention_mask``, all
        ones): ``batch`` rows each, or exactly ``static_batch`` rows (a remainder is dropped) when positive."""
        step = static_batch if static_batch > 0 else batch
        end = len(self.images) - (step - 1 if static_batch > 0 else 0)
        for start in range(0, end, step):
            rows = slice(start, start + step)
            found = {"image": self.images[rows], "input_ids": self.input_ids[rows]}
            found["attention_mask"] = np.ones_like(found["input_ids"])
            yield {name: found[name] for name in inputs}


def calibration_data(cfg, preprocess, tokenizer, out_dir: Path) -> CalibrationData:
    """``cfg.export.calibration_images`` pairs of ``dataset.train`` as a model with ``preprocess``
    (a :class:`PreprocessSpec`) and ``tokenizer`` takes them; skipped images are listed in ``out_dir``."""
    from core.registry import get_registry
    from core.runtime.transforms import eval_transform

    count, train = cfg.export.calibration_images, cfg.dataset.train
    fmt = get_registry().get("dataset_formats", train.type, key="dataset.train.type")
    bad = BadSampleLog(cfg.dataset.on_bad_sample, out_dir, file_name=CALIBRATION_SKIPPED_FILE, phase="calibration")
    batch = min(count, 8)
    request = DataRequest(config=cfg, transform=eval_transform(preprocess), tokenizer=tokenizer,
                          batch_size=batch, seed=cfg.dataset.seed, num_workers=0, bad_samples=bad,
                          results_dir=str(out_dir))
    loader = fmt.build(request)
    loader.set_epoch(0)
    images, ids = [], []
    for found in loader:
        images.append(found["image"].float().numpy())
        ids.append(found["input_ids"].to(torch.int64).numpy())
        if sum(len(i) for i in images) >= count:
            break
    skipped = sum(bad.totals.values())
    if skipped:
        log.warning("export calibration: skipped %d unreadable training images (listed in %s)", skipped,
                    out_dir / CALIBRATION_SKIPPED_FILE)
    if not images:
        raise DataError("no calibration image could be read from dataset.train", where="export.calibration_images",
                        fix=f"see {out_dir / CALIBRATION_SKIPPED_FILE}")
    return CalibrationData(np.concatenate(images)[:count], np.concatenate(ids)[:count], skipped)


def accuracy_gate(cfg, reference, runner, precision: str, *, key: str = "export.precision",
                  reference_name: str = "fp32") -> dict[str, Any]:
    """Score ``runner`` (the ``precision`` version of ``reference``) against ``reference`` on
    ``dataset.val``; raise :class:`ClipcoreError` (at ``key``) when it fails the gate, else return
    the record. ``reference`` is a :class:`ClipModel` (run in fp32) or a runner of an export, named
    ``reference_name`` in the record and the messages."""
    from core.eval.embed import ModelEncoder, RunnerEncoder
    from core.eval.retrieval import metrics_of, val_embeddings
    from core.runtime.distributed import World

    ec = cfg.export
    if not cfg.dataset.val.datasets:
        raise ConfigError(f"{key} = {precision} is scored on dataset.val before it is kept, and dataset.val has "
                          "no data", where="dataset.val.datasets",
                          fix="configure dataset.val (held-out image-caption pairs), or keep fp32")
    world = World(0, 1, 0, torch.device("cpu"))
    encoder = (ModelEncoder(reference.float().eval()) if isinstance(reference, torch.nn.Module)
               else RunnerEncoder(reference, source={}))
    options = dict(batch_size=cfg.evaluate.batch_size, num_workers=0, results_dir=None)
    reference = val_embeddings(cfg, encoder, world, **options)
    reduced = val_embeddings(cfg, RunnerEncoder(runner, source={}), world, **options)
    before, after = (metrics_of(found, cfg.evaluate.tie_policy) for found in (reference, reduced))
    loaded = reference.loaded & reduced.loaded
    cosine = {"image": _min_cosine(reference.images[torch.from_numpy(loaded)], reduced.images[torch.from_numpy(loaded)]),
              "text": _min_cosine(reference.texts, reduced.texts)}
    drops = {k: 100 * (before[k] - after[k]) for k in GATED_METRICS}
    record = {"dataset": "dataset.val", "images": int(loaded.sum()), "texts": len(reference.texts),
              reference_name: {k: before[k] for k in GATED_METRICS}, precision: {k: after[k] for k in GATED_METRICS},
              "recall_drop_points": drops, "max_recall_drop": ec.max_recall_drop,
              "min_cosine": cosine, "min_cosine_allowed": ec.min_cosine}
    worst = max(drops, key=drops.get)
    if drops[worst] > ec.max_recall_drop:
        raise ClipcoreError(
            f"the {precision} export loses {drops[worst]:.2f} points of {worst} on dataset.val "
            f"({reference_name} {100 * before[worst]:.2f}, {precision} {100 * after[worst]:.2f}; allowed: "
            f"{ec.max_recall_drop:g}); nothing was written", where=key,
            fix="keep fp32 (or try fp16), or raise export.max_recall_drop if the loss is acceptable")
    low = min(cosine, key=cosine.get)
    if cosine[low] < ec.min_cosine:
        raise ClipcoreError(
            f"the {precision} export's {low} embeddings differ from {reference_name}: lowest cosine {cosine[low]:.5f} "
            f"on dataset.val (allowed: {ec.min_cosine:g}); R@1 {reference_name} / {precision}: "
            + ", ".join(f"{k} {100 * before[k]:.2f} / {100 * after[k]:.2f}" for k in GATED_METRICS)
            + "; nothing was written", where=key,
            fix="keep fp32 (or try fp16), or lower export.min_cosine if the difference is acceptable")
    return record


def _min_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1).min())
