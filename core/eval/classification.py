"""Zero-shot classification on an ImageFolder tree (``evaluate.classification_dir``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from core.bad_samples import BadSampleLog
from core.errors import DataError
from core.eval.embed import Encoder, embed_images, embed_texts, list_images, path_loader
from core.eval.metrics import classification_metrics
from core.runtime.distributed import World
from core.storage import Storage

DEFAULT_TEMPLATES = (
    "a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.", "a cropped photo of a {}.",
    "a bright photo of a {}.", "a dark photo of a {}.", "a photo of a small {}.", "a photo of a large {}.",
)


def class_folders(root: str, key: str = "evaluate.classification_dir", shown: str | None = None) -> list[Path]:
    """The class folders of an ImageFolder tree (sorted; hidden folders skipped); ``key`` is the
    spec field named in errors, ``shown`` the folder as configured (a URL cached at ``root``)."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"classification folder {shown or path} does not exist", where=key,
                        fix="point it at a folder with one sub-folder of images per class")
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{path} has no class sub-folders", where=key,
                        fix="put each class's images in its own sub-folder (ImageFolder layout)")
    return folders


def class_names(folders: Sequence[Path], names_file: str | None, key: str = "evaluate.class_names_file") -> list[str]:
    """Names from ``names_file`` (one per line, in folder order), else the folder names with
    ``_`` read as spaces."""
    if names_file is None:
        return [f.name.replace("_", " ") for f in folders]
    path = Path(names_file).expanduser()
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read class names: {exc}", where=key,
                        fix="a UTF-8 text file with one class name per line") from None
    if len(names) != len(folders):
        raise DataError(f"{path} has {len(names)} class names but the classification folder has "
                        f"{len(folders)} class folders", where=key,
                        fix="write one name per class folder, in the sorted order of the folders: "
                            + ", ".join(f.name for f in folders[:5]) + (", ..." if len(folders) > 5 else ""))
    return names


def labelled_images(folders: Sequence[Path], index: dict[str, int], key: str,
                    known: str | None = None) -> tuple[list[Path], np.ndarray]:
    """The images of the class folders ``folders`` and their labels ``index[folder name]``; a
    folder whose name ``index`` lacks (a class unknown to ``known``), or without images, is an error."""
    paths: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        if folder.name not in index:
            raise DataError(f"class folder {folder} is not a class of {known or key}", where=key,
                            fix="use the known class folders (" + ", ".join(list(index)[:5])
                                + (", ..." if len(index) > 5 else "") + f"), or add the class to {known or key}")
        found = list_images(folder, key=key)
        if not found:
            raise DataError(f"class folder {folder} has no images", where=key,
                            fix="add images (.jpg, .png, ...) to it, or remove the empty folder")
        paths += found
        labels += [index[folder.name]] * len(found)
    return paths, np.asarray(labels, dtype=np.int64)


def class_text_embeddings(encoder: Encoder, names: Sequence[str], templates: Sequence[str], *, world: World,
                          batch_size: int, progress=None) -> torch.Tensor | None:
    """The zero-shot classifier ``[classes, D]``: per class, the normalised mean of its prompts'
    embeddings, one prompt per template (empty ``templates``: :data:`DEFAULT_TEMPLATES`); on rank 0."""
    templates = list(templates) or list(DEFAULT_TEMPLATES)
    prompts = [t.replace("{}", name) for name in names for t in templates]
    texts = embed_texts(encoder, prompts, world=world, batch_size=batch_size, progress=progress,
                        description="classify: prompts")
    if texts is None:
        return None
    return torch.nn.functional.normalize(texts.view(len(names), len(templates), -1).mean(1), dim=-1)


def classification_results(cfg, encoder: Encoder, world: World, bad: BadSampleLog, progress=None) -> dict[str, Any] | None:
    """Zero-shot classification on ``evaluate.classification_dir`` (rank 0's result, else ``None``).

    A class's text embedding is the normalised mean of its prompts' embeddings, one prompt per
    template (``evaluate.templates``, else :data:`DEFAULT_TEMPLATES`)."""
    ev = cfg.evaluate
    root = Storage.of(cfg.dataset).folder(ev.classification_dir, "evaluate.classification_dir")
    folders = class_folders(str(root), shown=ev.classification_dir)
    names = class_names(folders, ev.class_names_file)
    paths, labels = [], []
    for label, folder in enumerate(folders):
        found = list_images(folder, key="evaluate.classification_dir")
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise DataError(f"no images in the class folders of {ev.classification_dir}",
                        where="evaluate.classification_dir", fix="add images (.jpg, .png, ...) to the class folders")
    class_embeddings = class_text_embeddings(encoder, names, ev.templates, world=world, batch_size=ev.batch_size,
                                             progress=progress)
    load = path_loader(paths, encoder.transform, max_pixels=cfg.dataset.max_image_pixels)
    images = embed_images(encoder, load, len(paths), world=world, batch_size=ev.batch_size,
                          num_workers=ev.num_workers, progress=progress, description="classify: images",
                          on_failure=lambda i, reason, detail: bad.record(str(paths[i]), reason, detail))
    if images is None:
        return None
    embeddings, loaded = images
    if not loaded.any():
        raise DataError(f"none of the {len(paths)} classification images could be read",
                        where="evaluate.classification_dir", fix="see bad_samples.jsonl for the reasons")
    labels = np.asarray(labels)
    found = classification_metrics(embeddings[torch.from_numpy(loaded)], class_embeddings, labels[loaded],
                                   tie_policy=cfg.evaluate.tie_policy)
    sizes = np.bincount(labels[loaded], minlength=len(names))
    per_class = [{"class": f.name, "name": n, "images": int(s), "accuracy": a}
                 for f, n, s, a in zip(folders, names, sizes, found.pop("per_class"))]
    return {"num_images": int(loaded.sum()), "num_classes": len(names), "num_templates": len(ev.templates or DEFAULT_TEMPLATES),
            "skipped_images": int((~loaded).sum()), **found, "per_class": per_class}
