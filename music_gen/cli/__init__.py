"""The ``music-gen`` command: one entry point, a subcommand per job.

Each job has its own module here (``data``, ``codec``, ``generate``, ``transcribe``, ``train`` with
``tune`` and ``evaluate``, ``report`` with ``compare``, ``registry``, ``serve``, ``submit``,
``demo``, ``config``); each subcommand is an ``add_*`` function that declares its flags and
points ``run`` at a small handler. Heavy imports (torch, ray, mlflow) happen inside
handlers so ``music-gen --help`` stays fast. User mistakes raise
``MusicGenError`` and come out as one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import sys

from music_gen.errors import MusicGenError

# The platform phones nobody unless the user opts in.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Library-internal saves and loads are not worth a progress bar each.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from music_gen.cli.bench import add_bench
from music_gen.cli.codec import add_codec
from music_gen.cli.common import split_overrides
from music_gen.cli.config import add_config
from music_gen.cli.data import add_data
from music_gen.cli.demo import add_demo
from music_gen.cli.export import add_export
from music_gen.cli.generate import add_generate
from music_gen.cli.interactive import add_interactive
from music_gen.cli.registry import add_registry
from music_gen.cli.report import add_compare, add_report
from music_gen.cli.serve import add_serve
from music_gen.cli.submit import add_submit
from music_gen.cli.train import add_evaluate, add_train, add_tune
from music_gen.cli.transcribe import add_transcribe

__all__ = ["build_parser", "main", "split_overrides"]

COMMANDS = [
    add_generate, add_demo, add_data, add_codec, add_train, add_tune, add_evaluate,
    add_registry, add_serve, add_submit,
    add_interactive, add_report, add_compare, add_export, add_bench, add_transcribe,
    add_config,
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="music-gen", description="Train and serve text-to-music models on Ray."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    rest, overrides = split_overrides(sys.argv[1:] if argv is None else list(argv))
    args = parser.parse_args(rest)
    if overrides and not getattr(args, "takes_overrides", False):
        parser.error(f"'{args.command}' takes no config overrides ({overrides[0]})")
    args.overrides = overrides
    try:
        return int(args.run(args) or 0)
    except MusicGenError as exc:
        print(f"music-gen: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("music-gen: interrupted", file=sys.stderr)
        return 130
