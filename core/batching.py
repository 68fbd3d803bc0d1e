"""Helpers every dataset format's loader shares: the global-batch check, collation in worker
processes, and finishing a batch in the training process (bad-sample records, tokenisation,
match keys).

Worker processes cannot report to the training process's :class:`core.bad_samples.BadSampleLog`
directly, so a collated batch carries the bad samples met while producing it (``bad``) and,
when a worker had to give up, a ``fatal`` error; :func:`finish_batch` applies them.
"""

from __future__ import annotations

import hashlib
from typing import Any, Sequence

import torch

from core.bad_samples import BadSampleLog
from core.errors import DataError

MAX_CONSECUTIVE_BAD = 50  # a loader that meets this many bad samples in a row gives up

#: The columns of a batch's ``match_keys``: pairs with an equal key in one of them are compatible positives.
MATCH_KINDS = ("image", "text", "group")
NO_KEY = -1


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


def match_id(value: bytes | str) -> int:
    """A stable non-negative 63-bit id of ``value`` (the same on every process and run): what a
    loader puts in a sample's ``image_id`` (from the image file's bytes)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little") >> 1


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack worker samples ``{"image", "caption", "key", "bad"}`` (optionally ``image_id`` and
    ``group``) into one raw batch."""
    bad = [record for s in samples for record in s.get("bad", ())]
    fatal = next((s["fatal"] for s in samples if "fatal" in s), None)
    if fatal is not None:
        return {"bad": bad, "fatal": fatal}
    return {"image": torch.stack([s["image"] for s in samples]), "bad": bad,
            **{name: [s.get(name) for s in samples] for name in ("caption", "key", "image_id", "group")}}


def match_keys(raw: dict[str, Any]) -> torch.Tensor:
    """int64 ``[B, 3]``, one column per :data:`MATCH_KINDS`: the image's id (``image_id``, else
    the id of the sample ``key``), the id of the caption (whitespace-normalised), the id of the
    ``group`` (``-1`` without one)."""
    count = len(raw["caption"])
    image_ids, groups = raw.get("image_id") or [None] * count, raw.get("group") or [None] * count
    rows = [[match_id(key) if image_id is None else image_id, match_id(" ".join(caption.split())),
             NO_KEY if group is None else match_id(group)]
            for key, caption, image_id, group in zip(raw["key"], raw["caption"], image_ids, groups)]
    return torch.tensor(rows, dtype=torch.int64).reshape(count, len(MATCH_KINDS))


def finish_batch(raw: dict[str, Any], tokenizer: Any, log: BadSampleLog) -> dict[str, Any]:
    """The batch the trainer sees (``image``, ``input_ids``, ``key``, ``match_keys``), after
    recording the bad samples behind it (which raises under ``on_bad_sample = "error"``). A raw
    batch holds lists ``caption`` and ``key`` and, optionally, ``image_id`` (:func:`match_id` of
    the image bytes) and ``group`` (a user group name or ``None``) per sample."""
    log.record_all(raw["bad"])
    if "fatal" in raw:
        raise DataError(**raw["fatal"])
    return {"image": raw["image"], "input_ids": tokenizer(raw["caption"]), "key": raw["key"],
            "match_keys": match_keys(raw)}
