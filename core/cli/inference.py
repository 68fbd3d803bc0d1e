"""``core inference``: image, text and object embeddings to HDF5, in TAO's layout.

Inputs: the images under ``inference.datasets`` (each ``image_dir`` searched recursively for
``.jpg .jpeg .png .bmp .gif .webp`` in any case, sorted by path; entries concatenated), the
prompts of ``inference.text_file`` (one per line, blank lines dropped), and/or the boxes of
``inference.detections`` (COCO JSON; the crop rule is in :mod:`core.eval.detections`). The model is
``inference.checkpoint``, ``inference.onnx_file``, ``inference.trt_engine`` or, with none set,
the pretrained weights of ``model.type``.

Outputs in ``<results_dir>/inference/``:

- ``image_embeddings.h5``: ``embeddings`` float32 ``[N, D]`` (L2-normalised, gzip 4),
  ``image_paths`` UTF-8 strings ``[N]``; attributes ``num_images``, ``embedding_dim``,
  ``embedding_type = "image"``. With ``inference.features = "patch"`` also ``patch_features``
  float32 ``[N, H', W', C]`` (or ``[N, H'*W', C]``; chunked by image, gzip 4) from block
  ``patch_block`` and, where the tower has them, ``patch_prefix`` ``[N, E, C]`` (class / register /
  summary tokens); attributes ``patch_block`` (absolute), ``patch_grid`` ``[H', W']``,
  ``patch_layout``, ``patch_norm``;
- ``text_embeddings.h5``: ``embeddings`` ``[M, D]``, ``texts`` ``[M]``; ``num_texts``,
  ``embedding_dim``, ``embedding_type = "text"``;
- ``object_embeddings.h5``: ``embeddings`` ``[K, D]``, one row per box, with ``image_paths``,
  ``boxes`` float32 ``[K, 4]`` (x, y, width, height as in the file), ``scores`` (NaN: none),
  ``image_ids``, ``annotation_ids``, ``category_ids``, ``instance_ids``, ``camera_ids`` and
  ``frame_ids`` (int64; -1: unknown; the frame defaults to the image id); attributes
  ``num_objects``, ``embedding_type = "object"``, ``crop_margin``, ``crop_shape`` and
  ``categories`` (JSON: id -> name). A box without area or outside its image is skipped and listed
  in ``skipped.jsonl`` (reason ``bad-box``).

Every file also records where the embeddings came from (``model_type``, ``checkpoint`` or
``onnx_file`` / ``trt_engine``, ``pretrained``, and ``config``, the resolved spec as TOML) so that
``core search`` encodes queries with the same model. Rows are written in chunks as they are
computed (a million images never sit in memory) into a temporary file renamed into place at the
end. An unreadable image is skipped (its path and reason logged and listed in
``skipped.jsonl``; ``dataset.on_bad_sample = "error"`` stops instead): row ``i`` of
``embeddings`` is always the image in row ``i`` of ``image_paths``. With several processes
(``-g N``, or under torchrun) each embeds a contiguous block of the images into a part file and
rank 0 joins the parts in order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterator, Sequence

import attrs
import h5py
import numpy as np
import torch

from core.bad_samples import BadSampleLog
from core.cli.launch import run_embedding_action
from core.runtime.distributed import World
from core.eval.detections import CropLoader, Detection, read_detections
from core.eval.embed import Encoder, Shard, image_batches, image_files, path_loader, progress_bar, text_batches
from core.errors import ConfigError, DataError
from core.storage import Storage
from core.images import IMAGE_EXTENSIONS

IMAGE_FILE, TEXT_FILE, OBJECT_FILE = "image_embeddings.h5", "text_embeddings.h5", "object_embeddings.h5"
SKIPPED_FILE = "skipped.jsonl"
WRITE_CHUNK = 4096  # rows per HDF5 chunk and per copy when joining rank parts


def run(cfg, args) -> None:
    """Embed here, or launch torchrun for ``inference.num_gpus`` > 1 processes."""
    run_embedding_action(cfg, args, "inference", _infer_and_report)


def _infer_and_report(cfg, encoder: Encoder, world: World, out_dir: Path) -> None:
    written = infer(cfg, encoder, world, out_dir)
    if world.is_main:
        for path, count in written:
            print(f"wrote {count} embeddings to {path}")


def infer(cfg, encoder: Encoder, world: World, out_dir: Path) -> list[tuple[Path, int]]:
    """Write the image and/or text embedding files; ``(path, rows)`` of each (on rank 0)."""
    inf = cfg.inference
    if not inf.datasets and not inf.text_file and not inf.detections:
        raise DataError("nothing to embed: inference.datasets, inference.text_file and inference.detections are unset",
                        where="inference", fix="add [[inference.datasets]] with image_dir, or set inference.text_file "
                                               "or inference.detections")
    storage = Storage.of(cfg.dataset)
    texts = read_prompts(storage.local(inf.text_file, "inference.text_file")) if inf.text_file else None
    found = [f for i, entry in enumerate(inf.datasets)
             for f in image_files(entry.image_dir, key=f"inference.datasets.{i}.image_dir", storage=storage)]
    paths, names = [p for p, _ in found], [n for _, n in found]
    if inf.datasets and not paths:
        raise DataError("no images found in inference.datasets", where="inference.datasets",
                        fix="point image_dir at folders with " + "/".join(IMAGE_EXTENSIONS) + " files")
    provenance = provenance_attrs(cfg, encoder)
    written = []
    with progress_bar(world.is_main) as progress:
        if paths:
            bad = BadSampleLog(cfg.dataset.on_bad_sample, out_dir, world.rank, file_name=SKIPPED_FILE,
                               phase="inference")
            shard = Shard.of(len(paths), world.rank, world.size)
            load = path_loader(paths, encoder.transform, max_pixels=cfg.dataset.max_image_pixels)
            attributes = dict(provenance)
            encode = _patch_encoder(encoder, inf, attributes) if inf.features == "patch" else None
            batches = _image_rows(encoder, load, names, range(shard.start, shard.stop), inf, bad, progress, encode)
            written.append(_write_sharded(out_dir / IMAGE_FILE, "image", attributes, batches, world))
            bad.report("inference")
        if inf.detections:
            written.append(_embed_objects(cfg, encoder, world, out_dir, provenance, progress))
        if texts is not None:
            shard = Shard.of(len(texts), world.rank, world.size)
            mine = texts[shard.start:shard.stop]
            batches = (({"texts": mine[s:s + len(e)]}, e) for s, e in
                       text_batches(encoder, mine, batch_size=inf.batch_size, progress=progress,
                                    description="inference: texts"))
            written.append(_write_sharded(out_dir / TEXT_FILE, "text", provenance, batches, world))
    return written


def _embed_objects(cfg, encoder: Encoder, world: World, out_dir: Path, provenance: dict[str, str],
                   progress) -> tuple[Path, int | None]:
    """``object_embeddings.h5``: one row per usable box of ``inference.detections``."""
    inf = cfg.inference
    found = read_detections(inf.detections, inf.detections_image_dir, min_score=inf.min_score)
    bad = BadSampleLog(cfg.dataset.on_bad_sample, out_dir, world.rank, file_name=SKIPPED_FILE, phase="inference")
    if world.is_main:
        for where, detail in found.skipped:
            bad.record(where, "bad-box", detail)
    if not found.boxes:
        raise DataError(f"{inf.detections} has no usable boxes", where="inference.detections",
                        fix=f"see {out_dir / SKIPPED_FILE} for why each box was skipped")
    load = CropLoader(found.boxes, encoder.transform, max_pixels=cfg.dataset.max_image_pixels,
                      margin=inf.crop_margin, shape=inf.crop_shape)
    shard = Shard.of(len(found.boxes), world.rank, world.size)

    def rows() -> Iterator[tuple[Columns, torch.Tensor]]:
        for batch in image_batches(encoder, load, range(shard.start, shard.stop), batch_size=inf.batch_size,
                                   num_workers=inf.num_workers, progress=progress, description="inference: objects"):
            for index, reason, detail in batch.failed:
                box = found.boxes[index]
                bad.record(f"{box.image_path}#{box.annotation_id}", reason, detail)
            yield object_columns([found.boxes[i] for i in batch.indices]), batch.embeddings

    attributes = {**provenance, "crop_margin": inf.crop_margin, "crop_shape": inf.crop_shape,
                  "categories": json.dumps({str(k): v for k, v in found.categories.items()})}
    written = _write_sharded(out_dir / OBJECT_FILE, "object", attributes, rows(), world)
    bad.report("inference")
    return written


def object_columns(boxes: Sequence[Detection]) -> Columns:
    """The per-row columns of ``object_embeddings.h5`` for ``boxes``."""
    def ints(name: str) -> np.ndarray:
        return np.asarray([getattr(b, name) for b in boxes], dtype=np.int64)

    return {"image_paths": [str(b.image_path) for b in boxes],
            "boxes": np.asarray([b.bbox for b in boxes], dtype=np.float32).reshape(-1, 4),
            "scores": np.asarray([b.score for b in boxes], dtype=np.float32),
            **{f"{name}s": ints(name) for name in ("image_id", "annotation_id", "category_id", "instance_id",
                                                   "camera_id", "frame_id")}}


def read_prompts(path: str) -> list[str]:
    """The non-blank lines of ``path`` (stripped)."""
    try:
        lines = Path(path).expanduser().read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read prompts: {exc}", where="inference.text_file",
                        fix="a UTF-8 text file with one prompt per line") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise DataError(f"{path} has no prompts (every line is blank)", where="inference.text_file",
                        fix="write one prompt per line")
    return prompts


def _image_rows(encoder, load, names: list[str], indices, inf, bad: BadSampleLog, progress,
                encode=None) -> Iterator[tuple[Columns, torch.Tensor]]:
    for batch in image_batches(encoder, load, indices, batch_size=inf.batch_size, num_workers=inf.num_workers,
                               progress=progress, description="inference: images", encode=encode):
        for index, reason, detail in batch.failed:
            bad.record(names[index], reason, detail)
        yield {"image_paths": [names[i] for i in batch.indices], **batch.columns}, batch.embeddings


def _patch_encoder(encoder, inf, attributes: dict[str, Any]):
    """``encode`` for ``features = "patch"``; records the block, layout and norm in ``attributes``
    and the patch grid once the first batch is embedded."""
    if not hasattr(encoder, "encode_image_patches"):
        raise ConfigError("patch features come from the PyTorch model's vision blocks", where="inference.features",
                          fix="embed with inference.checkpoint (or the pretrained weights), not an ONNX file or engine")
    blocks = len(encoder.model.vision_blocks())
    if not -blocks <= inf.patch_block < blocks:
        raise ConfigError(f"block {inf.patch_block} of a vision tower with {blocks} blocks", where="inference.patch_block",
                          fix=f"use {-blocks}..{blocks - 1} (negative: from the end)")
    attributes.update(patch_block=inf.patch_block % blocks, patch_layout=inf.patch_layout, patch_norm=inf.patch_norm)

    def encode(items):
        embeddings, columns, grid = encoder.encode_image_patches(items, block=inf.patch_block,
                                                                 layout=inf.patch_layout, norm=inf.patch_norm)
        attributes["patch_grid"] = list(grid)
        return embeddings, columns

    return encode


# --------------------------------------------------------------------------- provenance
def provenance_attrs(cfg, encoder: Encoder) -> dict[str, str]:
    """Where the embeddings come from, for ``core search``: the encoder's ``source``, the
    tokenizer path and the resolved spec (local paths made absolute) as TOML under ``config``."""
    from core.registry import get_registry
    from core.spec.render import render

    cfg = _absolute_paths(cfg)
    sections = {path: section.cls for path, section in get_registry().config_sections().items()}
    spec = render(cfg, sections, header=["# the spec these embeddings were computed with (core inference)"])
    return {**encoder.source, "tokenizer_path": cfg.model.tokenizer_path or "", "config": spec}


def _absolute_paths(cfg):
    def absolute(path: str | None) -> str | None:
        return None if path is None else str(Path(path).expanduser().resolve())

    inf, model = cfg.inference, cfg.model
    pretrained = model.pretrained
    if isinstance(pretrained, str) and Path(pretrained).expanduser().exists():
        pretrained = absolute(pretrained)
    return attrs.evolve(
        cfg, inference=attrs.evolve(inf, **{k: absolute(getattr(inf, k)) for k in ("checkpoint", "onnx_file", "trt_engine")}),
        model=attrs.evolve(model, pretrained=pretrained, tokenizer_path=absolute(model.tokenizer_path)))


# --------------------------------------------------------------------------- HDF5
COUNTS = {"image": "num_images", "text": "num_texts", "object": "num_objects"}
CHUNK_ROWS = 256
CHUNK_BYTES = 1 << 20
READ_BYTES = 256 << 20
CACHE_BYTES = 64 * 2**20
Columns = dict[str, Any]  # per-row values of a batch: a list of strings, or an array with one row per item


def write_embeddings(path: Path, kind: str, attributes: dict[str, Any],
                     batches: Iterator[tuple[Columns, torch.Tensor]], *, allow_empty: bool = False) -> int:
    """Stream ``(columns, embeddings)`` batches into ``path`` (a temporary file renamed into place
    when complete); returns the number of rows. ``kind`` is ``image``, ``text`` or ``object``;
    each column becomes a dataset beside ``embeddings`` (strings as UTF-8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    rows = 0
    try:
        with h5py.File(tmp, "w", rdcc_nbytes=CACHE_BYTES) as f:
            for columns, batch in batches:
                n = len(batch)
                if not n:
                    continue
                for name, values in {"embeddings": batch.numpy().astype(np.float32, copy=False), **columns}.items():
                    if name not in f:
                        _create_column(f, name, values)
                    f[name].resize(rows + n, axis=0)
                    f[name][rows:] = values
                rows += n
            if "embeddings" not in f and not allow_empty:
                raise DataError(f"no {kind} could be embedded, so {path.name} would be empty",
                                where={"image": "inference.datasets", "text": "inference.text_file"}.get(
                                    kind, "inference.detections"),
                                fix="see the skipped list for why each item was skipped")
            f.attrs.update({COUNTS[kind]: rows, "embedding_type": kind, **attributes})
            f.attrs["embedding_dim"] = f["embeddings"].shape[1] if "embeddings" in f else 0
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return rows


def _create_column(f: h5py.File, name: str, values: Any) -> None:
    """A growable dataset; float arrays are gzip-compressed in chunks of at most ``CHUNK_ROWS`` rows
    and about 1 MiB (one patch-feature map can be larger than a whole chunk of embeddings)."""
    if isinstance(values, list):
        f.create_dataset(name, shape=(0,), maxshape=(None,), chunks=(CHUNK_ROWS,), dtype=h5py.string_dtype("utf-8"))
        return
    values = np.asarray(values)
    row_bytes = values[0].nbytes if len(values) else values.itemsize
    rows = max(1, min(CHUNK_ROWS, CHUNK_BYTES // max(row_bytes, 1)))
    extra = {"compression": "gzip", "compression_opts": 4} if values.dtype.kind == "f" else {}
    f.create_dataset(name, shape=(0, *values.shape[1:]), maxshape=(None, *values.shape[1:]), dtype=values.dtype,
                     chunks=(rows, *values.shape[1:]), **extra)


def read_embedding_rows(path: Path) -> Iterator[tuple[Columns, torch.Tensor]]:
    """``(columns, embeddings)`` batches of an embedding file (none for an empty part), of up to
    ``CHUNK_ROWS * 16`` rows and about ``READ_BYTES`` (patch features make rows large)."""
    with h5py.File(path, "r") as f:
        if "embeddings" not in f:
            return
        names = [n for n in f if n != "embeddings"]
        row_bytes = sum(int(np.prod(f[n].shape[1:])) * f[n].dtype.itemsize for n in f if f[n].dtype.kind != "O")
        rows = max(1, min(CHUNK_ROWS * 16, READ_BYTES // max(row_bytes, 1)))
        for start in range(0, f["embeddings"].shape[0], rows):
            part = slice(start, start + rows)
            columns = {n: list(f[n].asstr()[part]) if f[n].dtype.kind == "O" else f[n][part] for n in names}
            yield columns, torch.from_numpy(f["embeddings"][part])


def _write_sharded(path: Path, kind: str, attributes: dict[str, Any], batches, world: World) -> tuple[Path, int | None]:
    """One process writes ``path``; several write one part each, and rank 0 joins them in rank order."""
    if world.size == 1:
        return path, write_embeddings(path, kind, attributes, batches)
    parts = [path.with_name(f".{path.stem}.rank{rank}.h5") for rank in range(world.size)]
    write_embeddings(parts[world.rank], kind, attributes, batches, allow_empty=True)
    torch.distributed.barrier()
    if not world.is_main:
        return path, None
    for part in parts:  # what a rank learnt while embedding (the patch grid), whichever rank embedded
        with h5py.File(part, "r") as f:
            attributes.update({k: v for k, v in f.attrs.items() if k.startswith("patch_")})
    rows = write_embeddings(path, kind, attributes, (b for part in parts for b in read_embedding_rows(part)))
    for part in parts:
        part.unlink()
    return path, rows


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
