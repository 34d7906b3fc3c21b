"""What every subcommand shares: config files, dotted overrides, --verbose."""

from __future__ import annotations

import argparse
import re

# A dotted override such as `train.lr=3e-4` may stand anywhere on the line.
OVERRIDE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+=")


def config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", action="append", default=[], metavar="YAML", help="config file (repeatable)"
    )
    parser.set_defaults(takes_overrides=True)
    parser.epilog = "Dotted overrides may follow anywhere: section.key=value (e.g. train.lr=3e-4)."


def split_overrides(argv: list[str]) -> tuple[list[str], list[str]]:
    """Pull `section.key=value` words out of argv (not after a `--`, which ends our options)."""
    end = argv.index("--") if "--" in argv else len(argv)
    overrides = [word for word in argv[:end] if OVERRIDE.match(word)]
    rest = [word for word in argv[:end] if not OVERRIDE.match(word)] + argv[end:]
    return rest, overrides


def device_args(parser: argparse.ArgumentParser, *, dtype: bool = True) -> None:
    """``--device`` (and ``--dtype``): where and in what precision a model runs."""
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)"
    )
    if dtype:
        parser.add_argument(
            "--dtype",
            choices=["auto", "float32", "bfloat16", "float16"],
            default="auto",
            help="language model precision (default auto: bfloat16 on a GPU and on a CPU with "
            "native bf16 (AVX512-BF16 or AMX), else float32; float32 for full precision)",
        )


def verbose_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--verbose",
        "-v",
        action="store_true",
        help="let Ray's and the libraries' own logs through (else they stay in Ray's log folder)",
    )


def apply_verbose(args: argparse.Namespace) -> None:
    if getattr(args, "verbose", False):
        from music_gen.platform.cluster import set_verbose

        set_verbose(True)


def load_args_config(args: argparse.Namespace):
    from music_gen.config import load_config

    return load_config(args.config, args.overrides)
