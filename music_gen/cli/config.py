"""`music-gen config reference`: every config key, from the schema, as Markdown."""

from __future__ import annotations

import argparse


def add_config(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "config",
        help="the configuration reference",
        description="About the typed configs that --config files and dotted overrides set.",
    )
    actions = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    r = actions.add_parser(
        "reference",
        help="every config key with its type, default and description, as Markdown",
        description="Render every section of the config (model, codec, codec.train, data, "
        "train, tune, serve, ...) as Markdown tables: dotted key, type, default, "
        "description, from the schema in music_gen/config.py. The repository's "
        "docs/configuration.md is its output: "
        "`music-gen config reference --output docs/configuration.md` refreshes it.",
    )
    r.add_argument("--output", "-o", help="write the Markdown to this file (default: print it)")
    r.set_defaults(run=run_reference)


def run_reference(args: argparse.Namespace) -> int:
    from music_gen import outputs
    from music_gen.config_reference import render_reference

    if args.output:
        path = outputs.check_file(args.output, "--output")
        outputs.write_text(path, render_reference())
        print(f"wrote {path}")
    else:
        print(render_reference(), end="")
    return 0
