"""Checks every dataset-format plugin passes (the contract is :class:`core.data.DatasetFormat`
and :class:`core.data.BatchLoader`).

Each ``check_<rule>(entry, registry)`` writes a small dataset through the format's ``write``
(real image files, see :func:`samples`), builds loaders with a byte-level tokenizer and a 16×16
eval transform, and raises ``AssertionError`` naming the plugin, the format and the rule.
"""

from __future__ import annotations

import io
import json
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from PIL import Image

from core.backbone import PreprocessSpec, TextSpec
from core.bad_samples import FILE_NAME
from core.spec.config import ExperimentConfig
from core.data import DataRequest, RawSample
from core.errors import DataError
from core.registry import Entry, Registry
from core.runtime.transforms import eval_transform

NUM_SAMPLES = 24
BATCH = 4
SPEC = PreprocessSpec(height=16, width=16, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize_mode="squash",
                      interpolation="bilinear")
CORRUPT_KEY = "sample-corrupt"


class ByteTokenizer:
    """UTF-8 bytes + 1 as token ids, zero-padded to 16 (the kit only calls it)."""

    spec = TextSpec(context_length=16, pad_id=0)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        ids = torch.zeros(len(texts), self.spec.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            data = list(text.encode("utf-8"))[: self.spec.context_length]
            ids[row, : len(data)] = torch.tensor(data, dtype=torch.long) + 1
        return ids


def samples(n: int = NUM_SAMPLES, corrupt: bool = False) -> list[RawSample]:
    """``n`` distinct PNG images with captions (plus an undecodable one with ``corrupt``)."""
    out = []
    for i in range(n):
        buffer = io.BytesIO()
        Image.new("RGB", (20 + i % 5, 12 + i % 3), (i * 10 % 256, 255 - i * 7 % 256, i * 3 % 256)).save(buffer, "PNG")
        out.append(RawSample(key=f"sample-{i:04d}", image=buffer.getvalue(), caption=f"caption {i}".encode()))
    if corrupt:
        out.insert(n // 2, RawSample(key=CORRUPT_KEY, image=b"\x89PNG\r\n\x1a\n not an image", caption=b"broken"))
    return out


def _where(entry: Entry) -> str:
    return f"plugin {entry.provider.plugin!r}, dataset format {entry.name!r}"


@contextmanager
def _dataset(entry: Entry, corrupt: bool = False, on_bad_sample: str = "skip") -> Iterator[tuple[ExperimentConfig, Path]]:
    """A config pointing at freshly written data, and a results folder."""
    fmt = entry.obj
    assert fmt.write is not None, (
        f"{_where(entry)}: rule writable: DatasetFormat.write is not set, so the kit cannot produce data "
        "in this format; implement write(folder, samples, config)")
    with tempfile.TemporaryDirectory(prefix="clipcore-kit-") as tmp:
        cfg = ExperimentConfig()
        cfg.dataset.on_bad_sample = on_bad_sample
        cfg = fmt.write(Path(tmp) / "data", samples(corrupt=corrupt), cfg)
        assert cfg.dataset.train.type == entry.name, (
            f"{_where(entry)}: rule writable: write() set dataset.train.type to {cfg.dataset.train.type!r}")
        yield cfg, Path(tmp) / "results"


def _loader(entry: Entry, cfg: ExperimentConfig, results: Path, *, rank: int = 0, world_size: int = 1,
            seed: int = 0, num_workers: int = 0) -> Any:
    request = DataRequest(config=cfg, transform=eval_transform(SPEC), tokenizer=ByteTokenizer(), batch_size=BATCH,
                          rank=rank, world_size=world_size, seed=seed, num_workers=num_workers,
                          results_dir=str(results))
    return entry.obj.build(request)


def _keys(loader: Any, epoch: int) -> list[str]:
    loader.set_epoch(epoch)
    return [key for batch in loader for key in batch["key"]]


def check_batch_shapes(entry: Entry, registry: Registry) -> None:
    """Rule: batches hold ``image`` float [B, 3, H, W], ``input_ids`` int64 [B, L] from the
    tokenizer, and ``key``, B sample keys (strings)."""
    where = _where(entry)
    with _dataset(entry) as (cfg, results):
        loader = _loader(entry, cfg, results)
        loader.set_epoch(0)
        batches = list(loader)
    assert batches, f"{where}: rule batch shapes: the loader yielded no batch from {NUM_SAMPLES} samples"
    for batch in batches:
        image, ids, keys = batch.get("image"), batch.get("input_ids"), batch.get("key")
        assert isinstance(image, torch.Tensor) and image.dtype == torch.float32 and tuple(image.shape) == (
            BATCH, 3, SPEC.height, SPEC.width), (
            f"{where}: rule batch shapes: image must be float32 [{BATCH}, 3, {SPEC.height}, {SPEC.width}], got "
            f"{getattr(image, 'dtype', type(image))} {tuple(getattr(image, 'shape', ()))}")
        assert isinstance(ids, torch.Tensor) and ids.dtype == torch.int64 and tuple(ids.shape) == (
            BATCH, ByteTokenizer.spec.context_length), (
            f"{where}: rule batch shapes: input_ids must be int64 [{BATCH}, 16] from the request's tokenizer, got "
            f"{getattr(ids, 'dtype', type(ids))} {tuple(getattr(ids, 'shape', ()))}")
        assert isinstance(keys, (list, tuple)) and len(keys) == BATCH and all(isinstance(k, str) for k in keys), (
            f"{where}: rule batch shapes: key must be a list of {BATCH} strings, got {keys!r}")


def check_same_seed_same_order(entry: Entry, registry: Registry) -> None:
    """Rule: the order depends only on (seed, epoch): two loaders with the same seed agree, and
    another epoch is shuffled differently."""
    where = _where(entry)
    with _dataset(entry) as (cfg, results):
        first, second = _loader(entry, cfg, results, seed=7), _loader(entry, cfg, results, seed=7)
        a, b = _keys(first, 0), _keys(second, 0)
        assert a == b, f"{where}: rule same seed, same order: two loaders with seed 7 gave {a} and {b}"
        assert _keys(first, 0) == a, f"{where}: rule same seed, same order: iterating epoch 0 again changed the order"
        c = _keys(first, 1)
        assert c != a, f"{where}: rule seeded shuffling: epochs 0 and 1 have the same order {a}"


def check_ranks_disjoint(entry: Entry, registry: Registry) -> None:
    """Rule: with two ranks, each yields the same number of batches and no sample appears on both."""
    where = _where(entry)
    with _dataset(entry) as (cfg, results):
        loaders = [_loader(entry, cfg, results, rank=r, world_size=2) for r in (0, 1)]
        assert len(loaders[0]) == len(loaders[1]), (
            f"{where}: rule equal batches per rank: rank 0 has {len(loaders[0])}, rank 1 {len(loaders[1])}")
        keys = [_keys(loader, 0) for loader in loaders]
    shared = set(keys[0]) & set(keys[1])
    assert not shared, f"{where}: rule disjoint ranks: both ranks yielded {sorted(shared)[:5]}"
    for rank in (0, 1):
        assert len(set(keys[rank])) == len(keys[rank]), (
            f"{where}: rule disjoint ranks: rank {rank} yielded a sample twice in one epoch")


def check_epoch_length(entry: Entry, registry: Registry) -> None:
    """Rule: every epoch yields exactly ``len(loader)`` batches (with worker processes too) and
    ``num_samples`` is ``len × batch_size × world_size``."""
    where = _where(entry)
    with _dataset(entry) as (cfg, results):
        for workers in (0, 2):
            loader = _loader(entry, cfg, results, num_workers=workers)
            assert len(loader) >= 1, f"{where}: rule epoch length: len(loader) is {len(loader)}"
            assert loader.num_samples == len(loader) * BATCH, (
                f"{where}: rule epoch length: num_samples {loader.num_samples} != {len(loader)} batches × {BATCH}")
            for epoch in (0, 1):
                count = len(_keys(loader, epoch)) // BATCH
                assert count == len(loader), (
                    f"{where}: rule epoch length: epoch {epoch} with {workers} workers yielded {count} batches, "
                    f"len(loader) is {len(loader)}")


def check_resume_position(entry: Entry, registry: Registry) -> None:
    """Rule: a new loader given ``state_dict()`` taken after k batches yields the rest of the
    epoch: together with the first k batches, exactly the uninterrupted epoch's samples."""
    where = _where(entry)
    with _dataset(entry) as (cfg, results):
        full = _keys(_loader(entry, cfg, results, num_workers=2), 2)
        loader = _loader(entry, cfg, results, num_workers=2)
        loader.set_epoch(2)
        batches = iter(loader)
        head = [key for _ in range(2) for key in next(batches)["key"]]
        state = loader.state_dict()
        del batches
        resumed = _loader(entry, cfg, results, num_workers=2)
        resumed.set_epoch(2)
        resumed.load_state_dict(state)
        resumed.set_epoch(2)
        tail = [key for batch in resumed for key in batch["key"]]
    assert sorted(head + tail) == sorted(full), (
        f"{where}: rule resumable position: the first 2 batches plus the resumed rest ({len(head)} + {len(tail)} "
        f"samples) differ from the uninterrupted epoch ({len(full)} samples)")


def check_bad_sample_policy(entry: Entry, registry: Registry) -> None:
    """Rule: an undecodable image is skipped and listed in ``bad_samples.jsonl`` under
    ``on_bad_sample = "skip"`` (batches stay full), and stops loading with a :class:`DataError`
    naming it under ``"error"``."""
    where = _where(entry)
    with _dataset(entry, corrupt=True) as (cfg, results):
        loader = _loader(entry, cfg, results)
        for epoch in (0, 1, 2):
            keys = _keys(loader, epoch)
            assert not any(CORRUPT_KEY in k for k in keys), f"{where}: rule skip bad samples: the corrupt image was yielded"
            assert len(keys) == len(loader) * BATCH, f"{where}: rule skip bad samples: a batch lost its bad sample"
        listed = results / FILE_NAME
        assert listed.is_file(), f"{where}: rule skip bad samples: no {FILE_NAME} in results_dir"
        records = [json.loads(line) for line in listed.read_text().splitlines()]
        assert any(CORRUPT_KEY in r["path"] and r["reason"] == "corrupt-image" for r in records), (
            f"{where}: rule skip bad samples: {FILE_NAME} does not list {CORRUPT_KEY} as corrupt-image: {records}")
    with _dataset(entry, corrupt=True, on_bad_sample="error") as (cfg, results):
        loader = _loader(entry, cfg, results)
        try:
            for epoch in (0, 1, 2):
                _keys(loader, epoch)
        except DataError as exc:
            assert CORRUPT_KEY in str(exc) and "corrupt-image" in str(exc), (
                f"{where}: rule error on bad samples: the DataError does not name the sample and reason: {exc}")
        else:
            raise AssertionError(f"{where}: rule error on bad samples: on_bad_sample = 'error' did not raise "
                                 "DataError for an undecodable image")


DATA_CHECKS = [check_batch_shapes, check_same_seed_same_order, check_ranks_disjoint, check_epoch_length,
               check_resume_position, check_bad_sample_policy]
