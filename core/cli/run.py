"""Run the whole chain: ``core run -c clip.toml [--until STEP] [--force]``.

Steps, in order: train → evaluate → export → gen_trt_engine. Each step takes its parent's
artefacts, as TAO's job chaining does, through the same dotted overrides a user would type:
evaluate and export get ``checkpoint=<results_dir>/train/best.pth`` (``latest.pth`` when training
had no validation), gen_trt_engine gets ``onnx_file=`` the export. Each step is checked
(``core validate``'s rules) just before it runs and logs what it picked.

- A step is **skipped** when ``run.json`` records it as done with the same settings (the spec
  sections it reads) and its outputs exist and are newer than its inputs; ``--force`` redoes
  every step. A step's done record survives runs that stop before it, or that are refused by its
  rules; it is dropped the moment the step starts replacing its outputs.
- evaluate is skipped when there is nothing to score (no ``dataset.val`` data, no
  ``evaluate.classification_dir``); gen_trt_engine when no engine builder can run on this machine
  (the reason is logged), unless ``--until gen_trt_engine`` asks for it.
- A failing step stops the chain with its message; the earlier steps' outputs stay as they are.
- ``<results_dir>/run.json`` records this run's steps (status, seconds, what it picked, its
  outputs, key metrics, or its error) and, under ``done``, the last completed record of every step;
  it is rewritten atomically after each step.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import time
from pathlib import Path
from typing import Any, Callable

import attrs
from rich.console import Console
from rich.markup import escape

from core.artifact import tower_paths
from core.errors import ClipcoreError, file_system_error

STEPS = ("train", "evaluate", "export", "gen_trt_engine")
#: The spec sections whose values decide whether a step's earlier output still holds.
STEP_SECTIONS = {"train": ("model", "train", "dataset"), "evaluate": ("model", "evaluate", "dataset"),
                 "export": ("model", "export", "dataset"), "gen_trt_engine": ("gen_trt_engine", "export", "dataset")}
RUN_FILE = "run.json"
console = Console(stderr=True, highlight=False, soft_wrap=True)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--until", choices=STEPS, help="the last step to run (default: every step; "
                                                        "gen_trt_engine only where an engine builder can run)")
    parser.add_argument("--force", action="store_true", help="redo every step, even when its outputs are up to date")


@attrs.define
class Step:
    """One step of a run: what it picked, what it wrote, and how it went (a ``run.json`` entry)."""

    name: str
    status: str = "pending"  # ran | skipped | failed
    reason: str | None = None
    seconds: float = 0.0
    picked: dict[str, str] = attrs.Factory(dict)
    outputs: list[str] = attrs.Factory(list)
    metrics: dict[str, Any] = attrs.Factory(dict)
    settings: str = ""  # digest of the spec sections the step reads
    error: str | None = None


def run(cfg, args: argparse.Namespace) -> int:
    from core import spec
    from core.cli.main import COMMANDS
    from core.spec.load import load_config

    record_path = Path(cfg.results_dir) / RUN_FILE
    found = _read_record(record_path)
    done: dict[str, dict] = found.get("done") or {s["name"]: s for s in found.get("steps", [])
                                                  if s.get("status") in ("ran", "skipped") and s.get("settings")}
    steps: list[Step] = []
    record = {"spec": args.config, "overrides": list(args.overrides), "until": args.until, "force": args.force,
              "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "status": "running", "steps": steps, "done": done}
    chained: list[str] = []  # the dotted overrides that pass artefacts down the chain
    for name in STEPS[: STEPS.index(args.until or STEPS[-1]) + 1]:
        step = Step(name)
        steps.append(step)
        started = time.monotonic()
        try:
            step_args = _step_args(args, name, chained)
            step_cfg = load_config(args.config, _overrides(step_args))
            plan = PLANS[name](step_cfg, step, args, done.get(name))
            if plan is None:
                step.status = "skipped"
            else:
                step.settings = _settings(step_cfg, name)
                if not args.force and _up_to_date(step, done.get(name), plan):
                    step.status, step.reason = "skipped", "outputs up to date (--force redoes it)"
                else:
                    step_args.overrides += plan.extra
                    step_cfg = load_config(args.config, _overrides(step_args))
                    spec.check(step_cfg, name)  # a refused step leaves its last done record as it was
                    done.pop(name, None)  # from here on its outputs are being replaced
                    _write_record(record, record_path)
                    plan.before_run()
                    importlib.import_module(COMMANDS[name].module).run(step_cfg, step_args)
                    step.status = "ran"
                step.outputs = [str(p) for p in plan.outputs() if p.exists()]
                step.metrics = plan.metrics()
                done[name] = attrs.asdict(step)
                chained += plan.hand_on(step_cfg)
        except BaseException as exc:  # recorded whatever it is; only clipcore's and file-system errors are reworded
            err = exc if isinstance(exc, ClipcoreError) else file_system_error(exc) if isinstance(exc, OSError) else None
            step.status, step.error = "failed", err.message if err else f"{type(exc).__name__}: {exc}"
            step.seconds = round(time.monotonic() - started, 3)
            _finish(record, record_path, "failed")
            if err is None:
                raise
            cause = f"{err.where}: {err.what}" if err.where else err.what
            then = f"run again: the steps before {name} are kept and skipped while up to date (record: {record_path})"
            raise ClipcoreError(f"the chain stopped at step {name}: {cause}", where="core run",
                                fix=f"{err.fix}; then {then}" if err.fix else then) from None
        step.seconds = round(time.monotonic() - started, 3)
        console.print(f"[bold]{name}[/bold]: {step.status}" + (f" ({escape(step.reason)})" if step.reason else "")
                      + (f" in {step.seconds:.1f} s" if step.status == "ran" else ""))
        _write_record(record, record_path)
    _finish(record, record_path, "ok")
    console.print(f"wrote {record_path}", markup=False)
    return 0


# --------------------------------------------------------------------------- the steps
@attrs.define
class Plan:
    """What a step will read and write: ``inputs`` / ``outputs`` (functions of nothing: paths may
    not exist yet), ``extra`` overrides (``force`` when it redoes earlier outputs), ``metrics``
    and ``hand_on`` (the overrides the next steps get)."""

    inputs: list[Path]
    outputs: Callable[[], list[Path]]
    extra: list[str] = attrs.Factory(list)
    metrics: Callable[[], dict[str, Any]] = dict
    hand_on: Callable[[Any], list[str]] = lambda cfg: []
    before_run: Callable[[], None] = lambda: None


def _train(cfg, step: Step, args, before: dict | None) -> Plan:
    """Hands on ``best.pth`` when this training wrote it (an older one from another run is never
    taken), else ``latest.pth``; a skipped step hands on what its recorded run handed on."""
    from core.runtime.checkpoint import BEST, LATEST
    from core.tracking import METRICS_FILE, read_metrics
    from core.train.trainer import train_dir

    folder = train_dir(cfg)
    pretrained = [Path(cfg.train.pretrained_model_path)] if cfg.train.pretrained_model_path else []
    this_run: dict[str, Any] = {}  # when the chain trains: best.pth's identity before, and the start time

    def before_run() -> None:
        this_run.update(best=_identity(folder / BEST), time=time.time())

    def checkpoint() -> Path:
        if not this_run and before and before.get("outputs"):
            return Path(before["outputs"][0])
        best = folder / BEST
        return best if best.exists() and _identity(best) != this_run.get("best") else folder / LATEST

    def metrics() -> dict[str, Any]:
        if not this_run:
            return dict(before.get("metrics", {})) if before else {}
        try:
            records = read_metrics(folder / METRICS_FILE)
        except (OSError, ValueError):
            return {}
        validated = [r for r in records if r.get("time", 0) >= this_run["time"] and any(k.startswith("val/") for k in r)]
        return {k: v for k, v in validated[-1].items() if k.startswith("val/") or k in ("epoch", "step")} if validated else {}

    def hand_on(_cfg) -> list[str]:
        found = checkpoint()
        console.print(f"train: later steps take {found}" + ("" if found.name != LATEST else
                                                             " (this training wrote no best.pth: no validation)"),
                      markup=False)
        return [f"evaluate.checkpoint={found}", f"export.checkpoint={found}"]

    return Plan(pretrained, lambda: [checkpoint()], metrics=metrics, hand_on=hand_on, before_run=before_run)


def _identity(path: Path) -> tuple[int, int] | None:
    """A file's inode and modification time (``None`` when it does not exist): a rewrite changes it."""
    try:
        found = path.stat()
    except FileNotFoundError:
        return None
    return found.st_ino, found.st_mtime_ns


def _evaluate(cfg, step: Step, args, before: dict | None) -> Plan | None:
    from core.cli.evaluate import RESULTS_FILE
    from core.spec.load import action_dir

    if not cfg.dataset.val.datasets and not cfg.evaluate.classification_dir:
        step.reason = "nothing to evaluate: no dataset.val data and no evaluate.classification_dir"
        return None
    step.picked = {"checkpoint": str(cfg.evaluate.checkpoint)}
    console.print(f"evaluate: picked {cfg.evaluate.checkpoint}", markup=False)
    results = action_dir(cfg, "evaluate") / RESULTS_FILE

    def metrics() -> dict[str, Any]:
        found = json.loads(results.read_text(encoding="utf-8")) if results.is_file() else {}
        keys = [k for k in found if k.endswith("R@1") or k.endswith("mAP")]
        top1 = found.get("classification", {}).get("top1")
        return {**{k: found[k] for k in keys}, **({"classification_top1": top1} if top1 is not None else {})}

    return Plan(_paths(cfg.evaluate.checkpoint), lambda: [results], metrics=metrics)


def _export(cfg, step: Step, args, before: dict | None) -> Plan:
    from core.cli.export import output_path
    from core.spec.load import action_dir

    onnx_file = output_path(cfg, action_dir(cfg, "export"))
    step.picked = {"checkpoint": str(cfg.export.checkpoint)}
    console.print(f"export: picked {cfg.export.checkpoint}", markup=False)

    def outputs() -> list[Path]:
        return [onnx_file] if cfg.export.encoder_type == "combined" else tower_paths(onnx_file)

    extra = ["export.force=true"] if any(p.exists() for p in outputs()) else []
    return Plan(_paths(cfg.export.checkpoint), outputs, extra=extra,
                hand_on=lambda _cfg: [f"gen_trt_engine.onnx_file={onnx_file}"])


def _gen_trt_engine(cfg, step: Step, args, before: dict | None) -> Plan | None:
    from core.cli.gen_trt_engine import engine_path
    from core.registry import get_registry
    from core.spec.load import action_dir

    engine = engine_path(cfg, action_dir(cfg, "gen_trt_engine"))
    builder = get_registry().for_suffix("engine_builders", engine, key="gen_trt_engine.trt_engine")
    reason = builder.unavailable()
    if reason and args.until != "gen_trt_engine":
        step.reason = f"the {builder.name} engine builder cannot run here: {reason}"
        return None
    onnx_file = Path(cfg.gen_trt_engine.onnx_file)
    step.picked = {"onnx_file": str(onnx_file)}
    console.print(f"gen_trt_engine: picked {onnx_file}", markup=False)
    towers = [p for p in tower_paths(onnx_file) if p.is_file()]
    inputs, outputs = ([onnx_file], [engine]) if onnx_file.is_file() or not towers else (towers, tower_paths(engine))
    return Plan(inputs, lambda: outputs)


PLANS: dict[str, Callable[..., Plan | None]] = {"train": _train, "evaluate": _evaluate, "export": _export,
                                                "gen_trt_engine": _gen_trt_engine}


# --------------------------------------------------------------------------- helpers
def _paths(value: str | None) -> list[Path]:
    return [Path(value)] if value else []


def _step_args(args: argparse.Namespace, name: str, chained: list[str]) -> argparse.Namespace:
    """The command line ``core <name>`` would have had in this chain."""
    return argparse.Namespace(command=name, config=args.config, results_dir=args.results_dir, num_gpus=None,
                              overrides=[*args.overrides, *chained], print_command=False, encoder=None, force=None)


def _overrides(step_args: argparse.Namespace) -> list[str]:
    from core.cli.main import action_overrides

    return action_overrides(step_args, step_args.command)


def _settings(cfg, name: str) -> str:
    """A digest of the spec sections ``name`` reads (plugin sections under them included)."""
    sections = STEP_SECTIONS[name]
    values = {s: attrs.asdict(getattr(cfg, s)) for s in sections}
    values["plugins"] = {p: attrs.asdict(v) for p, v in sorted(cfg.plugins.items()) if p.split(".")[0] in sections}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _up_to_date(step: Step, before: dict | None, plan: Plan) -> bool:
    """Done by the last run with the same settings, outputs present and newer than every input."""
    if not before or before.get("status") not in ("ran", "skipped") or before.get("settings") != step.settings:
        return False
    if not all(p.exists() for p in plan.inputs):
        return False
    outputs = plan.outputs()
    if not outputs or not all(p.exists() for p in outputs):
        return False
    newest_input = max((p.stat().st_mtime for p in plan.inputs if p.exists()), default=0.0)
    return min(p.stat().st_mtime for p in outputs) >= newest_input


def _read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _write_record(record: dict[str, Any], path: Path) -> None:
    from core.runtime.checkpoint import write_text_atomic

    doc = {**record, "steps": [attrs.asdict(s) for s in record["steps"]]}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(json.dumps(doc, indent=2, default=str) + "\n", path)


def _finish(record: dict[str, Any], path: Path, status: str) -> None:
    record["status"], record["finished"] = status, time.strftime("%Y-%m-%dT%H:%M:%S%z")
    _write_record(record, path)
