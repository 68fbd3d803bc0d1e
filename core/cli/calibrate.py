"""``core calibrate``: calibrated probabilities for a classifier.

The classifier is ``calibrate.classifier`` (the ``probe_head.pt`` of ``core linear-probe``) or,
when unset, the model's zero-shot classifier of the class prompts (weights: the exponentiated
logit scale times each class's text embedding; bias: the model's logit bias). Images:
``calibrate.val_dir`` (one sub-folder per class, named as the classifier's classes) to fit on,
and ``calibrate.test_dir`` to measure on (unset: measured on ``val_dir`` itself, which flatters
the result and says so). The methods and ECE are those of :mod:`core.eval.calibration`:

- ``scoring = "softmax"``: temperature scaling;
- ``scoring = "sigmoid"`` (multi-label): a temperature, then per-class thresholds for
  ``target_precision``; a class the calibration images cannot calibrate is listed with the reason.

Writes to ``<results_dir>/calibrate/``: ``classifier.pt`` (the calibrated classifier file:
``core export`` with ``export.classifier`` deploys it, and deploy runners return calibrated
probabilities), ``results.json`` (ECE and NLL before and after, accuracy, temperature,
thresholds) and ``reliability.png`` (the reliability diagram before and after).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import torch
from rich.console import Console
from rich.table import Table

from core.bad_samples import BadSampleLog
from core.classifier import Classifier, load_classifier
from core.cli.evaluate import write_results
from core.cli.launch import run_embedding_action
from core.errors import ClipcoreError, DataError
from core.eval.calibration import Reliability, fit_temperature, nll, precision_thresholds, reliability
from core.eval.classification import class_folders, class_names, class_text_embeddings, labelled_images
from core.eval.embed import Encoder, progress_bar
from core.eval.features import cached_image_features
from core.eval.metrics import score_metrics
from core.plots import png
from core.runtime.checkpoint import save_atomic
from core.runtime.distributed import World

RESULTS_FILE, CLASSIFIER_FILE, RELIABILITY_FILE = "results.json", "classifier.pt", "reliability.png"


def run(cfg, args) -> None:
    """Calibrate here, or launch torchrun for ``calibrate.num_gpus`` > 1 processes (embedding only)."""
    run_embedding_action(cfg, args, "calibrate", _calibrate_and_report)


def _calibrate_and_report(cfg, encoder: Encoder, world: World, out_dir: Path) -> None:
    cal = cfg.calibrate
    if cal.val_dir is None:
        raise DataError("calibrate.val_dir is unset", where="calibrate.val_dir",
                        fix="point it at a folder with one sub-folder of images per class")
    given = load_classifier(cal.classifier, key="calibrate.classifier") if cal.classifier else None
    if given is None and not encoder.has_text:
        raise ClipcoreError("the zero-shot classifier needs the text tower, which this model lacks",
                            where="calibrate.classifier", fix="calibrate a probe head (calibrate.classifier)")
    if given is not None:
        classes, names = given.classes, given.class_names
    else:
        folders = class_folders(cal.val_dir, "calibrate.val_dir")
        classes, names = [f.name for f in folders], class_names(folders, cal.class_names_file,
                                                                  "calibrate.class_names_file")
    index = {name: i for i, name in enumerate(classes)}
    known = "calibrate.classifier" if given is not None else "calibrate.val_dir"
    splits = {"val": labelled_images(class_folders(cal.val_dir, "calibrate.val_dir"), index, "calibrate.val_dir",
                                     known)}
    if cal.test_dir:
        splits["test"] = labelled_images(class_folders(cal.test_dir, "calibrate.test_dir"), index,
                                         "calibrate.test_dir", known)
    bad = BadSampleLog(cfg.dataset.on_bad_sample, out_dir, world.rank, phase="calibrate")
    features = {}
    with progress_bar(world.is_main) as progress:
        for split, (paths, _) in splits.items():
            features[split] = cached_image_features(
                cfg, encoder, paths, name=split, cache_dir=out_dir / "features", world=world,
                batch_size=cal.batch_size, num_workers=cal.num_workers, progress=progress,
                on_failure=lambda i, reason, detail, paths=paths: bad.record(str(paths[i]), reason, detail))
        texts = None if given is not None else class_text_embeddings(
            encoder, names, cal.templates, world=world, batch_size=cal.batch_size, progress=progress)
    bad.report("calibrate")
    if not world.is_main:
        return
    xy = {}
    for split, (x, loaded, _) in features.items():
        if not loaded.any():
            raise DataError(f"none of the {split} images could be read", where=f"calibrate.{split}_dir",
                            fix="see bad_samples.jsonl for the reasons")
        xy[split] = (x[torch.from_numpy(loaded)], torch.from_numpy(splits[split][1][loaded]))
    if given is None:
        given = Classifier(weight=encoder.logit_scale * texts, bias=torch.full((len(classes),), encoder.logit_bias),
                           classes=classes, class_names=names, source=encoder.source)
    results, calibrated, curves = calibrate(attrs.evolve(given, scoring=cal.scoring, temperature=1.0, offset=0.0,
                                                         thresholds=None),
                                            xy, cal)
    results = {"model": encoder.source, "classifier": cal.classifier or "zero-shot", **results}
    write_results(results, out_dir / RESULTS_FILE)
    save_atomic(calibrated.state(), out_dir / CLASSIFIER_FILE)
    plot_reliability(curves, out_dir / RELIABILITY_FILE, cal.scoring)
    print_calibration(results, out_dir)


def calibrate(classifier: Classifier, xy: dict[str, tuple[torch.Tensor, torch.Tensor]], cal
              ) -> tuple[dict[str, Any], Classifier, dict[str, Reliability]]:
    """Fit on ``xy["val"]``, measure on ``xy["test"]`` (else on val): the results, the calibrated
    classifier and the reliability tables before and after."""
    scoring = classifier.scoring
    val_logits = classifier.logits(xy["val"][0])
    temperature, offset = fit_temperature(val_logits, xy["val"][1], scoring)
    calibrated = attrs.evolve(classifier, temperature=temperature, offset=offset)
    thresholds, uncalibrated = None, {}
    if scoring == "sigmoid":
        thresholds, uncalibrated = precision_thresholds(calibrated.probabilities(xy["val"][0]), xy["val"][1],
                                                        cal.target_precision)
        calibrated = attrs.evolve(calibrated, thresholds=thresholds)
    measured_on = "test" if "test" in xy else "val"
    x, y = xy[measured_on]
    logits = classifier.logits(x)
    curves = {"before": reliability(classifier.probabilities(x), y, scoring, cal.bins),
              "after": reliability(calibrated.probabilities(x), y, scoring, cal.bins)}
    results: dict[str, Any] = {
        "scoring": scoring, "measured_on": measured_on, "images": {s: len(v[1]) for s, v in xy.items()},
        "temperature": temperature, "offset": offset, "top1": score_metrics(logits, y)["top1"],
        "ece_before": curves["before"].ece, "ece_after": curves["after"].ece,
        "nll_before": nll(logits, y, scoring), "nll_after": nll(logits, y, scoring, temperature, offset), "bins": cal.bins}
    if scoring == "sigmoid":
        results["target_precision"] = cal.target_precision
        results["thresholds"] = {c: t for c, t in zip(classifier.classes, thresholds)}
        results["uncalibrated_classes"] = {classifier.classes[c]: why for c, why in uncalibrated.items()}
    return results, calibrated, curves


def plot_reliability(curves: dict[str, Reliability], path: Path, scoring: str) -> Path:
    """The reliability diagram: observed accuracy against confidence per bin, before and after."""
    with png(path, figsize=(5.5, 5)) as (_, ax):
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfectly calibrated")
        for name, curve in curves.items():
            filled = curve.count > 0
            ax.plot(curve.confidence[filled], curve.accuracy[filled], marker="o",
                    label=f"{name} (ECE {curve.ece:.3f})")
        what = "top-class probability" if scoring == "softmax" else "class probability"
        ax.set(xlabel=what, ylabel="observed frequency", xlim=(0, 1), ylim=(0, 1), title=f"reliability ({scoring})")
        ax.legend(loc="upper left")
    return path


def print_calibration(results: dict[str, Any], out_dir: Path, console: Console | None = None) -> None:
    console = console or Console()
    table = Table(title=f"calibration ({results['scoring']}), measured on {results['measured_on']}: "
                        f"{results['images'][results['measured_on']]} images", min_width=44)
    for column in ("", "before", "after"):
        table.add_column(column, justify="right" if column else "left")
    table.add_row("ECE", f"{results['ece_before']:.4f}", f"{results['ece_after']:.4f}")
    table.add_row("NLL", f"{results['nll_before']:.4f}", f"{results['nll_after']:.4f}")
    console.print(table)
    console.print(f"temperature {results['temperature']:.4g}; top-1 {results['top1']:.4f} (unchanged)")
    if results["measured_on"] == "val":
        console.print("[yellow]measured on the calibration images themselves: set calibrate.test_dir for an "
                      "honest figure[/yellow]")
    for name, why in results.get("uncalibrated_classes", {}).items():
        console.print(f"[yellow]class {name!r} has no threshold: it {why}[/yellow]")
    console.print(f"calibrated classifier: {out_dir / CLASSIFIER_FILE}; results: {out_dir / RESULTS_FILE}")

