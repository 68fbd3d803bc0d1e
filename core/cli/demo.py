"""``core demo``: generate the demo data, train a small CLIP from scratch (a few minutes on two CPU
cores), and print its retrieval metrics before and after training.

Everything goes through the normal spec and actions: the spec is written to ``OUT/demo.toml``
(train and evaluate read it as they would any ``clip.toml``), the data to ``OUT/data``
(``core demo-data``), the run to ``OUT/results/train`` and the metrics to
``OUT/results/evaluate/{before,results}.json``.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from core.errors import ClipcoreError

#: The demo spec (a template: {spec}, {results}, {epochs}, {seed}); the embedded default of `core demo`.
SPEC = Path(__file__).with_name("demo.toml")

#: What the demo should reach on its 500-pair validation split, in both directions.
TARGET = {"R@1": 0.3, "R@5": 0.7}
SHOWN = ("R@1", "R@5", "R@10", "mAP", "MedR")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", nargs="?", default="demo", help="output folder (default: demo)")
    parser.add_argument("--n", type=int, default=5000, help="training pairs (default 5000)")
    parser.add_argument("--val", type=int, default=500, help="validation pairs (default 500)")
    parser.add_argument("--epochs", type=int, default=6, help="training epochs (default 6)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the model and the run")
    parser.add_argument("--force", action="store_true", help="replace a previous demo in OUT")


#: Loader settings the demo adds to the ``[dataset]`` section ``core demo-data`` writes.
LOADERS = {"train": {"batch_size": 64, "num_workers": 1}, "val": {"batch_size": 250, "num_workers": 0}}


def write_spec(out: Path, *, epochs: int, seed: int) -> Path:
    """``OUT/demo.toml``: the demo spec, writing ``OUT/results``; its ``[dataset]`` section is
    the one ``core demo-data`` wrote beside ``OUT/data`` (its paths, caption mode and the
    augmentation that keeps what the captions describe), plus the demo's loader settings."""
    import tomli
    import tomli_w

    dataset = tomli.loads((out / "data" / "dataset.toml").read_text(encoding="utf-8"))["dataset"]
    dataset["seed"] = seed
    for split, settings in LOADERS.items():
        dataset[split].update(settings)
    spec = out / "demo.toml"
    text = SPEC.read_text(encoding="utf-8").format(spec=spec, results=(out / "results").as_posix(), epochs=epochs, seed=seed)
    spec.write_text(text + "\n" + tomli_w.dumps({"dataset": dataset}), encoding="utf-8")
    return spec


def run(args: argparse.Namespace) -> None:
    import torch
    from rich.console import Console

    from core import spec
    from core.cli import demo_data
    from core.cli.evaluate import write_results

    console = Console()
    out = Path(args.out).resolve()
    if (out / "results").exists() or (out / "data").exists():
        if not args.force:
            raise ClipcoreError(f"{out} already holds a demo (data/ or results/)", where="core demo",
                                fix="pass --force to replace it, or choose another output folder")
        shutil.rmtree(out / "results", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    demo_data.generate(out / "data", n=args.n, val=args.val, seed=args.seed, force=True)
    path = write_spec(out, epochs=args.epochs, seed=args.seed)
    cfg = spec.load_config(path)
    spec.check(cfg, "train")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    console.print(f"spec: {path}")

    before = evaluate_model(cfg, None, device)
    write_results(before, out / "results" / "evaluate" / "before.json")
    from core.cli.train import train
    from core.train.trainer import train_dir

    start = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - start
    after = evaluate_model(cfg, train_dir(cfg) / "latest.pth", device)
    results_path = write_results(after, out / "results" / "evaluate" / "results.json")
    print_comparison(console, before, after, seconds=seconds, device=device)
    console.print(f"checkpoint: {train_dir(cfg) / 'latest.pth'}; metrics: {results_path}; "
                  f"curves: {train_dir(cfg) / 'training_curves.png'}", markup=False)


def evaluate_model(cfg, checkpoint: Path | None, device) -> dict:
    """``core evaluate``'s retrieval results for the trained ``checkpoint``, or (``None``) for the
    model as training starts it (same seed, same initial weights)."""
    from core.runtime.build import build_model
    from core.runtime.distributed import World
    from core.eval.embed import ModelEncoder
    from core.cli.evaluate import evaluate
    from core.registry import get_registry
    from core.spec.load import action_dir
    from core.train.trainer import seed_everything

    loss = None  # the untrained model is built as training starts it, with the loss's logit init
    if checkpoint is None:
        loss = get_registry().get("losses", cfg.train.loss_type, key="train.loss_type")
        seed_everything(cfg.train.seed)
    model = build_model(cfg, None if checkpoint is None else str(checkpoint), loss=loss).to(device).eval()
    source = {"checkpoint": str(checkpoint) if checkpoint else "untrained (random init)"}
    return evaluate(cfg, ModelEncoder(model, device, source=source), World(0, 1, 0, device),
                    action_dir(cfg, "evaluate"))


def print_comparison(console, before: dict, after: dict, *, seconds: float, device) -> None:
    from rich.table import Table

    table = Table(title=f"retrieval on {after['num_images']} images / {after['num_texts']} captions",
                  caption=f"chance R@1 = {1 / after['num_images']:.3f}")
    table.add_column("metric")
    for direction in ("i2t", "t2i"):
        table.add_column(f"{direction} before", justify="right")
        table.add_column(f"{direction} after", justify="right")
    for name in SHOWN:
        row = []
        for direction in ("i2t", "t2i"):
            row += [f"{before[f'{direction}_{name}']:.3f}", f"{after[f'{direction}_{name}']:.3f}"]
        table.add_row(name, *row)
    console.print(table)
    met = all(after[f"{d}_{k}"] >= v for d in ("i2t", "t2i") for k, v in TARGET.items())
    target = ", ".join(f"{k} >= {v}" for k, v in TARGET.items())
    console.print(f"trained in {seconds:.0f} s on {device}; target ({target} both ways): "
                  + ("[bold green]met[/]" if met else "[bold red]not met[/]"))
