"""The ``core`` command line.

``core <action> -c clip.toml [section.key=value ...]`` runs one of TAO's actions; the other
commands are tools. Each command lives in its own module: an action module defines
``run(cfg, args)`` (and optionally ``add_arguments(parser)``); a tool module defines
``add_arguments(parser)`` and ``run(args)``. A :class:`core.errors.ClipcoreError` is printed as
one message with exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
from typing import Sequence

import attrs

from core.errors import ClipcoreError, file_system_error


@attrs.frozen
class Command:
    module: str
    help: str
    action: bool = False
    section: str | None = None  # an action's spec section, when it differs from the command's name
    checked: bool = True  # an action whose rules are checked before it runs (`run` checks each step itself)


COMMANDS: dict[str, Command] = {
    "train": Command("core.cli.train", "Fine-tune a model (launches torchrun for several GPUs or nodes).", action=True),
    "evaluate": Command("core.cli.evaluate", "Retrieval metrics (and zero-shot classification) of a checkpoint, "
                                         "pretrained weights, ONNX model or engine.", action=True),
    "inference": Command("core.cli.inference", "Image and text embeddings to HDF5.", action=True),
    "export": Command("core.cli.export", "Export to ONNX (combined or separate towers) with sidecars.", action=True),
    "gen_trt_engine": Command("core.cli.gen_trt_engine", "Build inference engines from an ONNX export (engine-builder plugins).", action=True),
    "run": Command("core.cli.run", "Run the chain train → evaluate → export → gen_trt_engine, each step on its "
                                   "parent's outputs, skipping steps whose outputs are up to date.",
                   action=True, checked=False),
    "get-spec": Command("core.cli.get_spec", "Write a complete, commented spec file (or its JSON Schema)."),
    "convert-spec": Command("core.cli.convert_spec", "Convert a TAO YAML experiment spec to clip.toml."),
    "validate": Command("core.cli.validate", "Check a spec without running anything."),
    "plugins": Command("core.cli.plugins", "List installed plugins, or check one against the conformance kit."),
    "demo-data": Command("core.cli.demo_data", "Generate a synthetic image-caption dataset."),
    "demo": Command("core.cli.demo", "Generate demo data, train a small model on CPU and evaluate it."),
    "search": Command("core.cli.search", "Search image embeddings with text or image queries."),
    "index": Command("core.cli.index", "Build or extend a FAISS vector index of image or object embeddings."),
    "hpo": Command("core.cli.hpo", "Hyper-parameter search over spec fields (Optuna), each trial a real training run."),
    "linear-probe": Command("core.cli.linear_probe", "Fit a linear-probe classifier on frozen image embeddings of "
                                                     "class folders (full or k-shot).", action=True,
                            section="linear_probe"),
    "calibrate": Command("core.cli.calibrate", "Calibrated probabilities for a probe or zero-shot classifier "
                                               "(temperature, per-class thresholds; ECE before and after).",
                         action=True),
    "wise-ft": Command("core.cli.wise_ft", "Interpolate starting and fine-tuned weights (WiSE-FT), score each α on "
                                           "the target and guard sets, keep the best within a guard drop."),
}

ACTION_EPILOG = """\
overrides: dotted `section.key=value` pairs after the options, e.g.
  train.num_epochs=50 results_dir=/x dataset.train.datasets.0.image_dir=/data/images
precedence: command line > spec file > defaults. `core get-spec` writes a commented spec."""


def _available() -> dict[str, Command]:
    """Commands whose module is present (an action is listed only once it is built)."""
    return {name: cmd for name, cmd in COMMANDS.items() if importlib.util.find_spec(cmd.module) is not None}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="core", description="clipcore: fine-tune, evaluate, embed with, export and deploy "
                                 "CLIP-family models. `core <command> --help` for details.")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, cmd in _available().items():
        module = importlib.import_module(cmd.module)
        p = sub.add_parser(name, help=cmd.help, description=(module.__doc__ or cmd.help).strip(),
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog=ACTION_EPILOG if cmd.action else None)
        if cmd.action:
            _add_action_arguments(p, cmd.section or name)
        if hasattr(module, "add_arguments"):
            module.add_arguments(p)
        p.set_defaults(_command=cmd, _module=module)
    return parser


GPU_ACTIONS = ("train", "evaluate", "inference", "linear_probe", "calibrate")  # the actions with a `num_gpus` field


def _add_action_arguments(p: argparse.ArgumentParser, action: str) -> None:
    p.add_argument("-c", "--config", "-e", "--experiment_spec_file", dest="config", metavar="SPEC",
                   help="spec file (clip.toml); `-e` is TAO's alias")
    p.add_argument("-r", "--results_dir", help="shortcut for results_dir=...")
    if action in GPU_ACTIONS:
        p.add_argument("-g", "--num_gpus", type=int, help=f"shortcut for {action}.num_gpus=...")
    p.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted overrides")


def action_overrides(args: argparse.Namespace, action: str) -> list[str]:
    """The dotted overrides of an action's command line, shortcuts first (explicit ones win)."""
    out = []
    if args.results_dir:
        out.append(f"results_dir={args.results_dir}")
    if getattr(args, "num_gpus", None) is not None:
        out.append(f"{action}.num_gpus={args.num_gpus}")
    return out + list(args.overrides)


def show_logs() -> None:
    """Print the INFO (and higher) records of clipcore and of the installed plugins' packages on
    stderr, once per process (without it Python shows warnings only, unformatted)."""
    import logging
    from importlib.metadata import entry_points

    from rich.console import Console
    from rich.logging import RichHandler

    packages = {ep.value.partition(":")[0].split(".")[0] for ep in entry_points(group="clipcore.plugins")}
    for name in sorted({"clipcore", *packages}):
        logger = logging.getLogger(name)
        if not any(getattr(h, "clipcore_cli", False) for h in logger.handlers):
            handler = RichHandler(console=Console(stderr=True), show_path=False, show_time=False, markup=False)
            handler.clipcore_cli = True
            logger.addHandler(handler)
            logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    show_logs()
    try:
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        # dotted overrides may also follow an action's options (argparse takes positionals only once)
        overrides = [a for a in rest if "=" in a and not a.startswith("-")] if args._command.action else []
        if len(overrides) != len(rest):
            parser.error("unrecognized arguments: " + " ".join(a for a in rest if a not in overrides))
        if overrides:
            args.overrides = list(args.overrides) + overrides
        if args._command.action:
            from core import spec

            action = args._command.section or args.command
            cfg = spec.load_config(args.config, action_overrides(args, action))
            if args._command.checked:
                spec.check(cfg, action)
            return args._module.run(cfg, args) or 0
        return args._module.run(args) or 0
    except (ClipcoreError, OSError, RuntimeError) as exc:
        err = exc if isinstance(exc, ClipcoreError) else file_system_error(exc)
        if err is None:
            raise
        from rich.console import Console
        from rich.text import Text

        Console(stderr=True, highlight=False, soft_wrap=True).print(
            Text("error: ", style="bold red") + Text(err.message))
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
