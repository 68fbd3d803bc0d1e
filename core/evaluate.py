"""``core evaluate``: bidirectional retrieval metrics on ``dataset.val`` and, with
``evaluate.classification_dir``, zero-shot classification accuracy.

The model is ``evaluate.checkpoint`` (a clipcore checkpoint), ``evaluate.onnx_file`` (ONNX
Runtime), ``evaluate.trt_engine`` (TensorRT), or, with none of them set, the pretrained weights
of ``model.type`` (zero-shot). Writes ``<results_dir>/evaluate/results.json``: ``num_images``,
``num_texts``, ``{i2t,t2i}_{R@1,R@5,R@10,fracR@1,fracR@5,fracR@10,mAP,MedR,MeanR,AUC}`` (see
:mod:`core.metrics` for the definitions and the tie rule), and a ``classification`` block
(``top1``, ``top5``, ``mean_per_class``, per-class accuracy). Unreadable images are skipped,
counted (``skipped_images``) and listed in ``bad_samples.jsonl``.

Several processes (``-g N`` / ``evaluate.num_gpus = N`` launches torchrun on this node; or
started by torchrun): each embeds
its share, embeddings are all-gathered, and rank 0 scores the whole set once.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from core.bad_samples import BadSampleLog
from core.data import DataRequest
from core.distributed import World, close_world, init_world, run_torchrun, under_torchrun
from core.embed import Encoder, embed_images, embed_texts, list_images, open_encoder, path_loader, progress_bar
from core.errors import ClipcoreError, ConfigError, DataError
from core.metrics import DIRECTIONS, KS, classification_metrics, retrieval_metrics

RESULTS_FILE = "results.json"
DEFAULT_TEMPLATES = (
    "a photo of a {}.", "a photo of the {}.", "a close-up photo of a {}.", "a cropped photo of a {}.",
    "a bright photo of a {}.", "a dark photo of a {}.", "a photo of a small {}.", "a photo of a large {}.",
)
TABLE_METRICS = [f"R@{k}" for k in KS] + ["mAP", "MedR", "MeanR", "AUC"]


def run(cfg, args) -> None:
    """Evaluate here, or launch torchrun for ``evaluate.num_gpus`` > 1 processes."""
    _refuse_inference_keys(cfg.evaluate)
    run_embedding_action(cfg, args, "evaluate", _evaluate_and_report)


def _evaluate_and_report(cfg, encoder: Encoder, world: World, out_dir: Path) -> None:
    results = evaluate(cfg, encoder, world, out_dir)
    if world.is_main:
        print_results(results, write_results(results, out_dir / RESULTS_FILE))


def evaluate(cfg, encoder: Encoder, world: World, out_dir: Path) -> dict[str, Any] | None:
    """Retrieval on ``dataset.val`` (if it has datasets) and classification (if
    ``evaluate.classification_dir`` is set); the results on rank 0, ``None`` elsewhere."""
    ev = cfg.evaluate
    if not cfg.dataset.val.datasets and not ev.classification_dir:
        raise ConfigError("nothing to evaluate: dataset.val.datasets is empty and evaluate.classification_dir "
                          "is unset", where="dataset.val", fix="add [[dataset.val.datasets]] with image_dir "
                          "(retrieval) and/or set evaluate.classification_dir (zero-shot classification)")
    bad = BadSampleLog(cfg.dataset.on_bad_sample, out_dir, world.rank, phase="evaluate")
    results: dict[str, Any] = {"model": encoder.source}
    with progress_bar(world.is_main) as progress:
        if cfg.dataset.val.datasets:
            retrieval = retrieval_results(cfg, encoder, world, batch_size=ev.batch_size, num_workers=ev.num_workers,
                                          results_dir=out_dir, bad_samples=bad, progress=progress)
            results.update(retrieval or {})
        if ev.classification_dir:
            results["classification"] = classification_results(cfg, encoder, world, bad, progress)
    bad.report("evaluate")
    return results if world.is_main else None


# --------------------------------------------------------------------------- retrieval
def retrieval_results(cfg, encoder: Encoder, world: World, *, batch_size: int, num_workers: int,
                      results_dir: Path | None, bad_samples: BadSampleLog | None = None,
                      progress=None) -> dict[str, Any] | None:
    """Retrieval metrics of ``encoder`` on ``dataset.val`` (every rank takes part); on rank 0
    ``num_images``, ``num_texts``, the metric keys and the skip counts, ``None`` elsewhere.

    An image that cannot be read is left out with its captions (counted in
    ``skipped_images`` / ``skipped_texts``)."""
    from core.registry import get_registry

    val = cfg.dataset.val
    fmt = get_registry().get("dataset_formats", val.type, key="dataset.val.type")
    if fmt.retrieval is None:
        raise ConfigError(f"dataset format {val.type!r} cannot build an evaluation set (no `retrieval`)",
                          where="dataset.val.type", fix="use a format that supports evaluation, e.g. custom")
    request = DataRequest(config=cfg, transform=encoder.transform, tokenizer=encoder.tokenizer,
                          batch_size=batch_size, rank=world.rank, world_size=world.size, seed=cfg.dataset.seed,
                          num_workers=num_workers, bad_samples=bad_samples,
                          results_dir=None if results_dir is None else str(results_dir))
    data = fmt.retrieval(request)
    captions, caption_image = list(data.captions), np.asarray(data.caption_image, dtype=np.int64)
    if not len(data.image_paths) or not captions:
        raise DataError(f"the evaluation set has {len(data.image_paths)} images and {len(captions)} captions",
                        where="dataset.val.datasets", fix="point it at images with caption files")
    images = embed_images(encoder, data.load_image, len(data.image_paths), world=world, batch_size=batch_size,
                          num_workers=num_workers, progress=progress, description="evaluate: images")
    texts = embed_texts(encoder, captions, world=world, batch_size=batch_size, progress=progress,
                        description="evaluate: captions")
    if images is None:
        return None
    image_embeddings, loaded = images
    if not loaded.any():
        raise DataError(f"none of the {len(loaded)} evaluation images could be read", where="dataset.val.datasets",
                        fix="see bad_samples.jsonl for the reasons")
    kept_texts = loaded[caption_image]
    new_index = np.cumsum(loaded) - 1
    device = world.device
    tie_policy = cfg.evaluate.tie_policy
    metrics = retrieval_metrics(image_embeddings[torch.from_numpy(loaded)].to(device),
                                texts[torch.from_numpy(kept_texts)].to(device), new_index[caption_image[kept_texts]],
                                tie_policy=tie_policy)
    return {"num_images": int(loaded.sum()), "num_texts": int(kept_texts.sum()), "tie_policy": tie_policy, **metrics,
            "skipped_images": int((~loaded).sum()), "skipped_texts": int((~kept_texts).sum())}


# --------------------------------------------------------------------------- classification
def class_folders(root: str) -> list[Path]:
    """The class folders of an ImageFolder tree (sorted; hidden folders skipped)."""
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DataError(f"classification folder {path} does not exist", where="evaluate.classification_dir",
                        fix="point it at a folder with one sub-folder of images per class")
    folders = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{path} has no class sub-folders", where="evaluate.classification_dir",
                        fix="put each class's images in its own sub-folder (ImageFolder layout)")
    return folders


def class_names(folders: Sequence[Path], names_file: str | None) -> list[str]:
    """Names from ``names_file`` (one per line, in folder order), else the folder names with
    ``_`` read as spaces."""
    if names_file is None:
        return [f.name.replace("_", " ") for f in folders]
    path = Path(names_file).expanduser()
    try:
        names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read class names: {exc}", where="evaluate.class_names_file",
                        fix="a UTF-8 text file with one class name per line") from None
    if len(names) != len(folders):
        raise DataError(f"{path} has {len(names)} class names but the classification folder has "
                        f"{len(folders)} class folders", where="evaluate.class_names_file",
                        fix="write one name per class folder, in the sorted order of the folders: "
                            + ", ".join(f.name for f in folders[:5]) + (", ..." if len(folders) > 5 else ""))
    return names


def classification_results(cfg, encoder: Encoder, world: World, bad: BadSampleLog, progress=None) -> dict[str, Any] | None:
    """Zero-shot classification on ``evaluate.classification_dir`` (rank 0's result, else ``None``).

    A class's text embedding is the normalised mean of its prompts' embeddings, one prompt per
    template (``evaluate.templates``, else :data:`DEFAULT_TEMPLATES`)."""
    ev = cfg.evaluate
    folders = class_folders(ev.classification_dir)
    names = class_names(folders, ev.class_names_file)
    paths, labels = [], []
    for label, folder in enumerate(folders):
        found = list_images(folder, key="evaluate.classification_dir")
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise DataError(f"no images in the class folders of {ev.classification_dir}",
                        where="evaluate.classification_dir", fix="add images (.jpg, .png, ...) to the class folders")
    templates = list(ev.templates) or list(DEFAULT_TEMPLATES)
    prompts = [t.replace("{}", name) for name in names for t in templates]
    texts = embed_texts(encoder, prompts, world=world, batch_size=ev.batch_size, progress=progress,
                        description="classify: prompts")
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
    class_embeddings = torch.nn.functional.normalize(texts.view(len(names), len(templates), -1).mean(1), dim=-1)
    labels = np.asarray(labels)
    found = classification_metrics(embeddings[torch.from_numpy(loaded)], class_embeddings, labels[loaded],
                                   tie_policy=cfg.evaluate.tie_policy)
    sizes = np.bincount(labels[loaded], minlength=len(names))
    per_class = [{"class": f.name, "name": n, "images": int(s), "accuracy": a}
                 for f, n, s, a in zip(folders, names, sizes, found.pop("per_class"))]
    return {"num_images": int(loaded.sum()), "num_classes": len(names), "num_templates": len(templates),
            "skipped_images": int((~loaded).sum()), **found, "per_class": per_class}


# --------------------------------------------------------------------------- output
def write_results(results: dict[str, Any], path: Path) -> Path:
    """``results`` as JSON (NaN written as null), atomically."""
    from core.checkpoint import write_text_atomic

    return write_text_atomic(json.dumps(_json_safe(results), indent=2) + "\n", path)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def print_results(results: dict[str, Any], path: Path | None = None, console: Console | None = None) -> None:
    """The retrieval and classification tables."""
    console = console or Console()
    if "num_images" in results:
        table = Table(title=f"retrieval: {results['num_images']} images, {results['num_texts']} captions",
                      min_width=44)
        table.add_column("metric")
        for direction in DIRECTIONS:
            table.add_column(direction, justify="right")
        for name in TABLE_METRICS:
            table.add_row(name, *(_fmt(results.get(f"{d}_{name}")) for d in DIRECTIONS))
        console.print(table)
    cls = results.get("classification")
    if cls:
        table = Table(title=f"zero-shot classification: {cls['num_images']} images, {cls['num_classes']} classes",
                      min_width=44)
        table.add_column("metric")
        table.add_column("accuracy", justify="right")
        for key in ("top1", "top5", "mean_per_class"):
            if key in cls:
                table.add_row(key, _fmt(cls[key]))
        console.print(table)
    if path is not None:
        console.print(f"results: {path}")


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) and not float(value).is_integer() else f"{value:g}"


# --------------------------------------------------------------------------- processes
def run_embedding_action(cfg, args, action: str, body) -> None:
    """Run ``body(cfg, encoder, world, out_dir)`` for ``action`` (evaluate, inference) in this
    process, or relaunch under torchrun for ``<action>.num_gpus`` > 1 processes."""
    from core.spec import action_dir

    if getattr(cfg, action).num_gpus > 1 and not under_torchrun():
        return launch_torchrun(cfg, args, action)
    world = init_world(getattr(cfg, action), action)
    try:
        body(cfg, open_encoder(cfg, action, world.device), world, action_dir(cfg, action))
    finally:
        close_world()


def launch_torchrun(cfg, args, action: str) -> None:
    """Run ``core <action>`` again under torchrun with ``<action>.num_gpus`` processes (one node)."""
    from core.cli import action_overrides

    n = getattr(cfg, action).num_gpus
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "core.cli", action, *(["-c", args.config] if args.config else []),
           *action_overrides(args, action)]
    status = run_torchrun(cmd)
    if status != 0:
        raise ClipcoreError(f"{action} failed in a torchrun worker (exit status {status})",
                            where=" ".join(cmd[:6]) + " ...", fix="read the first error above")


def _refuse_inference_keys(ev) -> None:
    """evaluate reads dataset.val; TAO silently ignores evaluate.datasets / text_file."""
    for key, value in (("datasets", ev.datasets), ("text_file", ev.text_file)):
        if value:
            raise ConfigError(f"evaluate.{key} is set, but evaluate does not read it", where=f"evaluate.{key}",
                              fix="evaluate scores dataset.val.datasets (move the folders to "
                                  "[[dataset.val.datasets]]); image folders and prompts to embed belong "
                                  "under [inference]")
