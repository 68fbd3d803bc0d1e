"""Re-identification metrics: CMC rank-k and mAP of query objects against a gallery.

Inputs are L2-normalised object embeddings with instance ids (``object_embeddings.h5`` of
``core inference``); the score is the cosine similarity. For each query, the gallery is ranked
by descending score (equal scores keep gallery order). Before ranking, these gallery items are
removed (the "junk" of the Market-1501 protocol):

- the query itself, when query and gallery are one set (leave-one-out);
- items of the query's instance seen by the same camera, when both cameras are known;
- items of the query's instance in the same frame, when both frames are known.

A query's positives are the remaining items of its instance. Queries with an unknown instance
(-1) or without any positive left are not scored (counted in ``queries_without_match``).

- ``rank-k`` (CMC): the share of scored queries whose first positive ranks within the top k;
- ``mAP``: the mean over scored queries of AP = the mean over the query's positives of the
  precision at each positive's rank (torchreid's and Market-1501's non-interpolated AP).

Queries are scored in chunks of ``chunk_bytes``; the query × gallery matrix never exists whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import h5py
import numpy as np
import torch

from core.errors import DataError

KS = (1, 5, 10)
DEFAULT_CHUNK_BYTES = 256 * 2**20
UNKNOWN = -1


def reid_metrics(query: torch.Tensor, query_ids: np.ndarray, gallery: torch.Tensor | None = None,
                 gallery_ids: np.ndarray | None = None, *, query_cameras: np.ndarray | None = None,
                 gallery_cameras: np.ndarray | None = None, query_frames: np.ndarray | None = None,
                 gallery_frames: np.ndarray | None = None, ks: Sequence[int] = KS,
                 chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> dict[str, float]:
    """``rank-{k}`` and ``mAP`` (module doc), plus ``queries`` and ``queries_without_match``.
    Without a gallery, every query is matched against all the others."""
    same_set = gallery is None
    if same_set:
        gallery, gallery_ids, gallery_cameras, gallery_frames = query, query_ids, query_cameras, query_frames
    q_ids, g_ids = np.asarray(query_ids, np.int64), np.asarray(gallery_ids, np.int64)
    q_cams, g_cams = _or_unknown(query_cameras, len(q_ids)), _or_unknown(gallery_cameras, len(g_ids))
    q_frames, g_frames = _or_unknown(query_frames, len(q_ids)), _or_unknown(gallery_frames, len(g_ids))
    query, gallery = torch.as_tensor(query).float(), torch.as_tensor(gallery).float()
    first_hits, aps, unmatched = [], [], 0
    rows = max(1, chunk_bytes // (8 * max(1, len(g_ids))))
    for start in range(0, len(q_ids), rows):
        stop = min(start + rows, len(q_ids))
        scores = (query[start:stop] @ gallery.T).numpy()
        for r, q in enumerate(range(start, stop)):
            if q_ids[q] == UNKNOWN:
                unmatched += 1
                continue
            same = g_ids == q_ids[q]
            junk = same & (((g_cams == q_cams[q]) & (q_cams[q] != UNKNOWN))
                           | ((g_frames == q_frames[q]) & (q_frames[q] != UNKNOWN)))
            if same_set:
                junk[q] = True
            keep = ~junk
            order = np.argsort(-scores[r][keep], kind="stable")
            hits = same[keep][order]
            if not hits.any():
                unmatched += 1
                continue
            ranks = np.flatnonzero(hits) + 1          # 1-based ranks of the positives
            first_hits.append(ranks[0])
            aps.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
    first = np.asarray(first_hits)
    out = {f"rank-{k}": float(np.mean(first <= k)) if len(first) else float("nan") for k in ks}
    out["mAP"] = float(np.mean(aps)) if aps else float("nan")
    out["queries"], out["queries_without_match"] = len(first_hits), unmatched
    return out


def _or_unknown(values: np.ndarray | None, length: int) -> np.ndarray:
    return np.full(length, UNKNOWN, np.int64) if values is None else np.asarray(values, np.int64)


def reid_results(query_file: str, gallery_file: str | None = None) -> dict[str, float]:
    """:func:`reid_metrics` of two ``object_embeddings.h5`` files (or of one against itself)."""
    query = _read_objects(query_file, "evaluate.reid_query")
    gallery = _read_objects(gallery_file, "evaluate.reid_gallery") if gallery_file else None
    if gallery is not None and gallery["embeddings"].shape[1] != query["embeddings"].shape[1]:
        raise DataError(f"{query_file} and {gallery_file} hold embeddings of different widths "
                        f"({query['embeddings'].shape[1]} and {gallery['embeddings'].shape[1]})",
                        where="evaluate.reid_gallery", fix="embed query and gallery with the same model")
    found = reid_metrics(query["embeddings"], query["instance_ids"], *(
        (gallery["embeddings"], gallery["instance_ids"]) if gallery else ()),
        query_cameras=query["camera_ids"], gallery_cameras=gallery and gallery["camera_ids"],
        query_frames=query["frame_ids"], gallery_frames=gallery and gallery["frame_ids"])
    return {"query_objects": len(query["instance_ids"]),
            "gallery_objects": len((gallery or query)["instance_ids"]), **found}


def _read_objects(path: str, key: str) -> dict[str, np.ndarray | torch.Tensor]:
    file = Path(path).expanduser()
    try:
        with h5py.File(file, "r") as f:
            if f.attrs.get("embedding_type") != "object" or "embeddings" not in f:
                raise DataError(f"{file} is not an object embedding file", where=key,
                                fix="pass the object_embeddings.h5 that `core inference` writes from "
                                    "inference.detections")
            found = {name: f[name][()] for name in ("instance_ids", "camera_ids", "frame_ids")}
            found["embeddings"] = torch.from_numpy(f["embeddings"][()])
    except OSError as exc:
        raise DataError(f"cannot read {file}: {exc}", where=key, fix="pass an HDF5 file written by core inference") \
            from None
    if (found["instance_ids"] == UNKNOWN).all():
        raise DataError(f"{file} has no instance ids (every box's is unknown)", where=key,
                        fix="give the detections an instance_id or track_id per box")
    return found
