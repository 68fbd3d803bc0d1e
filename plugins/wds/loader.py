"""The ``wds`` format's training loader: a defined epoch length, disjoint ranks, a resumable position.

Epoch length: every shard holds ``samples_per_shard`` samples (or, with ``count_samples``, the
counted number); each rank yields :func:`plugins.wds.stream.batches_per_rank` batches every
epoch, so schedules and checkpoints work. Worker processes send chunks of up to a batch of
decoded samples and this process cuts them into batches (tokenising captions), so a worker's
quota need not be a multiple of the batch size. ``state_dict()`` holds, per worker, the raw
position and samples emitted behind the batches consumed so far, and which worker's chunk comes
next; a resumed run with the same world size and worker count continues exactly there (chunk
boundaries are fixed by each worker's sample count, augmentation is seeded per sample, and the
loader's round-robin over workers restarts at the saved worker). With a different world size or worker count, shards are assigned differently,
so the position is restored approximately (the same number of batches remains; a warning says
so).
"""

from __future__ import annotations

import collections
import logging
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader

from core import BadSampleLog, DataError, DataRequest, Storage, check_global_batch, finish_batch, worker_seeds
from plugins.wds.config import SECTION
from plugins.wds.shards import count_samples, list_shards
from plugins.wds.stream import SAMPLE_FIELDS, ShardStream, WorkerStart, batches_per_rank, identity

log = logging.getLogger("clipcore.data")


class ShardLoader:
    """The ``wds`` format's :class:`core.data.BatchLoader` for one rank."""

    def __init__(self, stream: ShardStream, batches: int, request: DataRequest, bad_samples: BadSampleLog):
        self.stream, self.batches, self.log = stream, batches, bad_samples
        self.batch_size, self.rank, self.world_size = request.batch_size, request.rank, request.world_size
        self.num_workers, self.seed, self.tokenizer = request.num_workers, request.seed, request.tokenizer
        self.pin_memory = bool(request.config.dataset.pin_memory and torch.cuda.is_available())
        self.num_samples = batches * request.batch_size * request.world_size
        self.epoch, self.position = 0, 0
        self.next_worker = 0  # whose chunk the batches continue with: the loader serves workers in turn

    def __len__(self) -> int:
        return self.batches

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.log.report(f"epoch {self.epoch}")
            self.epoch, self.position = epoch, 0
            self._reset_workers()

    def _reset_workers(self) -> None:
        self.stream.starts = [WorkerStart() for _ in range(self.stream.workers)]
        self.stream.first_worker = self.next_worker = 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.position, "rank": self.rank, "world_size": self.world_size,
                "num_workers": self.num_workers, "next_worker": self.next_worker,
                "workers": [[s.position, s.emitted] for s in self.stream.starts]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["batch"])
        self.stream.epoch = self.epoch
        same = (state.get("rank"), state.get("world_size"), state.get("num_workers")) == (
            self.rank, self.world_size, self.num_workers)
        if same:
            self.stream.starts = [WorkerStart(int(p), int(e)) for p, e in state["workers"]]
            self.stream.first_worker = self.next_worker = int(state.get("next_worker", 0))
            return
        # Another layout: continue with the same number of batches, each worker starting as far
        # into its new quota as the consumed share of the epoch.
        quotas = self.stream.plan().quotas
        done = self.position * self.batch_size
        total = self.batches * self.batch_size
        emitted = [q * done // total for q in quotas]
        shortfall = done - sum(emitted)
        for w, quota in enumerate(quotas):
            extra = min(shortfall, quota - emitted[w])
            emitted[w] += extra
            shortfall -= extra
        self.stream.starts = [WorkerStart(e, e) for e in emitted]
        log.warning("the data position was saved by rank %s of %s with %s workers; this is rank %s of %s with %s "
                    "workers: resuming approximately (%d of %d batches done this epoch)",
                    state.get("rank"), state.get("world_size"), state.get("num_workers"), self.rank,
                    self.world_size, self.num_workers, self.position, self.batches)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.stream.epoch = self.epoch
        self.log.epoch = self.epoch
        loader = DataLoader(self.stream, batch_size=None, num_workers=self.num_workers, collate_fn=identity,
                            generator=worker_seeds(self.seed, self.epoch))
        chunks: collections.deque[list] = collections.deque()  # [chunk, samples of it already used]
        available = 0
        try:
            for chunk in loader:
                if "fatal" in chunk:
                    self.log.record_all(chunk["bad"])
                    raise DataError(**chunk["fatal"])
                chunks.append([chunk, 0])
                available += len(chunk["key"])
                while available >= self.batch_size:
                    batch = finish_batch(self._take(chunks), self.tokenizer, self.log)
                    available -= self.batch_size
                    if self.pin_memory:
                        batch["image"] = batch["image"].pin_memory()
                    self.position += 1
                    yield batch
            if self.position != self.batches:
                raise RuntimeError(f"wds stream ended after {self.position} of {self.batches} batches")
            self.position = 0
            self._reset_workers()
        finally:
            self.log.report(f"epoch {self.epoch}")

    def _take(self, chunks: collections.deque) -> dict[str, Any]:
        """The next ``batch_size`` samples from the chunks received, as a raw batch; moves each
        worker's resume point past the samples taken."""
        parts, need = [], self.batch_size
        while need:
            chunk, used = chunks[0]
            take = min(need, len(chunk["key"]) - used)
            parts.append((chunk, used, used + take))
            chunks[0][1] += take
            if chunks[0][1] == len(chunk["key"]):
                chunks.popleft()
            need -= take
        for chunk, _, end in parts:
            self.stream.starts[chunk["worker"]] = WorkerStart(chunk["position"][end - 1], chunk["emitted"][end - 1])
        last = parts[-1][0]["worker"]
        self.next_worker = chunks[0][0]["worker"] if chunks else (last + 1) % self.stream.workers
        images = [c["image"][a:b] for c, a, b in parts]
        return {"image": images[0] if len(images) == 1 else torch.cat(images),  # a whole chunk is not copied
                **{field: [value for c, a, b in parts for value in c[field][a:b]] for field in SAMPLE_FIELDS},
                "bad": [r for c, a, b in parts for records in c["bad"][a:b] for r in records]}


def build(request: DataRequest) -> ShardLoader:
    """The training loader over ``dataset.train.wds`` shards for ``request.rank``."""
    cfg = request.config
    wds = SECTION.of(cfg)
    bad_samples = BadSampleLog.from_request(request)
    storage = Storage.of(cfg.dataset)
    shards = list_shards(wds, bad_samples.record_shared, storage)
    world, batch = request.world_size, request.batch_size
    if len(shards) < world:
        raise DataError(f"{len(shards)} shard(s) for {world} processes: every process needs at least one shard",
                        where=SECTION.path, fix="write the data into more shards (at least one per process), or train on "
                                       "fewer GPUs")
    sizes = [count_samples(s, bad_samples.record_shared) for s in shards] if wds.count_samples else [wds.samples_per_shard] * len(shards)
    check_global_batch(sum(sizes), batch, world, SECTION.path)
    batches = batches_per_rank(sizes, world, batch)
    if batches == 0:
        raise DataError(f"each of the {world} processes gets {len(shards) // world} shard(s), too few samples for "
                        f"one batch of {batch}", where=SECTION.path,
                        fix="lower dataset.train.batch_size, write more or larger shards, or train on fewer GPUs")
    stream = ShardStream(shards, sizes, samples=batches * batch, transform=request.transform,
                         max_pixels=cfg.dataset.max_image_pixels, caption_mode=wds.caption_mode,
                         buffer=wds.shuffle_buffer, seed=request.seed, rank=request.rank, world_size=world,
                         workers=request.num_workers, chunk=batch, storage_options=storage.options)
    return ShardLoader(stream, batches, request, bad_samples)
