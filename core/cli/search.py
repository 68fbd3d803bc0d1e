"""``core search``: exact nearest-neighbour search over the image or object embeddings of ``core inference``.

    core search --images results/inference/image_embeddings.h5 "a red car" "a dog on a beach" -k 10
    core search --images image_embeddings.h5 --image query.jpg -k 5
    core search --images object_embeddings.h5 "a red star" --object 12 -k 5

Over object embeddings (``object_embeddings.h5``) each hit shows its image, box, category and
instance; ``--object ROW`` queries with the object in that row (object to objects; the row itself
is left out of its results).

Queries are encoded with the model the embeddings came from, as recorded in the HDF5 file (its
``config`` attribute: model type, checkpoint or ONNX or engine file, tokenizer); ``-c spec`` and
``-o section.key=value`` replace or adjust that record. Scores are cosine similarities; every
image is scored (exact search), streaming the file in blocks. Equal scores rank by row order.

``--index DIR`` searches a FAISS index of ``core index build`` instead (text and image queries),
encoding queries with the model the index records; a spec or override naming another model is
refused with both names.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import h5py
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from core.errors import ClipcoreError, ConfigError, DataError
from core.eval.index import MODEL_KEYS, EmbeddingFile, describe, exact_top_k, open_embedding_file, open_index



def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("queries", nargs="*", metavar="TEXT", help="text queries")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", metavar="H5",
                        help="image_embeddings.h5 or object_embeddings.h5 written by `core inference` (exact search)")
    source.add_argument("--index", metavar="DIR", help="an index folder of `core index build` (FAISS)")
    parser.add_argument("--image", action="append", default=[], metavar="PATH",
                        help="an image query (image-to-image search); repeatable")
    parser.add_argument("--object", action="append", default=[], type=int, metavar="ROW",
                        help="the object in row ROW of an object_embeddings.h5 as the query; repeatable")
    parser.add_argument("-k", "--top_k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("-c", "--config", metavar="SPEC",
                        help="spec whose model and inference.checkpoint/onnx_file/trt_engine encode the queries "
                             "(default: the one recorded in the HDF5 file)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="section.key=value",
                        help="dotted override of that spec; repeatable")


def run(args: argparse.Namespace) -> None:
    if not args.queries and not args.image and not args.object:
        raise ClipcoreError("no query given", where="core search",
                            fix='pass text queries ("a red car"), --image path.jpg and/or --object ROW')
    if args.top_k < 1:
        raise ClipcoreError(f"-k must be >= 1, got {args.top_k}", where="-k")
    if args.index:
        return search_index(args)
    file = open_embedding_file(args.images, key="--images")
    path = file.path
    labels, parts = [], []
    if args.queries or args.image:
        cfg, encoder = query_encoder(path, file.config, args.config, args.override)
        labels, queries = encode_queries(encoder, args.queries, args.image, max_pixels=cfg.dataset.max_image_pixels)
        if queries.shape[1] != file.dim:
            raise ClipcoreError(f"the queries are {queries.shape[1]}-dimensional but {path} holds "
                                f"{file.dim}-dimensional embeddings", where="-c / model",
                                fix="encode queries with the model that wrote the file (drop -c and -o)")
        parts.append(queries)
    if args.object:
        object_labels, objects = object_queries(file, args.object)
        labels, parts = labels + object_labels, parts + [objects]
    exclude = [None] * (len(labels) - len(args.object)) + list(args.object)
    scores, rows = exact_top_k([file], torch.cat(parts).numpy(), args.top_k + bool(args.object))
    with h5py.File(path, "r") as f:
        columns = _result_columns(f)
        console = Console()
        for label, row_scores, row_index, own in zip(labels, scores, rows, exclude):
            table = Table(title=label, title_justify="left")
            table.add_column("rank", justify="right")
            table.add_column("score", justify="right")
            for name, _ in columns:
                table.add_column(name, overflow="fold")
            hits = [(s, int(i)) for s, i in zip(row_scores, row_index) if int(i) != own][:args.top_k]
            for rank, (score, index) in enumerate(hits, start=1):
                table.add_row(str(rank), f"{score:.4f}", *(cell(index) for _, cell in columns))
            console.print(table)


def search_index(args: argparse.Namespace) -> None:
    """``--index``: text / image queries, encoded as the index's embeddings were, over the index."""
    index = open_index(args.index)
    if args.object:
        raise ClipcoreError("--object works with --images (an object file), not --index", where="--object",
                            fix="search the object_embeddings.h5 with --images, or query the index with text / images")
    cfg, encoder = query_encoder(index.folder, index.meta["config"], args.config, args.override)
    ours = {k: v for k, v in encoder.source.items() if k in MODEL_KEYS and v}
    if not same_model(ours, index.meta["model"]):
        raise ClipcoreError(f"the index {index.folder} holds embeddings of {describe(index.meta['model'])}, but the "
                            f"queries would be encoded with {describe(ours)}", where="-c / -o",
                            fix="drop -c / -o (the index records its model), or build an index with this model")
    labels, queries = encode_queries(encoder, args.queries, args.image, max_pixels=cfg.dataset.max_image_pixels)
    scores, rows = index.search(queries.numpy(), args.top_k)
    console = Console()
    for label, row_scores, row_index in zip(labels, scores, rows):
        table = Table(title=label, title_justify="left")
        for name, justify in (("rank", "right"), ("score", "right"), ("image", "left"), ("row", "right")):
            table.add_column(name, justify=justify, overflow="fold")
        found = [(s, r) for s, r in zip(row_scores, row_index) if r >= 0]
        for rank, ((score, _), (_, row, image)) in enumerate(zip(found, index.hits([r for _, r in found])), 1):
            table.add_row(str(rank), f"{score:.4f}", image, str(row))
        console.print(table)


def same_model(a: dict[str, str], b: dict[str, str]) -> bool:
    """The same model type and weights (weight files compared by name: recorded paths may be relative)."""
    def key(record: dict[str, str]) -> dict[str, str]:
        return {k: Path(v).name if k != "model_type" else v for k, v in record.items()}
    return key(a) == key(b)


def object_queries(file: EmbeddingFile, rows: Sequence[int]) -> tuple[list[str], torch.Tensor]:
    """Labels and embeddings of the objects in ``rows`` of an object embedding file."""
    path = file.path
    if file.kind != "object":
        raise ClipcoreError("--object needs an object embedding file", where="--images",
                            fix="pass the object_embeddings.h5 that `core inference` writes from inference.detections")
    bad = [r for r in rows if not 0 <= r < file.rows]
    if bad:
        raise ClipcoreError(f"row {bad[0]} is not in {path} (rows 0..{file.rows - 1})", where="--object",
                            fix="pass a row index of the file")
    with h5py.File(path, "r") as f:
        names = f["image_paths"].asstr()
        labels = [f"object {r}: {names[r]} box {_box(f['boxes'][r])}" for r in rows]
        return labels, torch.from_numpy(np.stack([f["embeddings"][r] for r in rows]))


def _result_columns(f: h5py.File) -> list[tuple[str, Callable[[int], str]]]:
    """The columns a hit is shown with: its image, and for objects its box, category and instance."""
    names = f["image_paths"].asstr()
    columns: list[tuple[str, Callable[[int], str]]] = [("image", lambda i: names[i])]
    if f.attrs.get("embedding_type") == "object":
        categories = json.loads(f.attrs.get("categories", "{}"))
        columns += [("box", lambda i: _box(f["boxes"][i])),
                    ("category", lambda i: categories.get(str(f["category_ids"][i]), str(f["category_ids"][i]))),
                    ("instance", lambda i: str(f["instance_ids"][i]))]
    return columns


def _box(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def query_encoder(path: Path, recorded: str | None, config: str | None, overrides: Sequence[str]):
    """The spec ``config`` (else the ``recorded`` one of the file or index) with ``overrides``, and its encoder."""
    from core import spec
    from core.eval.embed import open_encoder

    if config is None and recorded is None:
        raise ClipcoreError(f"{path} does not record the model that wrote it (not written by clipcore?)",
                            where="--images", fix="pass the spec used for inference with -c spec.toml")
    if config is None:
        with tempfile.NamedTemporaryFile("w", suffix=".toml", encoding="utf-8") as f:
            f.write(recorded)
            f.flush()
            cfg = spec.load_config(f.name, overrides)
    else:
        cfg = spec.load_config(config, overrides)
    inf = cfg.inference
    if inf.checkpoint is None and inf.onnx_file is None and inf.trt_engine is None and cfg.model.pretrained is False:
        raise ConfigError("the embeddings come from a randomly initialised model (model.pretrained = false, no "
                          "inference.checkpoint), so queries cannot be encoded with the same weights",
                          where="inference.checkpoint",
                          fix="embed with a checkpoint or pretrained weights, or pass -o inference.checkpoint=...")
    device = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    return cfg, open_encoder(cfg, "inference", device)


def encode_queries(encoder, texts: Sequence[str], images: Sequence[str], *,
                   max_pixels: int) -> tuple[list[str], torch.Tensor]:
    """Labels and L2-normalised embeddings of the text queries, then the image queries."""
    from core.bad_samples import BadSample
    from core.eval.embed import path_loader

    parts, labels = [], []
    if texts:
        parts.append(encoder.encode_texts(list(texts)))
        labels += [f'"{t}"' for t in texts]
    if images:
        load = path_loader(images, encoder.transform, max_pixels=max_pixels)
        items = []
        for i, image in enumerate(images):
            try:
                items.append(load(i))
            except BadSample as bad:
                raise DataError(f"cannot read the query image ({bad})", where=str(image),
                                fix="pass a readable image file") from None
        parts.append(encoder.encode_images(items))
        labels += [f"image {p}" for p in images]
    return labels, torch.cat(parts)
