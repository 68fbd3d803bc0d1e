"""``core evaluate``: bidirectional retrieval metrics on ``dataset.val`` and, with
``evaluate.classification_dir``, zero-shot classification accuracy.

The model is ``evaluate.checkpoint`` (a clipcore checkpoint), ``evaluate.onnx_file`` (ONNX
Runtime), ``evaluate.trt_engine`` (an engine), or, with none of them set, the pretrained weights
of ``model.type`` (zero-shot). Writes ``<results_dir>/evaluate/results.json``: ``num_images``,
``num_texts``, ``{i2t,t2i}_{R@1,R@5,R@10,fracR@1,fracR@5,fracR@10,mAP,MedR,MeanR,AUC}`` (see
:mod:`core.eval.metrics` for the definitions and the tie rule), and a ``classification`` block
(``top1``, ``top5``, ``mean_per_class``, per-class accuracy). Unreadable images are skipped,
counted (``skipped_images``) and listed in ``bad_samples.jsonl``.

Several processes (``-g N`` / ``evaluate.num_gpus = N`` launches torchrun on this node; or
started by torchrun): each embeds its share, embeddings are all-gathered, and rank 0 scores the whole set once.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from core.bad_samples import BadSampleLog
from core.cli.launch import run_embedding_action
from core.errors import ConfigError
from core.eval.classification import classification_results
from core.eval.embed import Encoder, progress_bar
from core.eval.metrics import DIRECTIONS, KS
from core.eval.reid import KS as REID_KS, reid_results
from core.eval.retrieval import retrieval_results
from core.runtime.distributed import World
from core.spec.load import action_dir

RESULTS_FILE = "results.json"
TABLE_METRICS = [f"R@{k}" for k in KS] + ["mAP", "MedR", "MeanR", "AUC"]


def run(cfg, args) -> None:
    """Evaluate here, or launch torchrun for ``evaluate.num_gpus`` > 1 processes; re-identification
    alone needs no model (it scores embedding files)."""
    _refuse_inference_keys(cfg.evaluate)
    if not cfg.dataset.val.datasets and not cfg.evaluate.classification_dir and cfg.evaluate.reid_query:
        out_dir = action_dir(cfg, "evaluate")
        results = {"reid": reid_results(cfg.evaluate.reid_query, cfg.evaluate.reid_gallery)}
        print_results(results, write_results(results, out_dir / RESULTS_FILE))
        return
    run_embedding_action(cfg, args, "evaluate", _evaluate_and_report)


def _evaluate_and_report(cfg, encoder: Encoder, world: World, out_dir: Path) -> None:
    results = evaluate(cfg, encoder, world, out_dir)
    if world.is_main:
        print_results(results, write_results(results, out_dir / RESULTS_FILE))


def evaluate(cfg, encoder: Encoder, world: World, out_dir: Path) -> dict[str, Any] | None:
    """Retrieval on ``dataset.val`` (if it has datasets) and classification (if
    ``evaluate.classification_dir`` is set); the results on rank 0, ``None`` elsewhere."""
    ev = cfg.evaluate
    if not cfg.dataset.val.datasets and not ev.classification_dir and not ev.reid_query:
        raise ConfigError("nothing to evaluate: dataset.val.datasets is empty and evaluate.classification_dir "
                          "and evaluate.reid_query are unset", where="dataset.val",
                          fix="add [[dataset.val.datasets]] with image_dir (retrieval), and/or set "
                              "evaluate.classification_dir (zero-shot classification) or evaluate.reid_query "
                              "(re-identification)")
    bad = BadSampleLog(cfg.dataset.on_bad_sample, out_dir, world.rank, phase="evaluate")
    results: dict[str, Any] = {"model": encoder.source}
    with progress_bar(world.is_main) as progress:
        if cfg.dataset.val.datasets:
            retrieval = retrieval_results(cfg, encoder, world, batch_size=ev.batch_size, num_workers=ev.num_workers,
                                          results_dir=out_dir, bad_samples=bad, progress=progress)
            results.update(retrieval or {})
        if ev.classification_dir:
            results["classification"] = classification_results(cfg, encoder, world, bad, progress)
    if ev.reid_query and world.is_main:
        results["reid"] = reid_results(ev.reid_query, ev.reid_gallery)
    bad.report("evaluate")
    return results if world.is_main else None


# --------------------------------------------------------------------------- output
def write_results(results: dict[str, Any], path: Path) -> Path:
    """``results`` as JSON (NaN written as null), atomically."""
    from core.runtime.checkpoint import write_text_atomic

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
        console.print(_metric_table(f"zero-shot classification: {cls['num_images']} images, {cls['num_classes']} "
                                    "classes", "accuracy", cls, ("top1", "top5", "mean_per_class")))
    reid = results.get("reid")
    if reid:
        console.print(_metric_table(f"re-identification: {reid['queries']} queries, {reid['gallery_objects']} "
                                    "gallery objects", "value", reid, (*(f"rank-{k}" for k in REID_KS), "mAP")))
    if path is not None:
        console.print(f"results: {path}")


def _metric_table(title: str, header: str, values: dict[str, Any], keys: tuple[str, ...]) -> Table:
    """Two columns: each of ``keys`` that ``values`` holds, and its value."""
    table = Table(title=title, min_width=44)
    table.add_column("metric")
    table.add_column(header, justify="right")
    for key in keys:
        if key in values:
            table.add_row(key, _fmt(values[key]))
    return table


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4f}" if isinstance(value, float) and not float(value).is_integer() else f"{value:g}"


def _refuse_inference_keys(ev) -> None:
    """evaluate reads dataset.val; TAO silently ignores evaluate.datasets / text_file."""
    for key, value in (("datasets", ev.datasets), ("text_file", ev.text_file)):
        if value:
            raise ConfigError(f"evaluate.{key} is set, but evaluate does not read it", where=f"evaluate.{key}",
                              fix="evaluate scores dataset.val.datasets (move the folders to "
                                  "[[dataset.val.datasets]]); image folders and prompts to embed belong "
                                  "under [inference]")
