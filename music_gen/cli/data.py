"""`music-gen data`: make, tokenize and check datasets."""

from __future__ import annotations

import argparse

from music_gen.cli.common import apply_verbose, config_args, verbose_arg


def add_data(sub: argparse._SubParsersAction) -> None:
    """`music-gen data synth|prepare|tokenize|validate`."""
    p = sub.add_parser("data", help="make, tokenize and check datasets")
    data = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    s = data.add_parser(
        "synth",
        help="write synthetic captioned music (offline demo, tests)",
        description="Synthetic clips (sine pad, square lead, sawtooth bass, plucked string, "
        "bell, drums) with sidecar JSON captions; deterministic for a seed.",
    )
    s.add_argument("--output", "-o", required=True, help="directory to write clips into")
    s.add_argument("--num-clips", type=int, default=60)
    s.add_argument("--seconds", type=float, default=5.0, help="length of each clip")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--sample-rate", type=int, default=16000)
    s.add_argument("--format", choices=["wav", "flac", "mp3", "ogg"], default="wav")
    s.add_argument("--classes", help="comma-separated subset of the synth classes (default: all)")
    s.set_defaults(run=run_data_synth)

    m = data.add_parser(
        "prepare",
        help="turn a captioned dataset's table (MusicCaps CSV) and local audio into a manifest",
        description="Read a MusicCaps-style CSV (ytid, start_s, end_s, caption, aspect_list) "
        "and find each row's audio in --audio-dir (YTID.wav/.flac/.mp3/.ogg or [YTID].EXT; "
        "nothing is downloaded); write a JSONL manifest for `data tokenize --input`. Files "
        "as long as their clip are used where they are; whole recordings have the clip cut "
        "out into MANIFEST_clips/. Aspects become genre, moods and instrument by a small "
        "fixed vocabulary (music_gen/pipelines/musiccaps.py). Rows without usable audio are "
        "counted and listed in MANIFEST.missing.csv.",
    )
    m.add_argument("--format", required=True, choices=["musiccaps"], help="the table's layout")
    m.add_argument("--csv", required=True, help="the MusicCaps-style CSV")
    m.add_argument("--audio-dir", required=True, help="folder holding the downloaded audio")
    m.add_argument("--output", "-o", required=True, help="the manifest to write (.jsonl)")
    m.set_defaults(run=run_data_prepare)

    t = data.add_parser(
        "tokenize",
        help="encode audio into Parquet shards of codec codes (Ray Data)",
        description="Read a directory (with sidecar JSON) or a JSONL/CSV manifest, local or "
        "s3://, gs://; cut, encode on a codec actor pool and write Parquet shards. Re-running "
        "resumes; bad files go to errors.csv.",
    )
    t.add_argument("--input", "-i", required=True, help="directory or .jsonl/.csv manifest")
    t.add_argument("--output", "-o", required=True, help="dataset directory")
    t.add_argument("--codec", help="codec directory or hub id (sets codec.source)")
    t.add_argument("--overwrite", action="store_true", help="start afresh instead of resuming")
    t.add_argument("--max-shards", type=int, help="stop after writing this many new shards")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    verbose_arg(t)
    config_args(t)
    t.set_defaults(run=run_data_tokenize)

    v = data.add_parser(
        "validate",
        help="check a tokenized dataset",
        description="Check schema, codes, frame counts and captions of every shard; print a "
        "summary. Exits non-zero on violations.",
    )
    v.add_argument("dataset", metavar="DIR", help="dataset directory written by tokenize")
    v.set_defaults(run=run_data_validate)


def run_data_synth(args: argparse.Namespace) -> int:
    from music_gen.errors import UsageError
    from music_gen.pipelines.synth import SYNTH_CLASSES, write_synth_dataset

    classes = tuple(c.strip() for c in args.classes.split(",")) if args.classes else SYNTH_CLASSES
    unknown = sorted(set(classes) - set(SYNTH_CLASSES))
    if unknown:
        raise UsageError(f"unknown synth classes {unknown}; choose from {', '.join(SYNTH_CLASSES)}")
    if args.num_clips < 1 or args.seconds <= 0 or args.sample_rate < 8000:
        raise UsageError("--num-clips and --seconds must be positive, --sample-rate at least 8000")
    paths = write_synth_dataset(
        args.output, args.num_clips, args.seconds, args.seed, args.sample_rate, args.format, classes
    )
    print(f"wrote {len(paths)} clips of {args.seconds:g} s ({', '.join(classes)}) to {args.output}")
    return 0


def run_data_prepare(args: argparse.Namespace) -> int:
    from music_gen.pipelines.musiccaps import format_summary, prepare_musiccaps

    print(format_summary(prepare_musiccaps(args.csv, args.audio_dir, args.output)))
    return 0


def run_data_tokenize(args: argparse.Namespace) -> int:
    from music_gen.config import load_config
    from music_gen.errors import UsageError
    from music_gen.pipelines.tokenize import TooManyErrors, format_summary, tokenize

    if args.max_shards is not None and args.max_shards < 1:
        raise UsageError("--max-shards must be at least 1")
    apply_verbose(args)
    cfg = load_config(args.config, args.overrides)
    # Set after loading so that paths are never parsed as YAML ("007" is not an int).
    cfg.data.input, cfg.data.output = args.input, args.output
    if args.codec:
        cfg.codec.source = args.codec
    try:
        summary = tokenize(
            cfg, overwrite=args.overwrite, progress=not args.no_progress, max_shards=args.max_shards
        )
    except TooManyErrors as exc:
        print(format_summary(exc.summary))
        raise
    print(format_summary(summary))
    return 0


def run_data_validate(args: argparse.Namespace) -> int:
    from music_gen.pipelines.shards import format_report, validate

    report = validate(args.dataset)
    print(format_report(report))
    return 1 if report["total_violations"] else 0
