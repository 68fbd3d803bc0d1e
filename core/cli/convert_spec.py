"""Convert a TAO CLIP YAML experiment spec to clip.toml. Every value is kept (a null becomes an
unset key); TAO keys that have no effect in clipcore (encryption_key, TAO 7.1-era options) are
dropped and listed, with the reason, at the top of the output; TAO's legacy key names are renamed,
and its W&B table becomes the W&B logger's table under ``train``."""

from __future__ import annotations

import argparse
import sys

from core.spec.load import convert_tao_spec, write_spec_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tao_spec", metavar="TAO_SPEC.yaml", help="the TAO experiment spec")
    parser.add_argument("-o", "--output", metavar="FILE", help="file to write (default: standard output)")
    parser.add_argument("--force", action="store_true", help="overwrite FILE if it exists")


def run(args: argparse.Namespace) -> int:
    text = convert_tao_spec(args.tao_spec)
    write_spec_file(text, args.output, force=args.force)
    if args.output:
        header = text.partition("\n\n")[0]  # what was converted, dropped and renamed
        print(f"{header}\nwrote {args.output}", file=sys.stderr)
    return 0
