"""Retrieval metrics of an encoder on ``dataset.val``: the one implementation behind validation
during training, ``core evaluate`` and deploy-time evaluate (an ONNX / engine encoder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch

from core.bad_samples import BadSampleLog
from core.data import DataRequest
from core.errors import ConfigError, DataError
from core.eval.embed import Encoder, embed_images, embed_texts
from core.eval.metrics import retrieval_metrics
from core.registry import get_registry
from core.runtime.distributed import World

@attrs.frozen
class ValEmbeddings:
    """An encoder's embeddings of ``dataset.val`` (rank 0): ``images`` ``[N, D]`` (zero rows where
    ``loaded`` is false: unreadable images), ``texts`` ``[M, D]``, ``caption_image`` ``[M]``."""

    images: torch.Tensor
    texts: torch.Tensor
    caption_image: np.ndarray
    loaded: np.ndarray


def val_embeddings(cfg, encoder: Encoder, world: World, *, batch_size: int, num_workers: int,
                   results_dir: Path | None, bad_samples: BadSampleLog | None = None,
                   progress=None) -> ValEmbeddings | None:
    """Embed ``dataset.val`` (every rank takes part); the embeddings on rank 0, ``None`` elsewhere."""
    val = cfg.dataset.val
    fmt = get_registry().get("dataset_formats", val.type, key="dataset.val.type")
    if fmt.retrieval is None:
        raise ConfigError(f"dataset format {val.type!r} cannot build an evaluation set (no `retrieval`)",
                          where="dataset.val.type", fix="use a format that supports evaluation, e.g. custom")
    request = DataRequest(config=cfg, transform=encoder.transform, tokenizer=encoder.tokenizer,
                          batch_size=batch_size, rank=world.rank, world_size=world.size, seed=cfg.dataset.seed,
                          num_workers=num_workers, bad_samples=bad_samples,
                          results_dir=None if results_dir is None else str(results_dir))
    data = fmt.retrieval(request)
    captions, caption_image = list(data.captions), np.asarray(data.caption_image, dtype=np.int64)
    if not len(data.image_paths) or not captions:
        raise DataError(f"the evaluation set has {len(data.image_paths)} images and {len(captions)} captions",
                        where="dataset.val.datasets", fix="point it at images with caption files")
    images = embed_images(encoder, data.load_image, len(data.image_paths), world=world, batch_size=batch_size,
                          num_workers=num_workers, progress=progress, description="evaluate: images")
    texts = embed_texts(encoder, captions, world=world, batch_size=batch_size, progress=progress,
                        description="evaluate: captions")
    if images is None:
        return None
    image_embeddings, loaded = images
    if not loaded.any():
        raise DataError(f"none of the {len(loaded)} evaluation images could be read", where="dataset.val.datasets",
                        fix="see bad_samples.jsonl for the reasons")
    return ValEmbeddings(image_embeddings, texts, caption_image, loaded)


def retrieval_results(cfg, encoder: Encoder, world: World, *, batch_size: int, num_workers: int,
                      results_dir: Path | None, bad_samples: BadSampleLog | None = None,
                      progress=None) -> dict[str, Any] | None:
    """Retrieval metrics of ``encoder`` on ``dataset.val`` (every rank takes part); on rank 0
    ``num_images``, ``num_texts``, the metric keys and the skip counts, ``None`` elsewhere.

    An image that cannot be read is left out with its captions (counted in
    ``skipped_images`` / ``skipped_texts``)."""
    found = val_embeddings(cfg, encoder, world, batch_size=batch_size, num_workers=num_workers,
                           results_dir=results_dir, bad_samples=bad_samples, progress=progress)
    return None if found is None else metrics_of(found, cfg.evaluate.tie_policy, world.device)


def metrics_of(found: ValEmbeddings, tie_policy: str, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Retrieval metrics of embedded ``dataset.val`` (unreadable images left out with their captions)."""
    loaded, caption_image = found.loaded, found.caption_image
    kept_texts = loaded[caption_image]
    new_index = np.cumsum(loaded) - 1
    metrics = retrieval_metrics(found.images[torch.from_numpy(loaded)].to(device),
                                found.texts[torch.from_numpy(kept_texts)].to(device),
                                new_index[caption_image[kept_texts]], tie_policy=tie_policy)
    return {"num_images": int(loaded.sum()), "num_texts": int(kept_texts.sum()), "tie_policy": tie_policy, **metrics,
            "skipped_images": int((~loaded).sum()), "skipped_texts": int((~kept_texts).sum())}
