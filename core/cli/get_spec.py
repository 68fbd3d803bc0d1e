"""Write a complete, commented spec: every section and field with its meaning, valid values and
default. The file loads back to the default config; fill in your data and run
`core validate -c clip.toml`."""

from __future__ import annotations

import argparse
import sys

from core.spec.load import ACTIONS, get_spec, write_spec_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--action", choices=ACTIONS, default=None,
                        help="write the sections this action reads first (every section is always written)")
    parser.add_argument("-o", "--output", metavar="FILE", help="file to write (default: standard output)")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")


def run(args: argparse.Namespace) -> int:
    write_spec_file(get_spec(args.action), args.output, force=args.force)
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
