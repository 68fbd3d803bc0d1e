"""One epoch of WebDataset samples for one rank, split over its loader workers.

Epoch ``e``: the shard list is shuffled with ``Random(seed + e)`` (the same on every rank);
rank ``r`` takes shards ``r, r + world, ...`` and its worker ``w`` every ``workers``-th of
those, so no shard (and no sample) is read twice in an epoch. The rank's batch count is fixed
for every epoch (:func:`batches_per_rank`) and split over its workers in proportion to their
shards' samples (:func:`plan_epoch`). Each worker reads its shards through a seeded shuffle
buffer; its *raw position* counts the samples it has drawn from the buffer, which is all a
resumed run needs to skip to the same place without decoding anything. A worker whose shards
run out before its quota (shards smaller than declared) starts another pass over them, so every
rank always yields the same number of batches.
"""

from __future__ import annotations

import logging
import random
from typing import Any, Iterator, Sequence

import attrs
import torch
from torch.utils.data import IterableDataset, get_worker_info

from core import BadSample, decoded, match_id, open_image, parse_captions
from plugins.wds.shards import read_shard

log = logging.getLogger("clipcore.data")

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
TEXT_KEYS = ("txt", "text")
GROUP_KEYS = ("group", "cls")  # a user group (e.g. a class or identity): its members are compatible positives
SAMPLE_FIELDS = ("caption", "key", "image_id", "group")


def batches_per_rank(sizes: Sequence[int], world_size: int, batch_size: int) -> int:
    """Batches every rank yields per epoch: what the rank with the fewest, smallest shards can fill."""
    per_rank = len(sizes) // world_size
    return sum(sorted(sizes)[:per_rank]) // batch_size


@attrs.frozen
class EpochPlan:
    """One rank's epoch: each worker's shards (with their sizes) and sample quota."""

    shards: list[list[tuple[str, int]]]
    quotas: list[int]


def plan_epoch(shards: Sequence[str], sizes: Sequence[int], *, seed: int, epoch: int, rank: int,
               world_size: int, workers: int, samples: int) -> EpochPlan:
    """Assign this epoch's shards to ``rank``'s workers and split its ``samples`` over them."""
    order = list(range(len(shards)))
    random.Random(seed + epoch).shuffle(order)
    mine = [(shards[i], sizes[i]) for i in order[rank::world_size]]
    per_worker = [mine[w::workers] for w in range(workers)]
    capacity = [sum(size for _, size in ws) for ws in per_worker]
    total = sum(capacity)
    quotas = [samples * c // total for c in capacity]
    left = samples - sum(quotas)
    for w in sorted(range(workers), key=lambda w: quotas[w] - capacity[w]):
        extra = min(left, capacity[w] - quotas[w])
        quotas[w] += extra
        left -= extra
    return EpochPlan(shards=per_worker, quotas=quotas)


@attrs.define
class WorkerStart:
    """Where a worker resumes: raw samples drawn so far and samples emitted so far."""

    position: int = 0
    emitted: int = 0


class ShardStream(IterableDataset):
    """This rank's samples for ``epoch``, as chunks from each loader worker (see ``__iter__``)."""

    def __init__(self, shards: list[str], sizes: list[int], *, samples: int, transform: Any, max_pixels: int,
                 caption_mode: str, buffer: int, seed: int, rank: int, world_size: int, workers: int, chunk: int,
                 storage_options: dict[str, Any]):
        self.shards, self.sizes, self.samples, self.chunk = shards, sizes, samples, chunk
        self.transform, self.max_pixels, self.caption_mode, self.buffer = transform, max_pixels, caption_mode, buffer
        self.seed, self.rank, self.world_size, self.workers = seed, rank, world_size, max(workers, 1)
        self.storage_options = storage_options  # of fsspec, for remote shards
        self.epoch = 0
        self.starts = [WorkerStart() for _ in range(self.workers)]
        self.first_worker = 0  # the worker whose chunk the loader takes first (a resumed epoch's next one)

    def plan(self) -> EpochPlan:
        return plan_epoch(self.shards, self.sizes, seed=self.seed, epoch=self.epoch, rank=self.rank,
                          world_size=self.world_size, workers=self.workers, samples=self.samples)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """This worker's samples in chunks of up to ``chunk`` (one transfer each):
        ``image`` stacked, and per sample ``caption``, ``key``, ``bad`` (records met before
        it), ``position`` and ``emitted``; or a final ``{"fatal", "bad"}``."""
        info = get_worker_info()
        worker = ((info.id if info is not None else 0) + self.first_worker) % self.workers
        plan = self.plan()
        chunk: list[dict[str, Any]] = []
        for sample in self._samples(worker, [url for url, _ in plan.shards[worker]], plan.quotas[worker]):
            if "fatal" in sample:
                if chunk:
                    yield _stack(chunk, worker)
                yield {"fatal": sample["fatal"], "bad": sample["bad"]}
                return
            chunk.append(sample)
            if sample["emitted"] % self.chunk == 0:  # boundaries fixed by the count, so a resumed worker keeps them
                yield _stack(chunk, worker)
                chunk = []
        if chunk:
            yield _stack(chunk, worker)

    def _samples(self, worker: int, shards: list[str], quota: int) -> Iterator[dict[str, Any]]:
        start = self.starts[worker]
        emitted, position, skipped, idle_passes, bad = start.emitted, start.position, 0, 0, []
        if emitted >= quota or not shards:
            return
        for item in self._raw(worker, shards):
            replaying = skipped < start.position  # resume: skip what was drawn before, decoding nothing
            if isinstance(item, BadSample):
                if not replaying:
                    bad.append(item.record())
                continue
            if item is _PASS_END:
                idle_passes += 1
                if idle_passes >= 2:
                    yield {"bad": bad, "fatal": {
                        "what": "no readable sample in this worker's shards", "where": ", ".join(shards),
                        "fix": "check the shards (bad_samples.jsonl lists what was skipped)"}}
                    return
                log.warning("shards %s hold fewer samples than declared; reading them again to fill the epoch "
                            "(set dataset.train.wds.samples_per_shard to their real size, or count_samples = true)",
                            ", ".join(shards))
                continue
            if replaying:
                skipped += 1
                continue
            position += 1
            try:
                sample = self._decode(item, position, worker)
            except BadSample as exc:
                bad.append(exc.record(f"{item['__url__']}/{item['__key__']}"))
                continue
            idle_passes = 0
            emitted += 1
            yield {**sample, "bad": bad, "position": position, "emitted": emitted}
            bad = []
            if emitted >= quota:
                return

    def _raw(self, worker: int, shards: list[str]) -> Iterator[Any]:
        """The worker's raw samples through the shuffle buffer, pass after pass (each pass
        ends with ``_PASS_END``); shard failures appear as :class:`BadSample` items."""
        for number in range(1 << 62):
            rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}/{number}")
            buffer: list[dict[str, Any]] = []
            for url in shards:
                for item in read_shard(url, self.storage_options):
                    if isinstance(item, BadSample):
                        yield item
                        continue
                    if len(buffer) < self.buffer:
                        buffer.append(item)
                        continue
                    j = rng.randrange(len(buffer))
                    buffer[j], item = item, buffer[j]
                    yield item
            rng.shuffle(buffer)
            yield from buffer
            yield _PASS_END

    def _decode(self, item: dict[str, Any], position: int, worker: int) -> dict[str, Any]:
        key = f"{item['__url__']}/{item['__key__']}"
        text = next((item[k] for k in TEXT_KEYS if k in item), None)
        if text is None:
            raise BadSample("missing-caption", f"no {'/'.join(TEXT_KEYS)} member; members: {_members(item)}")
        image = next((item[k] for k in IMAGE_KEYS if k in item), None)
        if image is None:
            raise BadSample("missing-image", f"no {'/'.join(IMAGE_KEYS)} member; members: {_members(item)}")
        captions = parse_captions(text, self.caption_mode)
        rng = random.Random(f"{self.seed}/{self.epoch}/{self.rank}/{worker}/{position}")
        opened = open_image(image, self.max_pixels)
        caption = rng.choice(captions)
        group = next((item[k] for k in GROUP_KEYS if k in item), None)
        return {"image": decoded(lambda: self.transform(opened), seed=rng.getrandbits(63)), "caption": caption,
                "key": key, "image_id": match_id(image),
                "group": None if group is None else group.decode("utf-8", "replace").strip() or None}


def _stack(samples: list[dict[str, Any]], worker: int) -> dict[str, Any]:
    return {"image": torch.stack([s["image"] for s in samples]), "worker": worker,
            **{field: [s[field] for s in samples] for field in (*SAMPLE_FIELDS, "bad", "position", "emitted")}}


def _members(item: dict[str, Any]) -> str:
    return ", ".join(k for k in item if not k.startswith("__")) or "none"


_PASS_END = object()


def identity(chunk: Any) -> Any:
    """DataLoader collate for worker chunks (batches are formed in the training process)."""
    return chunk

