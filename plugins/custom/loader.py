"""The custom format's training loader and retrieval set.

Training: a map-style dataset over the concatenated entries and a batch sampler that, each
epoch, shuffles all indices with ``torch.Generator().manual_seed(seed + epoch)``, keeps whole
global batches (``drop_last``) and gives rank ``r`` slice ``r`` of every global batch, so ranks
see disjoint samples and the same number of batches. The sampler can start at batch ``k``,
which is how a mid-epoch position is restored. A bad sample is recorded and replaced by another
sample chosen deterministically from (seed, epoch, index), so batches stay full (every rank's
batch must have the same size for the contrastive loss).
"""

from __future__ import annotations

import bisect
import itertools
import logging
import random
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from core import (MAX_CONSECUTIVE_BAD, BadSample, BadSampleLog, DataRequest, RetrievalSet, Storage, check_global_batch,
                  collate_samples, decoded, finish_batch, match_id, open_image, parse_captions,
                  too_many_bad, worker_seeds)
from plugins.custom.index import EntryIndex, index_entries

log = logging.getLogger("clipcore.data")


class PairDataset(Dataset):
    """Image–caption pairs; ``dataset[(index, epoch)]`` is a dict ``image``, ``caption``, ``key``
    and ``bad`` (records of bad samples replaced on the way), or ``fatal``."""

    def __init__(self, entries: list[EntryIndex], transform: Any, max_pixels: int, seed: int):
        self.entries, self.transform, self.max_pixels, self.seed = entries, transform, max_pixels, seed
        self.starts = list(itertools.accumulate((len(e.pairs) for e in entries), initial=0))

    def __len__(self) -> int:
        return self.starts[-1]

    def locate(self, index: int) -> tuple[EntryIndex, str, str]:
        entry_number = bisect.bisect_right(self.starts, index) - 1
        entry = self.entries[entry_number]
        image, caption = entry.pairs[index - self.starts[entry_number]]
        return entry, image, caption

    def key(self, index: int) -> str:
        entry, image, _ = self.locate(index)
        return entry.images.display(image)

    def captions(self, index: int) -> list[str]:
        """Every caption of sample ``index``; raises :class:`BadSample`."""
        entry, _, caption = self.locate(index)
        try:
            data = entry.captions.read(caption)
        except FileNotFoundError:
            raise BadSample("missing-caption", f"{entry.captions.display(caption)} does not exist") from None
        except OSError as exc:
            raise BadSample("missing-caption", f"{entry.captions.display(caption)}: {exc}") from None
        try:
            return parse_captions(data, entry.caption_mode)
        except BadSample as exc:
            exc.detail = f"{entry.captions.display(caption)}: {exc.detail}"
            raise

    def image_bytes(self, index: int) -> bytes:
        """Sample ``index``'s image file; raises :class:`BadSample`."""
        entry, image, _ = self.locate(index)
        try:
            return entry.images.read(image)
        except FileNotFoundError:
            raise BadSample("missing-image", "no such file") from None
        except OSError as exc:
            raise BadSample("corrupt-image", f"cannot read: {exc}") from None

    def image(self, index: int, data: bytes | None = None, seed: int | None = None) -> torch.Tensor:
        """Sample ``index``'s transformed image (from ``data`` when given); raises :class:`BadSample`.
        With ``seed``, random augmentation draws from a generator seeded with it, so the result does
        not depend on which worker process runs it or what it ran before (exact resume with any
        worker count)."""
        opened = open_image(self.image_bytes(index) if data is None else data, self.max_pixels)
        return decoded(lambda: self.transform(opened), seed=seed)

    def group(self, index: int) -> str | None:
        """Sample ``index``'s user group (the entry's ``group_file``), or ``None``."""
        entry, image, _ = self.locate(index)
        return entry.groups.get(image)

    def __getitem__(self, item: tuple[int, int]) -> dict[str, Any]:
        index, epoch = item
        rng = random.Random(f"{self.seed}/{epoch}/{index}")
        bad = []
        for _ in range(MAX_CONSECUTIVE_BAD):
            try:
                caption = rng.choice(self.captions(index))
                data = self.image_bytes(index)
                image = self.image(index, data, seed=rng.getrandbits(63))
                return {"image": image, "caption": caption, "key": self.key(index), "image_id": match_id(data),
                        "group": self.group(index), "bad": bad}
            except BadSample as exc:
                bad.append(exc.record(self.key(index)))
                index = rng.randrange(len(self))
        return {"bad": bad, "fatal": too_many_bad(self.key(index))}


class RankBatches:
    """This rank's batches of (index, epoch) for one epoch, from batch ``start`` on."""

    def __init__(self, num_samples: int, batch_size: int, rank: int, world_size: int, seed: int):
        self.num_samples, self.batch_size, self.rank, self.world_size, self.seed = (
            num_samples, batch_size, rank, world_size, seed)
        self.num_batches = num_samples // (batch_size * world_size)
        self.epoch, self.start = 0, 0

    def __len__(self) -> int:
        return self.num_batches - self.start

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        used = order[: self.num_batches * self.batch_size * self.world_size]
        mine = used.view(self.num_batches, self.world_size, self.batch_size)[:, self.rank]
        for batch in mine[self.start:].tolist():
            yield [(index, self.epoch) for index in batch]


class PairLoader:
    """The custom format's :class:`core.data.BatchLoader` for one rank."""

    def __init__(self, dataset: PairDataset, request: DataRequest, log: BadSampleLog):
        self.dataset, self.tokenizer, self.log, self.seed = dataset, request.tokenizer, log, request.seed
        self.sampler = RankBatches(len(dataset), request.batch_size, request.rank, request.world_size, request.seed)
        self.global_batch = request.batch_size * request.world_size
        self.num_samples = self.sampler.num_batches * self.global_batch
        self.epoch, self.position = 0, 0
        workers = request.num_workers
        self._loader = DataLoader(
            dataset, batch_sampler=self.sampler, num_workers=workers, collate_fn=collate_samples,
            pin_memory=bool(request.config.dataset.pin_memory and torch.cuda.is_available()))

    def __len__(self) -> int:
        return self.sampler.num_batches

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.log.report(f"epoch {self.epoch}")
            self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "batch": self.position, "global_batch": self.global_batch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position; saved with another global batch (batch size × world size), the
        same number of samples is skipped, rounded down to whole batches."""
        self.epoch, self.position = int(state["epoch"]), int(state["batch"])
        saved = int(state.get("global_batch", self.global_batch))
        if saved != self.global_batch:
            self.position = self.position * saved // self.global_batch
            log.warning("the data position was saved with a global batch of %d, this run has %d: resuming after "
                        "%d batches", saved, self.global_batch, self.position)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        self.sampler.epoch, self.sampler.start = self.epoch, self.position
        self._loader.generator = worker_seeds(self.seed, self.epoch)
        self.log.epoch = self.epoch
        try:
            for raw in self._loader:
                batch = finish_batch(raw, self.tokenizer, self.log)
                self.position += 1
                yield batch
            self.position = 0
        finally:
            self.log.report(f"epoch {self.epoch}")


def build_dataset(request: DataRequest, datasets: list[Any], key: str, log: BadSampleLog) -> PairDataset:
    entries = index_entries(datasets, key, log.record_shared, Storage.of(request.config.dataset))
    return PairDataset(entries, request.transform, request.config.dataset.max_image_pixels, request.seed)


def build(request: DataRequest) -> PairLoader:
    """The training loader over ``dataset.train.datasets`` for ``request.rank``."""
    log = BadSampleLog.from_request(request)
    dataset = build_dataset(request, request.config.dataset.train.datasets, "dataset.train.datasets", log)
    check_global_batch(len(dataset), request.batch_size, request.world_size, "dataset.train.datasets")
    return PairLoader(dataset, request, log)


def retrieval(request: DataRequest) -> RetrievalSet:
    """The evaluation set of ``dataset.val.datasets``: every caption of every readable pair
    (several per image in ``lines`` mode); images load on demand."""
    log = BadSampleLog.from_request(request)
    dataset = build_dataset(request, request.config.dataset.val.datasets, "dataset.val.datasets", log)
    kept, captions, caption_image = [], [], []
    for index in range(len(dataset)):
        try:
            texts = dataset.captions(index)
        except BadSample as exc:
            log.record_shared(dataset.key(index), exc.reason, exc.detail)
            continue
        captions.extend(texts)
        caption_image.extend([len(kept)] * len(texts))
        kept.append(index)

    def load_image(i: int) -> torch.Tensor | None:
        try:
            return dataset.image(kept[i])
        except BadSample as exc:
            log.record(dataset.key(kept[i]), exc.reason, exc.detail)
            return None

    return RetrievalSet(image_paths=[dataset.key(i) for i in kept], captions=captions,
                        caption_image=caption_image, load_image=load_image)
