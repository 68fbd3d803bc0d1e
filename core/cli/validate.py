"""Check a spec without running anything: load it (with overrides) and apply the cross-field rules
of every action whose section it writes (or of each --action). Prints `ok` and a short summary,
or every problem found."""

from __future__ import annotations

import argparse

from core.spec.load import ACTIONS, action_dir, check, configured_actions, load_spec


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", "-e", "--experiment_spec_file", dest="config", metavar="SPEC",
                        required=True, help="spec file (clip.toml); `-e` is TAO's alias")
    parser.add_argument("--action", action="append", choices=ACTIONS,
                        help="check for this action (repeatable; default: every action the spec configures)")
    parser.add_argument("--skip-path-checks", action="store_true",
                        help="do not require input files and folders to exist (a spec for another machine)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="dotted overrides")


def run(args: argparse.Namespace) -> int:
    loaded = load_spec(args.config, args.overrides)
    actions = args.action or configured_actions(loaded.data)
    check(loaded.config, actions, check_paths=not args.skip_path_checks)
    cfg = loaded.config
    print(f"ok: {args.config}")
    print(f"  model.type: {cfg.model.type}")
    if actions:
        for action in actions:
            print(f"  {action}: checked, writes to {action_dir(cfg, action)}")
    else:
        print("  no action sections: loaded only (use --action to check one)")
    return 0
