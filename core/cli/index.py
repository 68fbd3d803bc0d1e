"""``core index``: a FAISS vector index over the image or object embeddings of ``core inference``,
for ``core search --index``.

    core index build results/inference/image_embeddings.h5 --out results/index       # kind by size
    core index build a.h5 b.h5 --out idx --kind ivfpq --nlist 4096 --nprobe 32
    core index add results/index more_embeddings.h5                                    # append
    core index show results/index

``build`` picks flat (exact) below 50,000 rows, HNSW below 5 million, IVF-PQ beyond, or honours
``--kind``; IVF is trained on a seeded sample. The folder holds the index, its id map (file, row,
image path) and ``index.json`` with the model record of the embeddings; files of another model or
width are refused, naming both. ``build`` and ``add`` report recall@10 against exact search (200
queries drawn from the data) and queries per second. The layout is in :mod:`core.eval.index`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from core.errors import ClipcoreError
from core.eval.index import KINDS, IndexParams, add_to_index, build_index, open_embedding_file, open_index


def add_arguments(parser: argparse.ArgumentParser) -> None:
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)
    build = verbs.add_parser("build", help="build an index folder from embedding files")
    build.add_argument("embeddings", nargs="+", metavar="H5", help="image_embeddings.h5 / object_embeddings.h5 files")
    build.add_argument("--out", required=True, metavar="DIR", help="index folder to write")
    build.add_argument("--kind", choices=["auto", *KINDS], default="auto",
                       help="auto (default: flat < 50k rows, hnsw < 5M, ivfpq beyond) | flat | hnsw | ivfpq")
    defaults = IndexParams()
    for name, help_text in (("hnsw-m", "HNSW links per node"), ("ef-construction", "HNSW build breadth"),
                            ("ef-search", "HNSW search breadth"), ("nlist", "IVF lists (default about 4·√rows)"),
                            ("pq-m", "PQ sub-quantizers (default: the largest divisor of the width up to width/8)"),
                            ("nprobe", "IVF lists searched per query"),
                            ("k-factor", "IVF-PQ candidates re-ranked (8-bit vectors), × k"),
                            ("train-sample", "rows IVF-PQ is trained on"), ("seed", "seed of the training sample")):
        field = name.replace("-", "_")
        default = getattr(defaults, field)
        build.add_argument(f"--{name}", type=int, default=default, metavar="N",
                           help=help_text + ("" if default is None else f" (default {default})"))
    build.add_argument("--force", action="store_true", help="replace an existing index folder")
    add = verbs.add_parser("add", help="append embedding files to an index (same model and width)")
    add.add_argument("index", metavar="DIR", help="index folder")
    add.add_argument("embeddings", nargs="+", metavar="H5", help="embedding files to append")
    show = verbs.add_parser("show", help="print an index's kind, size, model and last measurement")
    show.add_argument("index", metavar="DIR", help="index folder")


def run(args: argparse.Namespace) -> None:
    console = Console(stderr=True)
    if args.verb == "show":
        meta = open_index(args.index).meta
        print(json.dumps({k: v for k, v in meta.items() if k != "config"}, indent=2))
        return
    paths = list(args.embeddings)
    total = sum(open_embedding_file(p, key="--embeddings").rows for p in paths)
    with _progress(console, total) as advance:
        if args.verb == "build":
            params = IndexParams(kind=args.kind, **{k: getattr(args, k) for k in (
                "hnsw_m", "ef_construction", "ef_search", "nlist", "pq_m", "nprobe", "k_factor", "train_sample",
                "seed")})
            for name in ("hnsw_m", "ef_construction", "ef_search", "nprobe", "k_factor", "train_sample"):
                if getattr(params, name) < 1:
                    raise ClipcoreError(f"--{name.replace('_', '-')} must be at least 1", where="core index build")
            meta = build_index(paths, Path(args.out), params, force=args.force, progress=advance)
            folder = Path(args.out)
        else:
            meta = add_to_index(args.index, paths, progress=advance)
            folder = Path(args.index)
    measured = meta["measured"]
    console.print(f"{folder}: {meta['kind']} index of {meta['count']:,} {meta['embedding_type']} embeddings "
                  f"({meta['dim']}-d; {json.dumps(meta['params'])}); recall@10 {measured['recall@10']:.3f} against "
                  f"exact search, {measured['queries_per_s']:,.0f} queries/s", markup=False)


def _progress(console: Console, total: int):
    import contextlib

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    @contextlib.contextmanager
    def bar():
        with Progress(TextColumn("indexing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("index", total=total)
            yield lambda n: progress.advance(task, n)
    return bar()
