"""`music-gen codec`: prepare audio codecs."""

from __future__ import annotations

import argparse

from music_gen.cli.common import config_args, load_args_config


def add_codec(sub: argparse._SubParsersAction) -> None:
    """`music-gen codec calibrate|train|evaluate`."""
    p = sub.add_parser("codec", help="prepare audio codecs")
    codec = p.add_subparsers(dest="codec_command", metavar="ACTION", required=True)
    c = codec.add_parser(
        "calibrate",
        help="fit a codec's codebooks on sample audio (k-means)",
        description="Build the codec of the config (codec.* overrides) and fit its codebooks "
        "by k-means on up to --max-seconds of audio from a directory or manifest. A codec "
        "with random weights maps every sound to code 0; a calibrated one does not.",
    )
    c.add_argument("--input", "-i", required=True, help="directory or .jsonl/.csv manifest")
    c.add_argument("--output", "-o", required=True, help="codec directory to write")
    c.add_argument("--max-seconds", type=float, default=600.0, help="audio to fit on")
    c.add_argument("--seed", type=int, default=0)
    config_args(c)
    c.set_defaults(run=run_codec_calibrate)
    add_codec_train(codec)
    add_codec_evaluate(codec)


def run_codec_calibrate(args: argparse.Namespace) -> int:
    from music_gen import outputs
    from music_gen.errors import UsageError

    if args.max_seconds <= 0:
        raise UsageError("--max-seconds must be positive")
    outputs.check_dir(args.output, "--output")  # before torch is even imported
    from music_gen.pipelines.calibrate import calibrate

    info = calibrate(
        args.input, args.output, load_args_config(args).codec, args.max_seconds, args.seed
    )
    print(
        f"calibrated a {info['num_codebooks']} x {info['cardinality']} codec on "
        f"{info['files']} files; saved to {args.output}"
    )
    return 0


def add_codec_train(codec: argparse._SubParsersAction) -> None:
    from music_gen.cli.common import verbose_arg

    t = codec.add_parser(
        "train",
        help="train an EnCodec codec on audio (Ray Train)",
        description="Train the EnCodec-architecture codec of codec.train.* (sample rate, "
        "ratios, widths; codec.num_codebooks x codec.cardinality) on audio read as `data "
        "tokenize` reads it: waveform L1 + multi-scale mel losses, residual VQ initialised "
        "by k-means and updated by EMA. Checkpoints under codec.train.storage/name; re-running "
        "the same name resumes. The result is a codec directory every command accepts.",
    )
    t.add_argument("--data", "-d", required=True, help="directory or .jsonl/.csv manifest of audio")
    t.add_argument("--output", "-o", required=True, help="codec directory to write")
    t.add_argument("--name", help="run name (sets codec.train.name)")
    verbose_arg(t)
    config_args(t)
    t.set_defaults(run=run_codec_train)


def run_codec_train(args: argparse.Namespace) -> int:
    from music_gen.cli.common import apply_verbose
    from music_gen.pipelines.codec.driver import train_codec

    apply_verbose(args)
    cfg = load_args_config(args)
    if args.name:
        cfg.codec.train.name = args.name
    summary = train_codec(cfg, args.data, args.output)
    snr = summary.get("val_si_snr")
    quality = (
        f"held-out SI-SNR {snr:.2f} dB, mel {summary['val_mel']:.3f}; " if snr is not None else ""
    )
    bad = sum(summary["errors"].values())
    print(
        f"trained codec {cfg.codec.train.name} to step {summary['end_step']} on "
        f"{summary['files']} files ({bad} bad) in {summary['seconds']:.0f} s; {quality}"
        f"saved to {summary['output']}"
    )
    return 0


def add_codec_evaluate(codec: argparse._SubParsersAction) -> None:
    e = codec.add_parser(
        "evaluate",
        help="quality figures of a codec: SI-SNR, mel distance, bitrate",
        description="Encode and decode held-out audio (a directory or manifest) with a codec; "
        "print SI-SNR (dB), multi-scale mel distance, bitrate and codes per second as JSON "
        "and log them as an MLflow run (experiment music-gen-codec-eval).",
    )
    e.add_argument("--codec", "-c", required=True, help="codec directory or hub id")
    e.add_argument("--data", "-d", required=True, help="directory or .jsonl/.csv manifest of audio")
    e.add_argument("--output", "-o", help="also write the JSON to this file")
    e.add_argument("--segment-seconds", type=float, default=2.0, help="length of scored pieces")
    e.add_argument("--max-seconds", type=float, default=300.0, help="audio to score at most")
    e.add_argument("--no-mlflow", action="store_true", help="do not log an MLflow run")
    e.set_defaults(run=run_codec_evaluate)


def run_codec_evaluate(args: argparse.Namespace) -> int:
    import json

    from music_gen import outputs
    from music_gen.pipelines.codec.evaluate import evaluate_codec, log_evaluation

    if args.output:
        outputs.check_file(args.output)  # a folder or an unwritable place: before the work
    results = evaluate_codec(args.codec, args.data, args.segment_seconds, args.max_seconds)
    if not args.no_mlflow:
        results["mlflow_run_id"] = log_evaluation(results)
    text = json.dumps(results)
    if args.output:
        outputs.write_text(args.output, text + "\n")
    print(text)
    return 0
