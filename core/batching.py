"""Helpers every dataset format's loader shares: the global-batch check, collation in worker
processes, and finishing a batch in the training process (bad-sample records, tokenisation).

Worker processes cannot report to the training process's :class:`core.bad_samples.BadSampleLog`
directly, so a collated batch carries the bad samples met while producing it (``bad``) and,
when a worker had to give up, a ``fatal`` error; :func:`finish_batch` applies them.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from core.bad_samples import BadSampleLog
from core.errors import DataError

MAX_CONSECUTIVE_BAD = 50  # a loader that meets this many bad samples in a row gives up


def check_global_batch(num_samples: int, batch_size: int, world_size: int, where: str) -> None:
    """A dataset smaller than one global batch (batch_size × world size) cannot train."""
    global_batch = batch_size * world_size
    if num_samples < global_batch:
        raise DataError(
            f"the dataset has {num_samples} usable samples, fewer than one global batch of {global_batch} "
            f"(dataset.train.batch_size {batch_size} × {world_size} process(es))", where=where,
            fix=f"lower dataset.train.batch_size to at most {max(num_samples // world_size, 1)}, "
                "train on fewer GPUs, or add data")


def too_many_bad(where: str) -> dict[str, str]:
    """The ``fatal`` error of a worker that met :data:`MAX_CONSECUTIVE_BAD` bad samples in a row."""
    return {"what": f"{MAX_CONSECUTIVE_BAD} samples in a row were unreadable", "where": where,
            "fix": "check the data (bad_samples.jsonl in the results folder lists what was skipped)"}


def worker_seeds(seed: int, epoch: int) -> torch.Generator:
    """The DataLoader ``generator`` for an epoch: worker processes (and their augmentation
    randomness) are seeded from (seed, epoch) alone."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack worker samples ``{"image", "caption", "key", "bad"}`` into one raw batch."""
    bad = [record for s in samples for record in s.get("bad", ())]
    fatal = next((s["fatal"] for s in samples if "fatal" in s), None)
    if fatal is not None:
        return {"bad": bad, "fatal": fatal}
    return {"image": torch.stack([s["image"] for s in samples]), "caption": [s["caption"] for s in samples],
            "key": [s["key"] for s in samples], "bad": bad}


def finish_batch(raw: dict[str, Any], tokenizer: Any, log: BadSampleLog) -> dict[str, Any]:
    """The batch the trainer sees (``image``, ``input_ids``, ``key``), after recording the bad
    samples behind it (which raises under ``on_bad_sample = "error"``)."""
    log.record_all(raw["bad"])
    if "fatal" in raw:
        raise DataError(**raw["fatal"])
    return {"image": raw["image"], "input_ids": tokenizer(raw["caption"]), "key": raw["key"]}
