"""Write a complete, commented spec: every section and field with its meaning, valid values and
default. The file loads back to the default config; fill in your data and run
`core validate -c clip.toml`. ``--format json-schema`` writes the same spec as a JSON Schema
(draft 2020-12), for form builders and validators."""

from __future__ import annotations

import argparse
import sys

from core.spec.load import ACTIONS, get_json_schema, get_spec, write_spec_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--action", choices=ACTIONS, default=None,
                        help="write the sections this action reads first (every section is always written)")
    parser.add_argument("--format", choices=("toml", "json-schema"), default="toml",
                        help="toml: the commented spec file; json-schema: its JSON Schema (draft 2020-12), with "
                             "types, defaults, descriptions, enums, ranges and required fields, plugin sections included")
    parser.add_argument("-o", "--output", metavar="FILE", help="file to write (default: standard output)")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")


def run(args: argparse.Namespace) -> int:
    write = get_json_schema if args.format == "json-schema" else get_spec
    write_spec_file(write(args.action), args.output, force=args.force)
    if args.output:
        print(f"wrote {args.output}", file=sys.stderr)
    return 0
