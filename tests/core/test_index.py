"""`core index` (FAISS) and `core search --index`: each kind against exact search, the id map, the
model record, appending, and the refusals (another model, another width)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.cli.inference import write_embeddings
from core.cli.main import main
from core.eval.index import FLAT_BELOW, HNSW_BELOW, choose_kind, open_index

MODEL = {"model_type": "color-clip", "checkpoint": "/w/best.pth"}


def clustered(n: int, dim: int, seed: int, centers: int = 20) -> np.ndarray:
    """Unit vectors around a few random directions (the shape real embeddings have)."""
    rng = np.random.default_rng(seed)
    middle = rng.normal(size=(centers, dim))
    x = middle[rng.integers(0, centers, n)] + 0.6 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def embedding_file(path: Path, vectors: np.ndarray, model: dict[str, str] = MODEL, prefix: str = "img") -> Path:
    names = [f"/data/{prefix}_{i:05d}.jpg" for i in range(len(vectors))]
    write_embeddings(path, "image", {**model, "config": "[model]\ntype = \"color-clip\"\n"},
                     iter([({"image_paths": names}, torch.from_numpy(vectors))]))
    return path


@pytest.mark.parametrize("kind, extra, least", [("flat", [], 1.0), ("hnsw", [], 0.95),
                                                ("ivfpq", ["--nlist", "16", "--nprobe", "8", "--pq-m", "8"], 0.9)])
def test_each_kind_against_exact_search(kind, extra, least, tmp_path, capsys):
    vectors = clustered(3000, 32, 0)
    h5 = embedding_file(tmp_path / "e.h5", vectors)
    assert main(["index", "build", str(h5), "--out", str(tmp_path / "idx"), "--kind", kind, *extra]) == 0
    assert f"{kind} index of 3,000 image embeddings" in " ".join(capsys.readouterr().err.split())
    index = open_index(tmp_path / "idx")
    meta = index.meta
    assert (meta["kind"], meta["count"], meta["dim"], meta["model"]) == (kind, 3000, 32, MODEL)
    assert meta["measured"]["recall@10"] >= least and meta["measured"]["queries_per_s"] > 0
    queries = clustered(50, 32, 1)
    _, got = index.search(queries, 10)
    want = np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :10]
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got.tolist(), want.tolist())])
    assert recall >= least
    assert index.hits(want[0][:2]) == [(str(h5.resolve()), int(r), f"/data/img_{r:05d}.jpg") for r in want[0][:2]]


def test_auto_kind_by_size():
    assert [choose_kind(n, "auto") for n in (10, FLAT_BELOW, HNSW_BELOW)] == ["flat", "hnsw", "ivfpq"]
    assert choose_kind(10, "ivfpq") == "ivfpq"


def test_add_appends_and_refuses_another_model_or_width(tmp_path, capsys):
    first, second = clustered(500, 16, 0), clustered(300, 16, 1)
    a = embedding_file(tmp_path / "a.h5", first)
    b = embedding_file(tmp_path / "b.h5", second, prefix="new")
    assert main(["index", "build", str(a), "--out", str(tmp_path / "idx")]) == 0
    assert main(["index", "add", str(tmp_path / "idx"), str(b)]) == 0
    index = open_index(tmp_path / "idx")
    assert index.meta["count"] == 800 and index.meta["sources"] == [str(a.resolve()), str(b.resolve())]
    _, rows = index.search(second[7:8], 1)
    assert index.hits(rows[0]) == [(str(b.resolve()), 7, "/data/new_00007.jpg")]
    assert not list(tmp_path.glob(".idx*"))  # the rewrite left nothing behind
    capsys.readouterr()

    other = embedding_file(tmp_path / "other.h5", second, {"model_type": "example-tiny", "checkpoint": "/w/x.pth"})
    assert main(["index", "add", str(tmp_path / "idx"), str(other)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "was embedded with model_type example-tiny, checkpoint /w/x.pth; the index holds embeddings of " \
           "model_type color-clip, checkpoint /w/best.pth" in err
    wide = embedding_file(tmp_path / "wide.h5", clustered(10, 8, 2))
    assert main(["index", "add", str(tmp_path / "idx"), str(wide)]) == 2
    assert "holds 8-dimensional embeddings, the index 16-dimensional ones" in capsys.readouterr().err
    assert open_index(tmp_path / "idx").meta["count"] == 800   # refused adds change nothing
    assert main(["index", "build", str(a), "--out", str(tmp_path / "idx")]) == 2
    assert "already exists" in capsys.readouterr().err


# --------------------------------------------------------------------------- core search --index
@pytest.fixture(scope="module")
def embedded(tmp_path_factory, color_clip) -> Path:
    tmp = tmp_path_factory.mktemp("indexed")
    for i, color in enumerate(["red", "green", "blue", "yellow", "red", "blue"]):
        color_clip.image(tmp / "images" / f"{i}_{color}.png", color)
    spec = color_clip.write_spec(tmp / "clip.toml", tmp / "results",
                                 f'[[inference.datasets]]\nimage_dir = "{tmp / "images"}"\n')
    assert main(["inference", "-c", str(spec)]) == 0
    return tmp / "results" / "inference" / "image_embeddings.h5"


def test_search_index_matches_exact_search_and_refuses_another_model(embedded, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    assert main(["index", "build", str(embedded), "--out", str(tmp_path / "idx")]) == 0
    capsys.readouterr()
    assert main(["search", "--index", str(tmp_path / "idx"), "a red car", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "0_red.png" in out and "4_red.png" in out and "1.0000" in out
    assert json.loads((tmp_path / "idx" / "index.json").read_text())["model"]["model_type"] == "color-clip"

    meta_file = tmp_path / "idx" / "index.json"   # an index of another model's embeddings
    meta = json.loads(meta_file.read_text())
    meta["model"] = {"model_type": "example-tiny", "checkpoint": "/w/tiny.pth"}
    meta_file.write_text(json.dumps(meta))
    code = main(["search", "--index", str(tmp_path / "idx"), "red"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "holds embeddings of model_type example-tiny, checkpoint /w/tiny.pth, but the queries " \
                         "would be encoded with model_type color-clip" in err
    code = main(["search", "--index", str(tmp_path), "red"])
    assert code == 2 and "is not an index folder" in capsys.readouterr().err


def test_exact_search_selects_like_a_full_sort_with_ties(tmp_path):
    from core.eval.index import EmbeddingFile, exact_top_k

    vectors = np.repeat(clustered(40, 8, 3), 3, axis=0)          # every vector three times: ties everywhere
    path = embedding_file(tmp_path / "t.h5", vectors)
    queries = vectors[[0, 5, 77]]
    scores, rows = exact_top_k([EmbeddingFile(path, 120, 8, "image", {}, None)], queries, 7, block_rows=16)
    full = queries @ vectors.T
    want = np.lexsort((np.broadcast_to(np.arange(120), full.shape), -full), axis=-1)[:, :7]
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(__import__("core.eval.index", fromlist=["gpu_count"]).gpu_count() == 0,
                    reason="needs a GPU build of FAISS (faiss-gpu) and a GPU")
@pytest.mark.parametrize("kind, extra", [("flat", []), ("ivfpq", ["--nlist", "16", "--nprobe", "16", "--pq-m", "8"])])
def test_gpu_faiss_searches_like_the_cpu(kind, extra, tmp_path):
    import faiss

    vectors = clustered(3000, 32, 0)
    h5 = embedding_file(tmp_path / "e.h5", vectors)
    assert main(["index", "build", str(h5), "--out", str(tmp_path / "idx"), "--kind", kind, *extra]) == 0
    on_gpus = open_index(tmp_path / "idx")
    assert ("Gpu" in type(on_gpus.faiss_index).__name__ or "Shards" in type(on_gpus.faiss_index).__name__) == (
        kind == "flat")
    queries = clustered(50, 32, 1)
    _, got = on_gpus.search(queries, 10)
    _, want = faiss.read_index(str(tmp_path / "idx" / "index.faiss")).search(queries, 10)
    assert np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got.tolist(), want.tolist())]) >= 0.98
