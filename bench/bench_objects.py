"""Classification and object-level use of the demo model: probe vs zero-shot, k-shot curves,
calibration, re-identification, and the cost of object embeddings against whole-image ones.

    python bench/bench_objects.py --work /tmp/objects            # 5 alternating rounds
    python bench/bench_objects.py --work /tmp/objects --rounds 7

Set-up (not measured): ``core demo WORK/demo`` trains ``clipcore-demo-tiny`` on the demo scenes and
writes ``core demo-data``'s class folders (six shape classes, 100 training and 50 test images each)
and detection frames (60 frames from two cameras, twelve recurring objects). A second
``core demo-data`` folder holds ``--frames`` detection frames for the speed rows.

Accuracy (seeded; the same on every run, computed once), each through its command:

- ``core linear-probe``: the probe (λ chosen on 20 % of the training folders, refit on all of them)
  against the zero-shot classifier, on the test folders, with ``init`` random and zeroshot;
- k-shot: ``shots`` k = 1, 2, 4, 8, 16 × ``init`` random | zeroshot, five draws each, mean ± std
  (``WORK/kshot.png``);
- ``core calibrate`` of the zero-shot classifier, softmax and sigmoid scoring, fitted on the
  training folders and measured on the test folders: ECE before → after;
- ``core inference`` of the 60 frames' detections, then ``core evaluate`` re-identification (each
  box against the others, same camera excluded): CMC rank-1/5/10 and mAP.

Speed (``bench/protocol.py``): ``core inference`` on the ``--frames`` frames, in-process with the
same loaded model, alternating whole-image embedding (``inference.datasets``) and object
embedding (``inference.detections``), each writing its HDF5 file. Reported: frames/s, boxes/s,
and the time of objects over whole images per round (median, min–max).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import protocol

REPO = Path(__file__).resolve().parents[1]
SHOTS = (1, 2, 4, 8, 16)
INITS = ("random", "zeroshot")


def command(*args: str) -> None:
    """One ``core`` command, in-process, quiet; a failure stops the benchmark."""
    import contextlib
    import io

    from core.cli.main import main

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
        status = main(list(args))
    if status != 0:
        sys.exit(f"core {' '.join(args)} failed:\n{err.getvalue()}")


def results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


# --------------------------------------------------------------------------- set-up
def prepare(work: Path, frames: int) -> tuple[Path, list[str]]:
    """The trained demo and the overrides every action shares (its checkpoint, no worker processes)."""
    from core.cli import demo_data

    demo = work / "demo"
    checkpoint = demo / "results" / "train" / "latest.pth"
    if not checkpoint.is_file():
        subprocess.run([sys.executable, "-m", "core.cli.main", "demo", str(demo), "--force"], check=True, cwd=REPO)
    if not (work / "frames" / "detections" / "detections.json").is_file():
        demo_data.generate(work / "frames", n=1, val=1, class_images=0, detection_frames=frames, seed=1, force=True)
    shared = [f"{action}.{key}" for action in ("linear_probe", "calibrate", "inference", "evaluate")
              for key in (f"checkpoint={checkpoint}", "num_workers=0", "batch_size=64")]
    return demo / "demo.toml", shared


# --------------------------------------------------------------------------- accuracy
def probe_rows(spec: Path, shared: list[str], work: Path) -> dict:
    classes = work / "demo" / "data" / "classes"
    base = ["-c", str(spec), *shared, f"linear_probe.train_dir={classes / 'train'}",
            f"linear_probe.test_dir={classes / 'test'}", f"linear_probe.cache_dir={work / 'features'}"]
    found: dict = {"full": {}, "kshot": {}}
    for init in INITS:
        out = work / "probe" / init
        command("linear-probe", *base, f"linear_probe.init={init}", f"linear_probe.results_dir={out}")
        found["full"][init] = results(out)
        for k in SHOTS:
            out = work / "probe" / f"{init}-{k}"
            command("linear-probe", *base, f"linear_probe.init={init}", f"linear_probe.shots={k}",
                    f"linear_probe.results_dir={out}")
            found["kshot"][(init, k)] = results(out)["probe"]
    return found


def calibration_rows(spec: Path, shared: list[str], work: Path) -> dict:
    classes = work / "demo" / "data" / "classes"
    found = {}
    for scoring in ("softmax", "sigmoid"):
        out = work / "calibrate" / scoring
        command("calibrate", "-c", str(spec), *shared, f"calibrate.val_dir={classes / 'train'}",
                f"calibrate.test_dir={classes / 'test'}", f"calibrate.scoring={scoring}", f"calibrate.results_dir={out}")
        found[scoring] = results(out)
    return found


def reid_row(spec: Path, shared: list[str], work: Path) -> dict:
    detections = work / "demo" / "data" / "detections" / "detections.json"
    command("inference", "-c", str(spec), *shared, f"inference.detections={detections}",
            f"inference.results_dir={work / 'reid'}")
    command("evaluate", "-c", str(spec), *shared, f"evaluate.reid_query={work / 'reid' / 'object_embeddings.h5'}", f"evaluate.results_dir={work / 'reid'}")
    return results(work / "reid")["reid"]


def plot_kshot(found: dict, zero_shot: float, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for init in INITS:
        means = [found[(init, k)]["top1_mean"] for k in SHOTS]
        stds = [found[(init, k)]["top1_std"] for k in SHOTS]
        ax.errorbar(SHOTS, means, yerr=stds, marker="o", capsize=3, label=f"init = {init}")
    ax.axhline(zero_shot, color="grey", linestyle="--", label="zero-shot")
    ax.set(xscale="log", xticks=SHOTS, xticklabels=[str(k) for k in SHOTS], xlabel="training images per class (k)",
           ylabel="test top-1 (mean ± std, 5 draws)", title="k-shot linear probe, demo shapes (6 classes)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return path


# --------------------------------------------------------------------------- speed
def speed_variants(spec: Path, shared: list[str], work: Path) -> dict:
    import torch

    from core.cli.inference import infer
    from core.eval.embed import open_encoder
    from core.runtime.distributed import World
    from core.spec.load import load_config

    frames = work / "frames" / "detections"
    whole = load_config(spec, [*shared, f"inference.datasets=[{{image_dir = \"{frames / 'frames'}\"}}]"])
    objects = load_config(spec, [*shared, f"inference.detections={frames / 'detections.json'}"])
    encoder = open_encoder(whole, "inference", "cpu")
    world = World(0, 1, 0, torch.device("cpu"))
    counts = {"frames": len(list((frames / "frames").glob("*.png"))),
              "boxes": len(json.loads((frames / "detections.json").read_text())["annotations"])}

    def timed(cfg, out: Path):
        def variant() -> dict[str, float]:
            start = time.perf_counter()
            infer(cfg, encoder, world, out)
            return {"seconds": time.perf_counter() - start}
        return variant

    return counts, {"whole images": timed(whole, work / "speed" / "whole"),
                    "objects": timed(objects, work / "speed" / "objects")}


# --------------------------------------------------------------------------- report
def report(probes: dict, calibration: dict, reid: dict, rounds: protocol.Rounds, counts: dict) -> str:
    full = probes["full"]
    zero = full["random"]["zeroshot"]["top1"]
    lines = ["**Probe vs zero-shot** (6 classes, 600 training / 300 test images)", "",
             "| classifier | top-1 | top-5 |", "|---|---|---|",
             f"| zero-shot (class prompts) | {zero:.3f} | {full['random']['zeroshot']['top5']:.3f} |"]
    for init in INITS:
        lines.append(f"| linear probe, init = {init} (λ = {full[init]['probe']['lambda']:.3g}) | "
                     f"{full[init]['probe']['top1']:.3f} | {full[init]['probe']['top5']:.3f} |")
    lines += ["", "**k-shot** (test top-1, mean ± std over 5 draws; `kshot.png`)", "",
              "| k | " + " | ".join(str(k) for k in SHOTS) + " |", "|---" * (len(SHOTS) + 1) + "|"]
    for init in INITS:
        cells = [f"{probes['kshot'][(init, k)]['top1_mean']:.3f} ± {probes['kshot'][(init, k)]['top1_std']:.3f}"
                 for k in SHOTS]
        lines.append(f"| init = {init} | " + " | ".join(cells) + " |")
    lines += ["", "**Calibration of the zero-shot classifier** (fitted on the training folders, measured on "
              "the test folders)", "", "| scoring | fitted | ECE before | ECE after | NLL before | NLL after |",
              "|---|---|---|---|---|---|"]
    for scoring, found in calibration.items():
        fitted = f"T = {found['temperature']:.3g}" + (f", b = {found['offset']:.3g}" if scoring == "sigmoid" else "")
        lines.append(f"| {scoring} | {fitted} | {found['ece_before']:.3f} | {found['ece_after']:.3f} | "
                     f"{found['nll_before']:.3f} | {found['nll_after']:.3f} |")
    lines += ["", f"**Re-identification** ({reid['query_objects']} boxes of 12 objects in 60 frames, two cameras; "
              "each box against the others, same camera excluded)", "",
              "| rank-1 | rank-5 | rank-10 | mAP |", "|---|---|---|---|",
              f"| {reid['rank-1']:.3f} | {reid['rank-5']:.3f} | {reid['rank-10']:.3f} | {reid['mAP']:.3f} |"]
    whole, objects = (rounds.values(v, "seconds") for v in ("whole images", "objects"))
    lines += ["", f"**Object embeddings vs whole images** (`core inference`, {counts['frames']} frames, "
              f"{counts['boxes']} boxes)", "", "| | seconds | frames/s | boxes/s |", "|---|---|---|---|",
              f"| whole images | {statistics.median(whole):.2f} | {counts['frames'] / statistics.median(whole):.0f} | |",
              f"| objects | {statistics.median(objects):.2f} | {counts['frames'] / statistics.median(objects):.0f} | "
              f"{counts['boxes'] / statistics.median(objects):.0f} |", "",
              f"objects / whole images, time per round: {rounds.ratio('objects', 'whole images', 'seconds')} "
              f"for {counts['boxes'] / counts['frames']:.2f} boxes per frame", "", rounds.footer()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--work", type=Path, required=True, help="work folder (kept: a second run reuses the demo)")
    parser.add_argument("--frames", type=int, default=1500, help="detection frames of the speed rows (default 1500)")
    protocol.add_arguments(parser)
    args = parser.parse_args()
    rounds = protocol.Rounds.from_args(args)
    spec, shared = prepare(args.work, args.frames)
    probes = probe_rows(spec, shared, args.work)
    calibration = calibration_rows(spec, shared, args.work)
    reid = reid_row(spec, shared, args.work)
    plot_kshot(probes["kshot"], probes["full"]["random"]["zeroshot"]["top1"], args.work / "kshot.png")
    counts, variants = speed_variants(spec, shared, args.work)
    rounds.run(variants)
    print(report(probes, calibration, reid, rounds, counts))


if __name__ == "__main__":
    main()
