"""The ``music-gen`` command: one entry point, a subcommand per job.

Each subcommand is an ``add_*`` function that declares its flags and points
``run`` at a small handler. Heavy imports (torch, ray, mlflow) happen inside
handlers so ``music-gen --help`` stays fast. User mistakes raise
``MusicGenError`` and come out as one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import os
import re
import sys

from music_gen.errors import MusicGenError

# The platform phones nobody unless the user opts in.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Library-internal saves and loads are not worth a progress bar each.
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


# A dotted override such as `train.lr=3e-4` may stand anywhere on the line.
OVERRIDE = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)+=")


def _config_args(parser: argparse.ArgumentParser) -> None:
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


def _load_config(args: argparse.Namespace):
    from music_gen.config import load_config

    return load_config(args.config, args.overrides)


# --- data -------------------------------------------------------------------


def add_data(sub: argparse._SubParsersAction) -> None:
    """`music-gen data synth|tokenize|validate`."""
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
    _config_args(t)
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


def run_data_tokenize(args: argparse.Namespace) -> int:
    from music_gen.config import load_config
    from music_gen.errors import UsageError
    from music_gen.pipelines.tokenize import TooManyErrors, format_summary, tokenize

    if args.max_shards is not None and args.max_shards < 1:
        raise UsageError("--max-shards must be at least 1")
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


# --- codec ------------------------------------------------------------------------


def add_codec(sub: argparse._SubParsersAction) -> None:
    """`music-gen codec calibrate`."""
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
    _config_args(c)
    c.set_defaults(run=run_codec_calibrate)


def run_codec_calibrate(args: argparse.Namespace) -> int:
    from music_gen.errors import UsageError
    from music_gen.pipelines.tokenize import calibrate

    if args.max_seconds <= 0:
        raise UsageError("--max-seconds must be positive")
    info = calibrate(args.input, args.output, _load_config(args).codec, args.max_seconds, args.seed)
    print(
        f"calibrated a {info['num_codebooks']} x {info['cardinality']} codec on "
        f"{info['files']} files; saved to {args.output}"
    )
    return 0


# --- generate ---------------------------------------------------------------------


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate music from text",
        description="Generate audio for one prompt (--output) or a file of prompts (--output-dir).",
    )
    p.add_argument("prompt", nargs="?", help="text prompt (or use --prompts FILE)")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--model", help="checkpoint dir, transformers MusicGen dir/hub id, models:/NAME@ALIAS"
    )
    src.add_argument(
        "--random-init",
        action="store_true",
        help="a freshly initialised model from --config (random weights: noise, for trying the tool)",
    )
    p.add_argument("--prompts", help="text file, one prompt per line (batch generation)")
    p.add_argument("--output", "-o", help="output file for a single prompt (default: out.<format>)")
    p.add_argument("--output-dir", help="output directory for --prompts")
    p.add_argument(
        "--format", choices=["wav", "flac", "mp3", "ogg"], help="default: from --output, else wav"
    )
    p.add_argument(
        "--duration", type=float, default=10.0, help="seconds, including any audio prompt"
    )
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=250, help="1 is greedy, 0 disables")
    p.add_argument("--top-p", type=float, default=0.0, help="0 disables")
    p.add_argument(
        "--cfg", type=float, default=3.0, help="classifier-free guidance scale (1 = none)"
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--audio-prompt", help="audio file to continue from")
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16", "float16"],
        default="float32",
        help="language model precision (bfloat16 halves memory and is faster where supported)",
    )
    _config_args(p)
    p.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from music_gen.errors import UsageError
    from music_gen.models.generator import check_prompts

    prompts = check_prompts(_read_prompts(args))
    outputs = _output_paths(args, prompts)
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    model = _load_model(args)
    prompt_codes = _audio_prompt_codes(model, args.audio_prompt)
    from music_gen.audio import write_audio

    for start in range(0, len(prompts), args.batch_size):
        chunk = prompts[start : start + args.batch_size]
        codes = model.generate_codes(
            chunk,
            duration=args.duration,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            guidance_scale=args.cfg,
            seed=None if args.seed is None else [args.seed + start + i for i in range(len(chunk))],
            prompt_codes=prompt_codes,
            progress=True,
        )
        audio = model.decode(codes)
        for clip, path in zip(audio, outputs[start : start + len(chunk)], strict=True):
            write_audio(path, clip, model.sample_rate)
            print(path)
    return 0


def _read_prompts(args: argparse.Namespace) -> list[str]:
    from pathlib import Path

    from music_gen.errors import UsageError

    if (args.prompt is None) == (args.prompts is None):
        raise UsageError("give one prompt or --prompts FILE (not both)")
    if args.prompts is None:
        return [args.prompt]
    try:
        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read prompts file: {exc.strerror}: {args.prompts}") from None
    prompts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not prompts:
        raise UsageError(f"no prompts in {args.prompts}")
    return prompts


def _output_paths(args: argparse.Namespace, prompts: list[str]) -> list:
    """Decide every output path before generating, so a bad path fails fast."""
    import re
    from pathlib import Path

    from music_gen.errors import UsageError

    if args.prompts is None:
        if args.output_dir:
            raise UsageError("--output-dir is for --prompts; use --output for one prompt")
        fmt = args.format or (
            Path(args.output).suffix.lstrip(".").lower() if args.output else "wav"
        )
        if fmt not in ("wav", "flac", "mp3", "ogg"):
            raise UsageError(f"unknown audio format '{fmt}' (wav, flac, mp3, ogg)")
        path = Path(args.output or f"out.{fmt}")
        if args.format and path.suffix.lstrip(".").lower() != fmt:
            path = path.with_suffix(f".{fmt}")
        return [path]
    if not args.output_dir:
        raise UsageError("--prompts needs --output-dir")
    fmt = args.format or "wav"
    out = Path(args.output_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--output-dir {out} is a file")

    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "clip"

    return [out / f"{i:03d}_{slug(p)}.{fmt}" for i, p in enumerate(prompts)]


def _load_model(args: argparse.Namespace):
    import torch

    from music_gen import MusicGen
    from music_gen.errors import UsageError

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    if args.random_init:
        from music_gen.models.codec import build_codec

        cfg = _load_config(args)
        print(
            "music-gen: note: --random-init: the model's weights are random, so the audio is noise"
        )
        return MusicGen.from_config(cfg.model, build_codec(cfg.codec)).to(device, dtype)
    if not args.model:
        raise UsageError("give --model SRC (or --random-init to try the tool with random weights)")
    if args.overrides or args.config:
        raise UsageError("--config and overrides apply to --random-init only")
    return MusicGen.from_pretrained(args.model).to(device, dtype)


def _audio_prompt_codes(model, path):
    if path is None:
        return None
    from music_gen.audio import read_audio

    audio, rate = read_audio(path)
    return model.encode_audio(audio, rate)


# --- demo -------------------------------------------------------------------------


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the offline demo", description="Run the platform end to end, offline."
    )
    p.add_argument(
        "--workdir", default="work/demo", help="where the demo writes (default work/demo)"
    )
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from music_gen import MusicGen
    from music_gen.audio import write_audio
    from music_gen.config import load_config
    from music_gen.models.codec import tiny_calibrated_codec

    workdir = Path(args.workdir)
    print("music-gen demo: a freshly initialised debug model with a small calibrated codec.")
    print("Its weights are RANDOM (nothing is downloaded), so the clip is structured noise.")
    cfg = load_config(overrides=["model.dim=64", "model.text.dim=32"])
    model = MusicGen.from_config(cfg.model, tiny_calibrated_codec())
    prompt = "upbeat jazz with saxophone"
    codes = model.generate_codes([prompt], duration=2.0, seed=0, progress=True)
    path = write_audio(workdir / "random_model.wav", model.decode(codes)[0], model.sample_rate)
    model.save_pretrained(workdir / "random_model")
    print(f"wrote {path} ({codes.shape[-1]} frames x {codes.shape[1]} codebooks for '{prompt}')")
    print(f"saved the model to {workdir / 'random_model'}; try:")
    print(f"  music-gen generate 'calm ambient pad' --model {workdir / 'random_model'} -o pad.wav")
    return 0


# --- train ------------------------------------------------------------------------


def add_train(sub: argparse._SubParsersAction) -> None:
    """`music-gen train`."""
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model on a tokenized dataset (Ray Train)",
        description="Train a model (a size preset from scratch, train.init=CHECKPOINT, or a "
        "transformers MusicGen dir) on the Parquet shards of `music-gen data tokenize`, with "
        "Ray Train workers, checkpoints every train.checkpoint_every steps and MLflow tracking. "
        "Re-running the same command (same train.name and train.storage) resumes.",
    )
    p.add_argument("--data", help="tokenized dataset directory (sets data.output)")
    p.add_argument("--name", help="run name (sets train.name)")
    p.add_argument(
        "--init", help="start checkpoint: ours, transformers MusicGen, models:/NAME@ALIAS"
    )
    _config_args(p)
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from music_gen.pipelines.train import train

    cfg = _load_config(args)
    # Set after loading so that paths and names are never parsed as YAML.
    if args.data:
        cfg.data.output = args.data
    if args.name:
        cfg.train.name = args.name
    if args.init:
        cfg.train.init = args.init
    summary = train(cfg)
    start, end = summary.get("start_step", 0), summary.get("end_step", cfg.train.steps)
    note = f" (resumed at step {start})" if start else ""
    val = summary.get("val_loss")
    print(
        f"trained {cfg.train.name} to step {end}{note}" + (f", val_loss {val:.4f}" if val else "")
    )
    print(f"checkpoint   {summary['checkpoint']}")
    print(f"best         {summary['best_checkpoint']}")
    print(f"mlflow run   {summary['run_id']} ({summary['tracking_uri']})")
    print(f"model        {summary['run_uri']}")
    if summary.get("registered"):
        print(f"registered   {summary['registered']}")
    return 0


# --- evaluate ------------------------------------------------------------------------


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    """`music-gen evaluate`."""
    p = sub.add_parser(
        "evaluate",
        help="score a model on a tokenized dataset (loss, prompt adherence, FAD)",
        description="Validation loss and perplexity per codebook; on synthetic data, prompt "
        "adherence (generate for held-out phrasings of each class, classify the codes against "
        "the dataset's, report accuracy and the confusion matrix); Fréchet Audio Distance. "
        "Writes JSON (--output) and logs to MLflow (MLFLOW_TRACKING_URI, default "
        "sqlite:///work/mlflow.db).",
    )
    p.add_argument(
        "--model", required=True, help="checkpoint dir, transformers dir/hub id, models:/NAME@ALIAS"
    )
    p.add_argument("--data", required=True, help="tokenized dataset directory")
    p.add_argument("--output", "-o", help="write the results as JSON here")
    p.add_argument("--run-id", help="log to this MLflow run (default: a new run in 'evaluate')")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--split", choices=["val", "all"], default="val", help="rows scored for loss")
    p.add_argument("--val-fraction", type=float, default=0.05, help="as data.val_fraction")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, help="cap on loss batches (default: all)")
    p.add_argument("--segment-frames", type=int, help="frames per row for the loss")
    p.add_argument("--per-class", type=int, default=4, help="generations per synth class")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per generation")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--fad-clips", type=int, default=24, help="real clips for FAD")
    p.add_argument("--fad-embedding", default="codec-latents", help="codec-latents[-mean]")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda if available)")
    p.set_defaults(run=run_evaluate)


def run_evaluate(args: argparse.Namespace) -> int:
    from music_gen.pipelines.evaluate import evaluate

    results = evaluate(
        args.model,
        args.data,
        output=args.output,
        run_id=args.run_id,
        batch_size=args.batch_size,
        max_batches=args.max_batches,
        segment_frames=args.segment_frames,
        split=args.split,
        val_fraction=args.val_fraction,
        per_class=args.per_class,
        duration=args.duration,
        guidance_scale=args.cfg,
        seed=args.seed,
        fad_clips=args.fad_clips,
        embedding=args.fad_embedding,
        device=args.device,
        mlflow_logging=not args.no_mlflow,
    )
    val, adherence, fad = results["validation"], results["prompt_adherence"], results["fad"]
    print(
        f"loss         {val['loss']:.4f} (perplexity {val['perplexity']:.2f}, {val['rows']} rows)"
    )
    print("per codebook " + " ".join(f"{c['loss']:.3f}" for c in val["per_codebook"]))
    if "accuracy" in adherence:
        print(f"adherence    {adherence['accuracy']:.3f} (chance {adherence['chance']:.3f})")
    else:
        print(f"adherence    skipped: {adherence['skipped']}")
    print(f"fad          {fad['fad']:.4f} ({fad['embedding']})")
    if results.get("mlflow_run_id"):
        print(f"mlflow run   {results['mlflow_run_id']}")
    if args.output:
        print(f"results      {args.output}")
    return 0


# --- submit ----------------------------------------------------------------------------

JOB_ACTIONS = ("status", "logs", "stop")


def add_submit(sub: argparse._SubParsersAction) -> None:
    """`music-gen submit [--address URL] -- COMMAND` and `music-gen submit status|logs|stop JOB`."""
    p = sub.add_parser(
        "submit",
        help="run a music-gen command on a Ray cluster as a Ray Job",
        usage="music-gen submit [options] -- COMMAND [ARGS...]\n"
        "       music-gen submit [--address URL] status|logs|stop JOB",
        description="Submit any music-gen command as a Ray Job (the project directory travels "
        "as the job's working_dir) and print the job id; or check, read or stop a job. The "
        "cluster is --address, else RAY_ADDRESS, else a local `ray start` cluster; its token "
        "(RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token) is sent when found.",
    )
    p.add_argument("words", nargs="*", metavar="COMMAND", help="after --: the music-gen command")
    p.add_argument("--address", help="dashboard URL (http://head:8265) or head:6379")
    p.add_argument(
        "--follow",
        "-f",
        action="store_true",
        help="stream logs until the job ends; exit 0 if it succeeded",
    )
    p.add_argument("--working-dir", help="directory shipped to the cluster (default: the project)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="job env var")
    p.add_argument("--submission-id", help="job id to use (default: generated)")
    p.set_defaults(run=run_submit)


def run_submit(args: argparse.Namespace) -> int:
    from music_gen.errors import UsageError
    from music_gen.platform import jobs

    words = args.words
    if words and words[0] in JOB_ACTIONS:
        if len(words) != 2:
            raise UsageError(f"usage: music-gen submit {words[0]} JOB")
        return _job_action(jobs, words[0], words[1], args)
    env = jobs.parse_env(args.env)
    jobs.entrypoint(words)  # an empty command fails before connecting
    client = jobs.connect(args.address)
    job_id = jobs.submit(client, words, args.working_dir, env, args.submission_id)
    print(job_id, flush=True)
    if not args.follow:
        return 0
    return _finish(jobs, job_id, jobs.follow(client, job_id))


def _job_action(jobs, action: str, job_id: str, args: argparse.Namespace) -> int:
    client = jobs.connect(args.address)
    if action == "status":
        status, message = jobs.job_status(client, job_id)
        print(status + (f": {message}" if message else ""))
        return 0
    if action == "logs":
        if args.follow:
            return _finish(jobs, job_id, jobs.follow(client, job_id))
        print(jobs.job_logs(client, job_id), end="")
        return 0
    stopped = jobs.stop_job(client, job_id)
    print(f"stop requested for {job_id}" if stopped else f"{job_id} was not running")
    return 0


def _finish(jobs, job_id: str, status: str) -> int:
    print(f"music-gen: job {job_id} {status}", file=sys.stderr)
    return jobs.exit_code(status)


# --- entry point ----------------------------------------------------------------

COMMANDS = [add_generate, add_demo, add_data, add_codec, add_train, add_evaluate, add_submit]


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


if __name__ == "__main__":
    sys.exit(main())
