"""Vector indexes (FAISS) over the image or object embeddings of ``core inference``, and the exact
search they are measured against.

An index folder holds:

- ``index.faiss``: the FAISS index; inner product on L2-normalised embeddings (cosine);
- ``ids.h5``: the id map, one row per index row: ``source`` (an index into the ``sources``
  attribute: the embedding files, absolute paths), ``row`` (the row in that file) and
  ``image_paths``;
- ``index.json``: ``kind``, its parameters, ``dim``, ``count``, ``sources``, ``model`` (the model
  record of the embeddings: type and weights, which every added file and every query encoder must
  share), ``config`` (the spec the embeddings were computed with, to encode queries alike) and
  ``measured`` (recall@10 against exact search and queries per second, at the last build or add).

Kinds: ``flat`` (exact: ``IndexFlatIP``), ``hnsw`` (``IndexHNSWFlat``: ``hnsw_m`` links,
``ef_construction``, ``ef_search``), ``ivfpq`` (``IVF{nlist},PQ{pq_m}x8`` trained on a seeded
sample of ``train_sample`` rows, searching ``nprobe`` lists, the ``k_factor`` × k best candidates
re-ranked with 8-bit scalar-quantized vectors: ``Refine(SQ8)``, a quarter of the float32 size). ``auto`` picks flat below ``FLAT_BELOW`` rows, HNSW below
``HNSW_BELOW``, IVF-PQ beyond. Written files are replaced atomically.

With a GPU build of FAISS (``faiss-gpu``) and GPUs visible, IVF's k-means runs on every GPU, and a
flat index searches on them; HNSW and IVF-PQ with re-ranking search on the CPU (FAISS has no GPU
form of them). ``faiss-cpu`` sees no GPUs and uses none.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import attrs
import h5py
import numpy as np

from core.errors import ClipcoreError, DataError

KINDS = ("flat", "hnsw", "ivfpq")
FLAT_BELOW, HNSW_BELOW = 50_000, 5_000_000
MODEL_KEYS = ("model_type", "checkpoint", "onnx_file", "trt_engine", "pretrained")
INDEX_FILE, IDS_FILE, META_FILE = "index.faiss", "ids.h5", "index.json"
BLOCK_ROWS = 65536
RECALL_K, RECALL_QUERIES = 10, 200


@attrs.frozen(kw_only=True)
class IndexParams:
    """How an index is built and searched (``None``: chosen from the data's size and width)."""

    kind: str = "auto"
    hnsw_m: int = 32
    ef_construction: int = 80
    ef_search: int = 128
    nlist: int | None = None       # IVF lists; None: about 4·√rows
    pq_m: int | None = None        # PQ sub-quantizers; None: the largest divisor of dim up to dim / 8
    nprobe: int = 32
    k_factor: int = 4
    train_sample: int = 100_000
    seed: int = 0


# --------------------------------------------------------------------------- embedding files
@attrs.frozen
class EmbeddingFile:
    path: Path
    rows: int
    dim: int
    kind: str
    model: dict[str, str]
    config: str | None


def open_embedding_file(path: str | Path, *, key: str) -> EmbeddingFile:
    """The header of an image or object embedding file of ``core inference``, checked."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise DataError(f"{file} does not exist", where=key, fix="run `core inference` first and pass its "
                                                                 "image_embeddings.h5 or object_embeddings.h5")
    try:
        with h5py.File(file, "r") as f:
            kind = f.attrs.get("embedding_type")
            if kind not in ("image", "object") or "embeddings" not in f or "image_paths" not in f:
                raise DataError(f"{file} is not an image or object embedding file (embedding_type {kind!r})",
                                where=key, fix="pass an image_embeddings.h5 or object_embeddings.h5 of `core inference`")
            rows, dim = f["embeddings"].shape
            model = {k: str(f.attrs[k]) for k in MODEL_KEYS if k in f.attrs and str(f.attrs[k])}
            config = f.attrs.get("config")
    except OSError as exc:
        raise DataError(f"cannot read {file}: {exc}", where=key, fix="pass an HDF5 file of `core inference`") from None
    return EmbeddingFile(file, rows, dim, kind, model, config)


def describe(model: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in model.items()) or "an unrecorded model"


def blocks(files: Sequence[EmbeddingFile], rows: int = BLOCK_ROWS) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(file number, first row, float32 block)`` over the files in order."""
    for number, file in enumerate(files):
        with h5py.File(file.path, "r") as f:
            data = f["embeddings"]
            for start in range(0, file.rows, rows):
                yield number, start, np.ascontiguousarray(data[start:start + rows], dtype=np.float32)


def exact_top_k(files: Sequence[EmbeddingFile], queries: np.ndarray, k: int,
                block_rows: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray]:
    """Scores and global row numbers (rows of the files one after another) of the ``k`` best rows
    per query, scanning every embedding (ties: lower row first)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best_scores = np.empty((len(q), 0), np.float32)
    best_rows = np.empty((len(q), 0), np.int64)
    offset = [0]
    for file in files:
        offset.append(offset[-1] + file.rows)
    for number, start, block in blocks(files, block_rows):
        first = offset[number] + start
        scores = np.concatenate([best_scores, q @ block.T], axis=1)
        rows = np.concatenate([best_rows, np.broadcast_to(np.arange(first, first + len(block)), (len(q), len(block)))],
                              axis=1)
        order = _k_best(scores, rows, k)
        best_scores, best_rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
    return best_scores, best_rows


def _k_best(scores: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the ``k`` best per row, by descending score then ascending row: a partial
    selection, with the rows whose k-th score is tied resolved exactly."""
    if scores.shape[1] > k:
        order = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(scores, order, 1).min(axis=1)
        for r in np.flatnonzero((scores >= kth[:, None]).sum(axis=1) > k):
            tied = np.flatnonzero(scores[r] >= kth[r])
            order[r] = tied[np.lexsort((rows[r, tied], -scores[r, tied]))][:k]
    else:
        order = np.broadcast_to(np.arange(scores.shape[1]), scores.shape)
    chosen_scores, chosen_rows = np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1)
    return np.take_along_axis(order, np.lexsort((chosen_rows, -chosen_scores), axis=-1), 1)


# --------------------------------------------------------------------------- building
def choose_kind(rows: int, kind: str) -> str:
    if kind != "auto":
        return kind
    return "flat" if rows < FLAT_BELOW else "hnsw" if rows < HNSW_BELOW else "ivfpq"


def _pq_m(dim: int) -> int:
    return max(m for m in range(1, max(1, dim // 8) + 1) if dim % m == 0)


def new_index(kind: str, dim: int, rows: int, params: IndexParams) -> tuple[Any, dict[str, Any]]:
    """An empty FAISS index of ``kind`` and the parameters it was made with."""
    import faiss

    if kind == "flat":
        return faiss.IndexFlatIP(dim), {}
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, params.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = params.ef_construction
        index.hnsw.efSearch = params.ef_search
        return index, {"hnsw_m": params.hnsw_m, "ef_construction": params.ef_construction, "ef_search": params.ef_search}
    nlist = params.nlist or max(1, min(65536, int(4 * math.sqrt(max(rows, 1)))))
    pq_m = params.pq_m or _pq_m(dim)
    if dim % pq_m:
        raise ClipcoreError(f"--pq-m {pq_m} does not divide the embedding width {dim}", where="--pq-m",
                            fix=f"choose a divisor of {dim} (e.g. {_pq_m(dim)})")
    index = faiss.index_factory(dim, f"IVF{nlist},PQ{pq_m}x8,Refine(SQ8)", faiss.METRIC_INNER_PRODUCT)
    index.k_factor = params.k_factor
    ivf = faiss.extract_index_ivf(index)
    ivf.nprobe = params.nprobe
    if gpu_count():
        ivf.clustering_index = faiss.index_cpu_to_all_gpus(faiss.IndexFlatIP(dim))
    return index, {"nlist": nlist, "pq_m": pq_m, "nprobe": params.nprobe, "k_factor": params.k_factor,
                   "train_sample": params.train_sample}


def gpu_count() -> int:
    """GPUs a GPU build of FAISS sees (0 with ``faiss-cpu``)."""
    import faiss

    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def train_sample(files: Sequence[EmbeddingFile], size: int, seed: int) -> np.ndarray:
    """A seeded uniform sample of ``size`` rows over the files (all rows when fewer)."""
    total = sum(f.rows for f in files)
    chosen = np.sort(np.random.default_rng(seed).choice(total, size=min(size, total), replace=False))
    parts, first = [], 0
    for file in files:
        mine = chosen[(chosen >= first) & (chosen < first + file.rows)] - first
        if len(mine):
            with h5py.File(file.path, "r") as f:
                parts.append(f["embeddings"][mine].astype(np.float32))
        first += file.rows
    return np.concatenate(parts)


def _check_files(files: Sequence[EmbeddingFile], model: dict[str, str], dim: int, where: str) -> None:
    for file in files:
        if file.dim != dim:
            raise DataError(f"{file.path} holds {file.dim}-dimensional embeddings, the index {dim}-dimensional ones",
                            where=where, fix="index embeddings of one model only")
        if file.model != model:
            raise DataError(f"{file.path} was embedded with {describe(file.model)}; the index holds embeddings of "
                            f"{describe(model)}", where=where,
                            fix="embed the images with the index's model (or build another index)")


Progress = Callable[[int], None]


def _fill(index: Any, files: Sequence[EmbeddingFile], ids: h5py.File, sources: list[str], progress: Progress) -> None:
    """Add every row of ``files`` to ``index`` and its id-map rows to ``ids``."""
    for file in files:
        number = len(sources)
        sources.append(str(file.path))
        with h5py.File(file.path, "r") as f:
            paths = f["image_paths"]
            for start in range(0, file.rows, BLOCK_ROWS):
                block = np.ascontiguousarray(f["embeddings"][start:start + BLOCK_ROWS], dtype=np.float32)
                index.add(block)
                n, have = len(block), ids["row"].shape[0]
                for name, values in (("source", np.full(n, number, np.int32)),
                                     ("row", np.arange(start, start + n, dtype=np.int64)),
                                     ("image_paths", paths.asstr()[start:start + n])):
                    ids[name].resize(have + n, axis=0)
                    ids[name][have:] = values
                progress(n)


def _new_ids(path: Path) -> h5py.File:
    f = h5py.File(path, "w")
    f.create_dataset("source", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(BLOCK_ROWS,))
    f.create_dataset("row", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(BLOCK_ROWS,))
    f.create_dataset("image_paths", shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"),
                     chunks=(BLOCK_ROWS,))
    return f


def build_index(paths: Sequence[str | Path], out: Path, params: IndexParams, *, force: bool = False,
                progress: Progress = lambda n: None) -> dict[str, Any]:
    """Build an index folder ``out`` from embedding files (module doc); returns its ``index.json``."""
    import faiss

    files = [open_embedding_file(p, key="--embeddings") for p in paths]
    first = files[0]
    _check_files(files[1:], first.model, first.dim, "--embeddings")
    if out.exists() and not force:
        raise ClipcoreError(f"{out} already exists", where="--out", fix="choose another folder, pass --force to "
                                                                        "replace it, or `core index add` to it")
    rows = sum(f.rows for f in files)
    kind = choose_kind(rows, params.kind)
    index, chosen = new_index(kind, first.dim, rows, params)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        start = time.perf_counter()
        if not index.is_trained:
            index.train(train_sample(files, params.train_sample, params.seed))
        sources: list[str] = []
        with _new_ids(tmp / IDS_FILE) as ids:
            _fill(index, files, ids, sources, progress)
            ids.attrs["sources"] = json.dumps(sources)
        seconds = time.perf_counter() - start
        faiss.write_index(index, str(tmp / INDEX_FILE))
        meta = {"kind": kind, "params": chosen, "dim": first.dim, "count": int(index.ntotal), "sources": sources,
                "model": first.model, "config": first.config, "embedding_type": first.kind,
                "build_seconds": round(seconds, 3),
                "measured": measure(index, files, seed=params.seed)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


# --------------------------------------------------------------------------- using
@attrs.frozen
class Index:
    folder: Path
    faiss_index: Any
    meta: dict[str, Any]

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and index rows of the ``k`` best per query (row -1: fewer than k found)."""
        if queries.shape[1] != self.meta["dim"]:
            raise ClipcoreError(f"the queries are {queries.shape[1]}-dimensional, the index {self.folder} holds "
                                f"{self.meta['dim']}-dimensional embeddings", where="--index",
                                fix="encode queries with the index's model")
        return self.faiss_index.search(np.ascontiguousarray(queries, dtype=np.float32), k)

    def hits(self, rows: np.ndarray) -> list[tuple[str, int, str]]:
        """``(embedding file, row in it, image path)`` of index rows."""
        sources = self.meta["sources"]
        with h5py.File(self.folder / IDS_FILE, "r") as ids:
            return [(sources[int(ids["source"][r])], int(ids["row"][r]), ids["image_paths"].asstr()[r])
                    for r in rows]


def open_index(folder: str | Path, *, key: str = "--index", for_search: bool = True) -> Index:
    """The index in ``folder``; ``for_search``: a flat index moves to the GPUs where there are any."""
    import faiss

    path = Path(folder).expanduser()
    meta_file = path / META_FILE
    if not meta_file.is_file() or not (path / INDEX_FILE).is_file():
        raise DataError(f"{path} is not an index folder (no {META_FILE} / {INDEX_FILE})", where=key,
                        fix="pass a folder written by `core index build`")
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    index = faiss.read_index(str(path / INDEX_FILE))
    if for_search and meta["kind"] == "flat" and gpu_count():
        index = faiss.index_cpu_to_all_gpus(index)
    return Index(path, index, meta)


def add_to_index(folder: str | Path, paths: Sequence[str | Path], *, progress: Progress = lambda n: None) -> dict:
    """Append embedding files to an index (same model and width); the folder is rewritten atomically."""
    import faiss

    index = open_index(folder, for_search=False)
    files = [open_embedding_file(p, key="--embeddings") for p in paths]
    _check_files(files, index.meta["model"], index.meta["dim"], "--embeddings")
    tmp = index.folder.with_name(f".{index.folder.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(index.folder, tmp)
    try:
        sources = list(index.meta["sources"])
        with h5py.File(tmp / IDS_FILE, "a") as ids:
            _fill(index.faiss_index, files, ids, sources, progress)
            ids.attrs["sources"] = json.dumps(sources)
        faiss.write_index(index.faiss_index, str(tmp / INDEX_FILE))
        all_files = [open_embedding_file(p, key="index.json sources") for p in sources]
        meta = {**index.meta, "count": int(index.faiss_index.ntotal), "sources": sources,
                "measured": measure(index.faiss_index, all_files)}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        old = index.folder.with_name(f".{index.folder.name}.{os.getpid()}.old")
        os.replace(index.folder, old)
        os.replace(tmp, index.folder)
        shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta


def measure(index: Any, files: Sequence[EmbeddingFile], *, queries: int = RECALL_QUERIES, seed: int = 0,
            k: int = RECALL_K) -> dict[str, float]:
    """Recall@k of ``index`` against exact search, for ``queries`` rows drawn from the data
    (seeded), and the index's queries per second on them (one batch)."""
    q = train_sample(files, queries, seed + 1)
    _, want = exact_top_k(files, q, k)
    start = time.perf_counter()
    _, got = index.search(q, k)
    seconds = time.perf_counter() - start
    recall = float(np.mean([len(set(g) & set(w)) / len(w) for g, w in zip(got.tolist(), want.tolist())]))
    return {f"recall@{k}": round(recall, 4), "queries": len(q), "queries_per_s": round(len(q) / max(seconds, 1e-9), 1)}
