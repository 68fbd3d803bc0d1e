"""Vector indexes against exact search: build time, memory, queries per second and recall@10 of
each `core index` kind on a million synthetic embeddings, against today's exact streaming search.

    python bench/bench_index.py --work /tmp/index                      # 1,000,000 × 768, 5 rounds
    python bench/bench_index.py --work /tmp/index --rows 100000        # a quick look

Data (seeded, written once): unit vectors with the structure CLIP embeddings have, clusters on a
low-dimensional manifold (their intrinsic dimension is estimated at a few tens): 2,000 cluster
centres in a 64-dimensional latent space, each point a centre plus Gaussian spread, mapped into
``--dim`` dimensions by a fixed random projection, plus 10 % isotropic noise, normalised; in
``core inference``'s HDF5 layout (gzip, as inference writes it). Queries are ``--queries`` new
points from the same distribution.

Each index is built once with ``core index``'s code (``core.eval.index.build_index``): its build
time is one measurement, its memory the size of the serialized index (what FAISS holds in RAM).
Recall@10 is against the exact top 10 of every query. Speed follows ``bench/protocol.py``: the
exact search (``core search --images``'s code: the HDF5 file streamed block by block, one matrix
product per block) and each index at each operating point search the same query batch in
alternating rounds; the figure is queries per second, and its ratio to exact search per round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import protocol

CENTERS, LATENT, SPREAD, NOISE = 2000, 64, 0.5, 0.1
#: Operating points searched (ef_search for HNSW, nprobe for IVF-PQ).
POINTS = {"hnsw": [16, 32, 64, 128], "ivfpq": [8, 16, 32, 64]}
BUILD = {"flat": {}, "hnsw": {"hnsw_m": 32, "ef_construction": 40}, "ivfpq": {"k_factor": 8}}


def points(rng: np.random.Generator, space: tuple[np.ndarray, np.ndarray], n: int) -> np.ndarray:
    centers, projection = space
    z = centers[rng.integers(0, len(centers), n)] + SPREAD * rng.normal(size=(n, LATENT))
    x = z @ projection
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    x += NOISE * rng.normal(size=x.shape) / np.sqrt(x.shape[1])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def prepare(work: Path, rows: int, dim: int, queries: int) -> tuple[Path, np.ndarray]:
    import torch

    from core.cli.inference import write_embeddings

    rng = np.random.default_rng(0)
    centers = (rng.normal(size=(CENTERS, LATENT)), rng.normal(size=(LATENT, dim)) / np.sqrt(LATENT))
    path = work / f"embeddings_{rows}x{dim}.h5"
    if not path.is_file():
        def batches():
            made = 0
            while made < rows:
                n = min(65536, rows - made)
                yield {"image_paths": [f"img_{i:08d}.jpg" for i in range(made, made + n)]}, \
                    torch.from_numpy(points(rng, centers, n))
                made += n
        write_embeddings(path, "image", {"model_type": "synthetic", "config": ""}, batches())
    return path, points(np.random.default_rng(1), centers, queries)


def build(work: Path, path: Path, kind: str, rows: int) -> tuple[object, dict]:
    from core.eval.index import IndexParams, build_index, open_index

    out = work / f"index_{kind}_{rows}"
    if not (out / "index.json").is_file():
        print(f"building {kind} ...", file=sys.stderr)
        build_index([path], out, IndexParams(kind=kind, **BUILD[kind]), force=True)
    index = open_index(out)
    return index, {"build_s": index.meta["build_seconds"], "mb": (out / "index.faiss").stat().st_size / 2**20}


def set_point(index, kind: str, value: int) -> None:
    import faiss

    if kind == "hnsw":
        index.faiss_index.hnsw.efSearch = value
    elif kind == "ivfpq":
        faiss.extract_index_ivf(index.faiss_index).nprobe = value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="work folder (kept: a second run reuses data and indexes)")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--queries", type=int, default=1000)
    protocol.add_arguments(parser)
    args = parser.parse_args()
    rounds = protocol.Rounds.from_args(args)
    from core.eval.index import exact_top_k, open_embedding_file

    args.work.mkdir(parents=True, exist_ok=True)
    path, queries = prepare(args.work, args.rows, args.dim, args.queries)
    file = open_embedding_file(path, key="--embeddings")
    truth_file = args.work / f"truth_{args.rows}x{args.dim}_{args.queries}.npy"
    if not truth_file.is_file():
        np.save(truth_file, exact_top_k([file], queries, 10)[1])
    truth = np.load(truth_file)
    built = {kind: build(args.work, path, kind, args.rows) for kind in BUILD}

    def recall(found: np.ndarray) -> float:
        return float(np.mean([len(set(g) & set(w)) / 10 for g, w in zip(found.tolist(), truth.tolist())]))

    recalls: dict[str, float] = {}

    def timed(name: str, search) -> None:
        def variant() -> dict[str, float]:
            start = time.perf_counter()
            found = search()
            seconds = time.perf_counter() - start
            recalls[name] = recall(found)
            return {"qps": len(queries) / seconds}
        variants[name] = variant

    variants: dict = {}
    timed("exact (streaming HDF5)", lambda: exact_top_k([file], queries, 10)[1])
    timed("flat", lambda: built["flat"][0].search(queries, 10)[1])
    for kind, values in POINTS.items():
        for value in values:
            index = built[kind][0]
            timed(f"{kind} {value}", lambda index=index, kind=kind, value=value: (
                set_point(index, kind, value), index.search(queries, 10)[1])[1])
    rounds.run(variants)

    base = "exact (streaming HDF5)"
    lines = [f"{args.rows:,} × {args.dim} embeddings, {args.queries:,} queries, k = 10", "",
             "| search | build | memory | queries/s | × exact | recall@10 |", "|---|---|---|---|---|---|"]
    for name in variants:
        kind = name.split()[0]
        info = built.get(kind, (None, {}))[1]
        build_cell = f"{info['build_s']:.0f} s" if info else "none"
        memory = f"{info['mb']:,.0f} MB" if info else f"{path.stat().st_size / 2**20:,.0f} MB file"
        ratio = "1" if name == base else str(rounds.ratio(name, base, "qps"))
        lines.append(f"| {name} | {build_cell} | {memory} | {statistics.median(rounds.values(name, 'qps')):,.0f} | "
                     f"{ratio} | {recalls[name]:.3f} |")
    lines += ["", "hnsw N: efSearch = N (M = 32, efConstruction = 40); ivfpq N: nprobe = N (4·√rows lists, PQ(dim/8)x8, "
              "8 × k candidates re-ranked with SQ8)", "", rounds.footer()]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
