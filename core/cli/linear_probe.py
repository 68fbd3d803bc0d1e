"""``core linear-probe``: a logistic-regression head on the frozen vision tower's embeddings.

Data: ``linear_probe.train_dir`` (one sub-folder of images per class), with ``val_dir`` and
``test_dir`` in the same layout; an unset one is drawn from each class of ``train_dir``
(``val_fraction`` / ``test_fraction``, seeded by ``split_seed``). Features are the model's
L2-normalised image embeddings, computed once per split and cached in HDF5 (``cache_dir``;
reused while the model and the images are unchanged). The head, its regularisation search and
the ``init`` options are described in :mod:`core.eval.probe`; the protocol is the CLIP paper's:
λ chosen on the validation split, the head refitted on train + validation, measured on test.

``shots = k`` runs the k-shot protocol instead: for each of ``shot_seeds`` draws, k training images
per class, λ chosen on the validation split, the head fitted on the k images, measured on test;
``results.json`` gives each draw and the mean ± std. The per-class accuracy, the confusion matrix
and the saved head are those of the first draw.

Writes to ``<results_dir>/linear_probe/``: ``results.json`` (top-1, top-5, mean per-class and
per-class accuracy of the probe and of the zero-shot classifier on the test split, the λ search,
the confusion matrix), ``confusion_matrix.png``, and ``probe_head.pt``, a classifier file
(:mod:`core.classifier`: ``weight`` ``[C, D]``, ``bias`` ``[C]``, the classes, softmax scoring;
``core calibrate`` calibrates it, ``core export`` with ``export.classifier`` deploys it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from core.bad_samples import BadSampleLog
from core.classifier import Classifier
from core.cli.evaluate import write_results
from core.cli.launch import run_embedding_action
from core.errors import ClipcoreError, DataError
from core.eval.classification import class_folders, class_names, class_text_embeddings, labelled_images
from core.eval.embed import Encoder, progress_bar
from core.eval.features import cached_image_features
from core.eval.metrics import score_metrics
from core.eval.probe import Head, fit_head, k_shot, mean_std, search_lambda, stratified_split, best_scale
from core.plots import png
from core.runtime.distributed import World

RESULTS_FILE, CONFUSION_FILE, HEAD_FILE = "results.json", "confusion_matrix.png", "probe_head.pt"
SPLITS = ("train", "val", "test")


def run(cfg, args) -> None:
    """Probe here, or launch torchrun for ``linear_probe.num_gpus`` > 1 processes (features only;
    rank 0 fits the head)."""
    run_embedding_action(cfg, args, "linear_probe", _probe_and_report)


# --------------------------------------------------------------------------- data
@attrs.frozen
class ClassSplits:
    """The class folders of ``train_dir`` (sorted), their names, and the labelled images of each split."""

    folders: list[Path]
    names: list[str]
    images: dict[str, tuple[list[Path], np.ndarray]]


def class_splits(lp) -> ClassSplits:
    """The train / val / test images of ``lp`` (a ``linear_probe`` section) with their labels."""
    if lp.train_dir is None:
        raise DataError("linear_probe.train_dir is unset", where="linear_probe.train_dir",
                        fix="point it at a folder with one sub-folder of images per class")
    folders = class_folders(lp.train_dir, "linear_probe.train_dir")
    if len(folders) < 2:
        raise DataError(f"{lp.train_dir} has {len(folders)} class folder; a classifier needs at least 2",
                        where="linear_probe.train_dir", fix="add a sub-folder of images for each class")
    index = {f.name: i for i, f in enumerate(folders)}
    images = {"train": labelled_images(folders, index, "linear_probe.train_dir")}
    held_out = [s for s in ("val", "test") if getattr(lp, f"{s}_dir") is None]
    for split in ("val", "test"):
        if split not in held_out:
            key = f"linear_probe.{split}_dir"
            images[split] = labelled_images(class_folders(getattr(lp, f"{split}_dir"), key), index, key,
                                            known="linear_probe.train_dir")
    if held_out:
        paths, labels = images["train"]
        need = len(held_out) + 1
        sizes = np.bincount(labels, minlength=len(folders))
        if sizes.min() < need:
            small = folders[int(sizes.argmin())]
            raise DataError(f"class folder {small} has {sizes.min()} image(s); drawing "
                            f"{' and '.join(held_out)} from train_dir needs at least {need} per class",
                            where="linear_probe.train_dir",
                            fix="add images to that class, or set " + " and ".join(f"linear_probe.{s}_dir" for s in held_out))
        parts = stratified_split(labels, [getattr(lp, f"{s}_fraction") for s in held_out], lp.split_seed)
        for split, part in zip(held_out + ["train"], parts):
            images[split] = ([paths[i] for i in part], labels[part])
    return ClassSplits(folders, class_names(folders, lp.class_names_file, "linear_probe.class_names_file"),
                       {s: images[s] for s in SPLITS})


# --------------------------------------------------------------------------- the action
def _probe_and_report(cfg, encoder: Encoder, world: World, out_dir: Path) -> None:
    lp = cfg.linear_probe
    data = class_splits(lp)
    if not encoder.has_vision:
        raise ClipcoreError("the model has no vision tower", where="linear_probe.onnx_file",
                            fix="probe a checkpoint, or an export with the image tower")
    if lp.init == "zeroshot" and not encoder.has_text:
        raise ClipcoreError('init = "zeroshot" needs the text tower, which this model lacks',
                            where="linear_probe.init", fix='set init = "random", or use a model with both towers')
    cache_dir = Path(lp.cache_dir).expanduser() if lp.cache_dir else out_dir / "features"
    bad = BadSampleLog(cfg.dataset.on_bad_sample, out_dir, world.rank, phase="linear_probe")
    features: dict[str, Any] = {}
    with progress_bar(world.is_main) as progress:
        for split in SPLITS:
            paths, _ = data.images[split]
            features[split] = cached_image_features(
                cfg, encoder, paths, name=split, cache_dir=cache_dir, world=world, batch_size=lp.batch_size,
                num_workers=lp.num_workers, progress=progress,
                on_failure=lambda i, reason, detail, paths=paths: bad.record(str(paths[i]), reason, detail))
        classes = (class_text_embeddings(encoder, data.names, lp.templates, world=world, batch_size=lp.batch_size,
                                         progress=progress) if encoder.has_text else None)
    bad.report("linear_probe")
    if not world.is_main:
        return
    xy, skipped = {}, 0
    for split in SPLITS:
        x, loaded, _ = features[split]
        labels = data.images[split][1]
        if not loaded.any():
            raise DataError(f"none of the {len(labels)} {split} images could be read", where="linear_probe",
                            fix="see bad_samples.jsonl for the reasons")
        xy[split] = (x[torch.from_numpy(loaded)], torch.from_numpy(labels[loaded]))
        skipped += int((~loaded).sum())
    results, head = probe(lp, xy, len(data.folders), classes)
    results = {"model": encoder.source, "classes": [f.name for f in data.folders], "class_names": data.names,
               "images": {s: len(xy[s][1]) for s in SPLITS}, "skipped_images": skipped,
               "features_from_cache": {s: features[s][2] for s in SPLITS}, **results}
    write_results(results, out_dir / RESULTS_FILE)
    plot_confusion(np.asarray(results["confusion"]), data.names, out_dir / CONFUSION_FILE)
    save_head(head, out_dir / HEAD_FILE, data, encoder)
    print_probe(results, out_dir)


def probe(lp, xy: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int,
          classes: torch.Tensor | None) -> tuple[dict[str, Any], Head]:
    """Fit and measure the head (full or k-shot protocol); the results and the head kept."""
    (train_x, train_y), val, (test_x, test_y) = xy["train"], xy["val"], xy["test"]
    out: dict[str, Any] = {"init": lp.init, "shots": lp.shots}
    if classes is not None:
        out["zeroshot"] = _summary(score_metrics(test_x @ classes.T, test_y))
    runs = []
    draws = [None] if lp.shots == 0 else [lp.split_seed + s for s in range(lp.shot_seeds)]
    for draw in draws:
        if draw is None:
            fit_x, fit_y = train_x, train_y
        else:
            chosen = torch.from_numpy(k_shot(train_y.numpy(), lp.shots, draw))
            fit_x, fit_y = train_x[chosen], train_y[chosen]
        anchor = None
        if lp.init == "zeroshot":
            anchor = best_scale(fit_x @ classes.T, fit_y)[0] * classes
        lam, trials = search_lambda((fit_x, fit_y), val, num_classes, anchor=anchor, seed=lp.split_seed,
                                    max_iter=lp.max_iter)
        if draw is None:  # the CLIP protocol: refit on train + validation at the chosen λ
            fit_x, fit_y = torch.cat([fit_x, val[0]]), torch.cat([fit_y, val[1]])
        head = fit_head(fit_x, fit_y, num_classes, lam, anchor=anchor, seed=lp.split_seed, max_iter=lp.max_iter)
        logits = head.logits(test_x)
        found = score_metrics(logits, test_y)
        runs.append({"seed": draw, "train_images": len(fit_y), "lambda": lam, "metrics": found, "head": head,
                     "confusion": _confusion(logits.argmax(1), test_y, num_classes),
                     "search": [{"lambda": t.lam, "val_top1": t.accuracy, "val_loss": t.loss} for t in trials]})
    first = runs[0]
    out["probe"] = {**_summary(first["metrics"]), "lambda": first["lambda"], "train_images": first["train_images"],
                    "per_class": first["metrics"]["per_class"], "search": first["search"]}
    if lp.shots:
        for key in ("top1", "top5", "mean_per_class"):
            if key in first["metrics"]:
                mean, std = mean_std([r["metrics"][key] for r in runs])
                out["probe"][f"{key}_mean"], out["probe"][f"{key}_std"] = mean, std
        out["draws"] = [{"seed": r["seed"], "lambda": r["lambda"], **_summary(r["metrics"])} for r in runs]
    out["confusion"] = first["confusion"].tolist()
    return out, first["head"]


def _summary(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: metrics[k] for k in ("top1", "top5", "mean_per_class") if k in metrics}


def _confusion(predicted: torch.Tensor, truth: torch.Tensor, num_classes: int) -> np.ndarray:
    """Counts ``[true class, predicted class]``."""
    return np.bincount(truth.numpy() * num_classes + predicted.numpy(),
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


# --------------------------------------------------------------------------- outputs
def save_head(head: Head, path: Path, data: ClassSplits, encoder: Encoder) -> Path:
    """The head as a classifier file (:mod:`core.classifier`: softmax, not yet calibrated)."""
    from core.runtime.checkpoint import save_atomic

    return save_atomic(Classifier(weight=head.weight, bias=head.bias, classes=[f.name for f in data.folders],
                                  class_names=data.names, source=encoder.source).state(), path)


def plot_confusion(confusion: np.ndarray, names: list[str], path: Path) -> Path:
    """The confusion matrix as a PNG: rows the true class, columns the predicted one, each row
    normalised to the share of its images (counts written in the cells up to 30 classes)."""
    n = len(names)
    shares = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    side = min(4 + 0.4 * n, 24)
    with png(path, figsize=(side, side)) as (fig, ax):
        image = ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
        if n <= 60:
            ax.set_xticks(range(n), names, rotation=90)
            ax.set_yticks(range(n), names)
        if n <= 30:
            for (i, j), count in np.ndenumerate(confusion):
                if count:
                    ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                            color="white" if shares[i, j] > 0.5 else "black")
        ax.set(xlabel="predicted", ylabel="true", title="linear probe: confusion on the test split")
    return path


def print_probe(results: dict[str, Any], out_dir: Path, console: Console | None = None) -> None:
    console = console or Console()
    shots = results["shots"]
    table = Table(title=f"linear probe ({results['init']} init, {f'{shots}-shot' if shots else 'all images'}): "
                        f"{results['images']['test']} test images, {len(results['classes'])} classes", min_width=44)
    table.add_column("metric")
    if "zeroshot" in results:
        table.add_column("zero-shot", justify="right")
    table.add_column("probe", justify="right")
    probe_ = results["probe"]
    for key in ("top1", "top5", "mean_per_class"):
        if key not in probe_:
            continue
        cells = [f"{results['zeroshot'][key]:.4f}"] if "zeroshot" in results else []
        value = (f"{probe_[key + '_mean']:.4f} ± {probe_[key + '_std']:.4f}" if shots else f"{probe_[key]:.4f}")
        table.add_row(key, *cells, value)
    console.print(table)
    console.print(f"λ = {probe_['lambda']:.3g}; results: {out_dir / RESULTS_FILE}")
