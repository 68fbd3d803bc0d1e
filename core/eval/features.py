"""Image embeddings cached in HDF5, reused while the model and the images are unchanged.

A cache file ``<cache_dir>/<name>-<key>.h5`` holds ``features`` float32 ``[N, D]`` (L2-normalised;
zero rows for unreadable images), ``loaded`` bool ``[N]`` and ``image_paths`` ``[N]``, with the
attributes ``model`` (JSON: the model section, the encoder's source, and the size and
modification time of every weight file it names) and ``images`` (a digest of every image's path,
size and modification time). ``key`` is a hash of both records: another checkpoint, a retrained
file at the same path, or an added, removed or rewritten image gives another file. The file is
written by rank 0 to a temporary name and renamed into place, so a killed run leaves no half file.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import attrs
import h5py
import numpy as np
import torch

from core.errors import file_system_error
from core.eval.embed import Encoder, embed_images, path_loader


def model_record(cfg, encoder: Encoder) -> dict[str, Any]:
    """What decides the embeddings: the model section, the encoder's source, and the size and
    modification time of each weight file it names."""
    files = {}
    for value in (*encoder.source.values(), cfg.model.pretrained):
        path = Path(str(value)).expanduser()
        if isinstance(value, str) and value and path.is_file():
            stat = path.stat()
            files[str(path.resolve())] = [stat.st_size, stat.st_mtime_ns]
    return {"model": attrs.asdict(cfg.model), "source": encoder.source, "files": files}


def images_digest(paths: Sequence[Path]) -> str:
    """A hash of every image's absolute path, size and modification time, in order."""
    h = hashlib.sha256()
    for path in paths:
        stat = path.stat()
        h.update(f"{Path(path).resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()


def cached_image_features(cfg, encoder: Encoder, paths: Sequence[Path], *, name: str, cache_dir: Path, world,
                          batch_size: int, num_workers: int, progress=None,
                          on_failure: Callable[[int, str, str], None] | None = None
                          ) -> tuple[torch.Tensor, np.ndarray, bool] | None:
    """``(features [N, D], loaded mask [N], from_cache)`` of ``paths`` on rank 0 (``None`` on the
    other ranks): read from the cache when it holds them, else embedded and cached."""
    record = json.dumps(model_record(cfg, encoder), sort_keys=True, default=str)
    digest = images_digest(paths)
    key = hashlib.sha256(f"{record}\n{digest}".encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{name}-{key}.h5"
    if path.is_file():
        if not world.is_main:
            return None
        with h5py.File(path, "r") as f:
            return torch.from_numpy(f["features"][()]), f["loaded"][()].astype(bool), True
    load = path_loader(paths, encoder.transform, max_pixels=cfg.dataset.max_image_pixels)
    found = embed_images(encoder, load, len(paths), world=world, batch_size=batch_size, num_workers=num_workers,
                         progress=progress, description=f"features: {name}", on_failure=on_failure)
    if found is None:
        return None
    features, loaded = found
    _write(path, features.numpy(), loaded, paths, record, digest)
    return features, loaded, False


def _write(path: Path, features: np.ndarray, loaded: np.ndarray, paths: Sequence[Path], record: str,
           digest: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with h5py.File(tmp, "w") as f:
            f.create_dataset("features", data=features.astype(np.float32))
            f.create_dataset("loaded", data=loaded.astype(bool))
            f.create_dataset("image_paths", data=[str(p) for p in paths], dtype=h5py.string_dtype("utf-8"))
            f.attrs["model"], f.attrs["images"] = record, digest
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise file_system_error(exc, path) or exc from None
