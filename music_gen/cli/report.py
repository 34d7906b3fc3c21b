"""`music-gen report` and `music-gen compare`: evaluation results as HTML."""

from __future__ import annotations

import argparse

from music_gen.cli.common import config_args, device_args
from music_gen.cli.train import evaluate_settings, evaluate_settings_args


def add_report(sub: argparse._SubParsersAction) -> None:
    """`music-gen report`."""
    p = sub.add_parser(
        "report",
        help="turn `evaluate`'s results JSON into one self-contained HTML page",
        description="Tables of the figures (loss, perplexity per codebook, prompt adherence "
        "with its confusion matrix, FAD), loss curves (from the results' history, else from "
        "the MLflow run they name) and the generated samples (`evaluate --samples N`) as "
        "audio players with spectrograms; images and audio are embedded as data: URIs, so "
        "the page is one file that needs nothing else.",
    )
    p.add_argument("results", metavar="RESULTS.json", help="what `music-gen evaluate -o` wrote")
    p.add_argument("--output", "-o", required=True, help="the HTML file to write")
    p.add_argument(
        "--no-mlflow", action="store_true", help="do not read loss curves from the MLflow store"
    )
    p.set_defaults(run=run_report)


def run_report(args: argparse.Namespace) -> int:
    import sys

    from music_gen.pipelines.report import write_report

    written = write_report(args.results, args.output, use_mlflow=not args.no_mlflow)
    curves = ", ".join(written["curves"]) or f"none ({written['history_note']})"
    print(f"samples      {written['samples']} embedded")
    print(f"loss curves  {curves}")
    for missing in written["missing"]:
        print(f"music-gen: note: sample left out: {missing}", file=sys.stderr)
    print(f"report       {written['output']}")
    return 0


def add_compare(sub: argparse._SubParsersAction) -> None:
    """`music-gen compare`."""
    p = sub.add_parser(
        "compare",
        help="evaluate several models on the same data and prompts, side by side",
        description="Score each model as `music-gen evaluate` does, with the same settings, "
        "held-out rows, prompts and seeds; print a table and write a side-by-side HTML page "
        "(--output) and JSON (--json), the best value of each row marked (lower loss, "
        "perplexity and FAD are better, higher adherence is better). Models with different "
        "codecs (sample rate, channels, codebooks, cardinality) are refused, since their "
        "loss, code adherence and FAD do not compare; --codec-independent compares them on "
        "prompt adherence judged on the decoded audio instead (synthetic data). Nothing is "
        "logged to MLflow.",
    )
    p.add_argument(
        "--models",
        nargs="+",
        required=True,
        metavar="MODEL",
        help="two or more: checkpoint dirs, transformers dirs/hub ids, models:/NAME@ALIAS",
    )
    p.add_argument("--data", required=True, help="tokenized dataset directory")
    p.add_argument("--output", "-o", help="write the side-by-side HTML page here")
    p.add_argument("--json", dest="json_output", metavar="FILE", help="write the JSON here")
    p.add_argument(
        "--codec-independent",
        action="store_true",
        help="compare only figures that mean the same with any codec (prompt adherence "
        "judged on decoded audio); lets models with different codecs be compared",
    )
    evaluate_settings_args(p)
    device_args(p, dtype=False)
    config_args(p)
    p.set_defaults(run=run_compare)


def run_compare(args: argparse.Namespace) -> int:
    from music_gen.pipelines.compare import compare, format_table

    summary = compare(
        args.models,
        args.data,
        evaluate_settings(args),
        codec_independent=args.codec_independent,
        output=args.output,
        json_output=args.json_output,
        device=args.device,
    )
    print(format_table(summary["rows"], summary["models"]))
    if args.output:
        print(f"report       {args.output}")
    if args.json_output:
        print(f"json         {args.json_output}")
    return 0
