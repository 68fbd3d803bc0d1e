"""WiSE-FT: ``core wise-ft -c clip.toml --finetuned CKPT [--alphas 0:1:0.1] [--max-drop 0.01]``.

Interpolates the starting weights θ₀ (``train.pretrained_model_path``, else ``model.pretrained``
built as training starts it) and the fine-tuned ones θ₁ (LoRA adapters merged first):
θ(α) = (1 − α)·θ₀ + α·θ₁. Each α is evaluated on ``dataset.val`` (the target, ``train.best_metric``)
and on the guard set ``dataset.reference`` (``train.reference_metric``). The chosen α is the one with
the best target metric whose guard metric dropped at most ``--max-drop`` below α = 0 (the best
target metric when there is no guard set). Writes to ``<results_dir>/wise_ft/``: ``results.json``
(every α, the rule, the choice), ``wise_ft.png`` (target against guard metric, one point per α) and
``wise_ft.pth`` (the chosen weights, with ``wise_ft.alpha`` recorded).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from core.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", "-e", dest="config", metavar="SPEC", required=True, help="spec file (clip.toml)")
    parser.add_argument("--finetuned", required=True, help="the fine-tuned clipcore checkpoint (θ₁)")
    parser.add_argument("--alphas", default="0:1:0.1",
                        help="start:stop:step (stop included) or a comma-separated list, each in [0, 1] (default 0:1:0.1)")
    parser.add_argument("--max-drop", type=float, default=0.01,
                        help="largest drop of train.reference_metric below α = 0 the chosen α may have (default 0.01)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted overrides")


def parse_alphas(text: str) -> list[float]:
    """``0:1:0.1`` (stop included) or ``0,0.5,1``; every value in [0, 1]."""
    fix = 'use start:stop:step, e.g. "0:1:0.1", or a list, e.g. "0,0.5,1"; values in [0, 1]'
    try:
        if ":" in text:
            start, stop, step = (float(x) for x in text.split(":"))
            if step <= 0 or stop < start:
                raise ValueError
            values = [round(start + i * step, 10) for i in range(int(math.floor((stop - start) / step + 1e-9)) + 1)]
        else:
            values = [float(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"cannot read {text!r} as alphas", where="--alphas", fix=fix) from None
    if not values or any(not 0 <= a <= 1 for a in values):
        raise ConfigError(f"alphas {text!r} are not all in [0, 1]", where="--alphas", fix=fix)
    return sorted(set(values))


def interpolate(start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """θ(α) = (1 − α)·θ₀ + α·θ₁ for floating-point tensors (others taken from θ₁)."""
    return {k: torch.lerp(start[k].float(), end[k].float(), alpha).to(end[k].dtype) if end[k].is_floating_point()
            else end[k] for k in end}


def choose(rows: list[dict[str, Any]], target: str, guard: str | None, max_drop: float) -> dict[str, Any]:
    """The row with the best ``target`` among those whose ``guard`` fell at most ``max_drop``
    below the α = 0 row's (all rows without a guard)."""
    allowed = rows
    if guard is not None:
        baseline = rows[0]["metrics"][guard]
        allowed = [r for r in rows if baseline - r["metrics"][guard] <= max_drop + 1e-12] or rows[:1]
    return max(allowed, key=lambda r: r["metrics"][target])


def run(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    from core.registry import get_registry
    from core.runtime.build import build_model
    from core.runtime.checkpoint import model_checkpoint, save_atomic, write_text_atomic
    from core.runtime.distributed import World
    from core.spec.load import action_dir, check, load_config
    from core.train.trainer import seed_everything
    from core.train.validation import Validator

    alphas = parse_alphas(args.alphas)
    cfg = load_config(args.config, args.overrides)
    check(cfg, "evaluate")
    if not cfg.dataset.val.datasets:
        raise ConfigError("WiSE-FT scores each α on the target set, but dataset.val.datasets is empty",
                          where="dataset.val.datasets", fix="add [[dataset.val.datasets]] (the fine-tuning task's "
                                                            "validation pairs)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    loss = get_registry().get("losses", cfg.train.loss_type, key="train.loss_type")  # the logit init training used
    seed_everything(cfg.train.seed)  # a random start is rebuilt exactly as training built it
    start = build_model(cfg, cfg.train.pretrained_model_path, key="train.pretrained_model_path", loss=loss)
    tuned = build_model(cfg, args.finetuned, key="--finetuned").to(device).eval()
    theta0 = {k: v.to(device) for k, v in start.state_dict().items()}
    theta1 = {k: v.clone() for k, v in tuned.state_dict().items()}
    if theta0.keys() != theta1.keys():
        differ = sorted(theta0.keys() ^ theta1.keys())
        raise ConfigError(f"{args.finetuned} does not have the starting model's parameters (e.g. {differ[:2]})",
                          where="--finetuned", fix="use a checkpoint fine-tuned from this spec's starting weights")
    out = action_dir(cfg, "wise_ft")
    validator = Validator(cfg, tuned, World(0, 1, 0, device), out)
    has_guard = bool(cfg.dataset.reference.datasets or cfg.dataset.reference.classification_dir)
    target, guard = cfg.train.best_metric, cfg.train.reference_metric if has_guard else None
    rows = []
    for alpha in alphas:
        tuned.load_state_dict(interpolate(theta0, theta1, alpha))
        metrics = validator.run()
        for name in (target, guard):
            if name is not None and name not in metrics:
                raise ConfigError(f"{name} is not measured", where="train.best_metric" if name == target
                                  else "train.reference_metric", fix="choose one of: " + ", ".join(sorted(metrics)))
        rows.append({"alpha": alpha, "metrics": metrics})
    chosen = choose(rows, target, guard, args.max_drop)
    tuned.load_state_dict(interpolate(theta0, theta1, chosen["alpha"]))
    record = {"alpha": chosen["alpha"], "finetuned": str(args.finetuned), "target": target, "guard": guard,
              "max_drop": args.max_drop}
    checkpoint = save_atomic(model_checkpoint(tuned.cpu(), wise_ft=record), out / "wise_ft.pth")
    results = write_text_atomic(json.dumps({"rule": record, "alphas": rows}, indent=2) + "\n", out / "results.json")
    plot = _plot(rows, target, guard, chosen["alpha"], out / "wise_ft.png")
    table = Table(title=f"WiSE-FT: {target}" + (f" against {guard}" if guard else ""))
    table.add_column("α", justify="right")
    table.add_column(target, justify="right")
    if guard:
        table.add_column(guard, justify="right")
    for row in rows:
        mark = " ←" if row is chosen else ""
        table.add_row(f"{row['alpha']:.2f}{mark}", f"{row['metrics'][target]:.4f}",
                      *([f"{row['metrics'][guard]:.4f}"] if guard else []))
    console = Console()
    console.print(table)
    console.print(f"chose α = {chosen['alpha']:.2f}; checkpoint: {checkpoint}; results: {results}; plot: {plot}",
                  markup=False)


def _plot(rows: Sequence[dict[str, Any]], target: str, guard: str | None, chosen: float, path: Path) -> Path:
    from core.plots import png

    xs = [r["metrics"][guard] if guard else r["alpha"] for r in rows]
    ys = [r["metrics"][target] for r in rows]
    with png(path, figsize=(5, 4), dpi=120) as (_, ax):
        ax.plot(xs, ys, "o-")
        for x, y, row in zip(xs, ys, rows):
            ax.annotate(f"{row['alpha']:.1f}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8,
                        weight="bold" if row["alpha"] == chosen else "normal")
        ax.set(xlabel=guard or "α", ylabel=target, title="WiSE-FT: one point per α")
    return path
