"""`music-gen train`, `tune` and `evaluate`."""

from __future__ import annotations

import argparse
import sys

from music_gen.cli.common import (
    apply_verbose,
    config_args,
    device_args,
    load_args_config,
    verbose_arg,
)

TRAIN_DESCRIPTION = (
    "Train a model (a size preset from scratch, train.init=CHECKPOINT, or a "
    "transformers MusicGen dir) on the Parquet shards of `music-gen data tokenize`, with "
    "Ray Train workers, checkpoints every train.checkpoint_every steps and MLflow tracking. "
    "Re-running the same command (same train.name and train.storage) resumes from the "
    "run's newest complete checkpoint; Ctrl-C stops a run, says which checkpoint step it "
    "can resume from and exits 130. A re-run may change only these settings: {resumable}; "
    "any other change of model.*, train.*, data.output, data.val_fraction or codec.source "
    "is refused, naming the differences (use a new train.name, or --overwrite)."
)


def add_train(sub: argparse._SubParsersAction) -> None:
    """`music-gen train`."""
    p = sub.add_parser(
        "train",
        help="train or fine-tune a model on a tokenized dataset (Ray Train)",
        description=TRAIN_DESCRIPTION.format(resumable="see `music-gen train --help`"),
    )
    plain_help = p.format_help

    def format_help() -> str:
        # The list lives with the resume check (pipelines.train.resume.RESUMABLE), which
        # imports torch: read it only when this help is shown, not for `music-gen --help`.
        from music_gen.pipelines.train.resume import resumable_help

        p.description = TRAIN_DESCRIPTION.format(resumable=resumable_help())
        return plain_help()

    p.format_help = format_help
    p.add_argument("--data", help="tokenized dataset directory (sets data.output)")
    p.add_argument("--name", help="run name (sets train.name)")
    p.add_argument(
        "--init", help="start checkpoint: ours, transformers MusicGen, models:/NAME@ALIAS"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="discard the checkpoints of an earlier run of this name and start afresh "
        "(a new MLflow run too)",
    )
    verbose_arg(p)
    config_args(p)
    p.set_defaults(run=run_train)


def run_train(args: argparse.Namespace) -> int:
    from music_gen.pipelines.train import TrainingInterrupted, train

    apply_verbose(args)
    cfg = load_args_config(args)
    # Set after loading so that paths and names are never parsed as YAML.
    if args.data:
        cfg.data.output = args.data
    if args.name:
        cfg.train.name = args.name
    if args.init:
        cfg.train.init = args.init
    try:
        summary = train(cfg, overwrite=args.overwrite)
    except TrainingInterrupted as stopped:
        print(f"music-gen: interrupted: {stopped}", file=sys.stderr)
        return stopped.exit_code
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


def add_tune(sub: argparse._SubParsersAction) -> None:
    """`music-gen tune`."""
    p = sub.add_parser(
        "tune",
        help="sweep training hyperparameters (Ray Tune, ASHA, MLflow)",
        description="Run trials of the same training over tune.search_space (dotted config "
        "keys), stopping weak trials early (ASHA on tune.metric), with one MLflow parent run "
        "and a nested run per trial. Prints a table of the trials (also trials.csv and a "
        "parent-run artifact) and logs the best trial's model. Re-running the same "
        "tune.name and tune.storage resumes (finished trials are not re-run).",
    )
    p.add_argument("--data", help="tokenized dataset directory (sets data.output)")
    p.add_argument("--name", help="sweep name (sets tune.name)")
    p.add_argument("--register", metavar="NAME", help="register the best model under NAME")
    config_args(p)
    p.set_defaults(run=run_tune)


def run_tune(args: argparse.Namespace) -> int:
    from music_gen.tune.sweep import format_table, sweep

    cfg = load_args_config(args)
    if args.data:
        cfg.data.output = args.data
    if args.name:
        cfg.tune.name = args.name
    summary = sweep(cfg, register=args.register)
    print(format_table(summary["rows"], cfg))
    print(f"table        {summary['table']}")
    print(f"mlflow run   {summary['parent_run_id']} ({summary['tracking_uri']})")
    if summary["interrupted"]:
        print("music-gen: sweep interrupted; re-run the same command to resume", file=sys.stderr)
        return 130
    best = summary["best"]
    print(f"best         trial {best['trial_id']}: {cfg.tune.metric} {best['best_metric']:.4f}")
    print(f"model        {summary['model_uri']}")
    if summary["registered"]:
        print(f"registered   {summary['registered']}")
    return 0


def add_evaluate(sub: argparse._SubParsersAction) -> None:
    """`music-gen evaluate`."""
    p = sub.add_parser(
        "evaluate",
        help="score a model on a tokenized dataset (loss, prompt adherence, FAD)",
        description="Validation loss and perplexity per codebook; on synthetic data, prompt "
        "adherence (generate for held-out phrasings of each class, classify the codes against "
        "the dataset's, report accuracy and the confusion matrix); Fréchet Audio Distance. "
        "Writes JSON (--output) and logs to the platform's MLflow store (MLFLOW_TRACKING_URI, "
        "default <work dir>/mlflow.db), the one `train` logs to and runs:/ models come from. "
        "Held-out rows are those training holds out: data.val_fraction of --config/overrides "
        "(default 0.05) unless --val-fraction says otherwise.",
    )
    p.add_argument(
        "--model", required=True, help="checkpoint dir, transformers dir/hub id, models:/NAME@ALIAS"
    )
    p.add_argument("--data", required=True, help="tokenized dataset directory")
    p.add_argument("--output", "-o", help="write the results as JSON here")
    p.add_argument("--run-id", help="log to this MLflow run (default: a new run in 'evaluate')")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument(
        "--register-metrics",
        action="store_true",
        help="record eval_loss, eval_fad and adherence on the registered version that "
        "--model names (models:/NAME/VERSION or @ALIAS), for `registry promote`'s gate",
    )
    evaluate_settings_args(p)
    device_args(p, dtype=False)
    config_args(p)
    p.set_defaults(run=run_evaluate)


def evaluate_settings_args(p: argparse.ArgumentParser) -> None:
    """The flags of ``EvaluateConfig`` (named as its fields), for `evaluate` and `compare`."""
    p.add_argument("--split", choices=["val", "all"], default="val", help="rows scored for loss")
    p.add_argument("--val-fraction", type=float, help="default: data.val_fraction, as training")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-batches", type=int, help="cap on loss batches (default: all)")
    p.add_argument("--segment-frames", type=int, help="frames per row for the loss")
    p.add_argument("--per-class", type=int, default=4, help="generations per synth class")
    p.add_argument("--duration", type=float, default=3.0, help="seconds per generation")
    p.add_argument(
        "--cfg",
        dest="guidance_scale",
        metavar="SCALE",
        type=float,
        default=3.0,
        help="classifier-free guidance scale",
    )
    p.add_argument("--fad-clips", type=int, default=24, help="real clips for FAD")
    p.add_argument(
        "--melody-clips", type=int, default=8, help="held-out melodies (melody models only)"
    )
    p.add_argument(
        "--fad-embedding",
        dest="embedding",
        choices=["log-mel", "codec-latents", "codec-latents-mean"],
        default="log-mel",
        help="what FAD embeds audio with (default log-mel: spectral, codec-independent)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--samples",
        type=int,
        default=0,
        metavar="N",
        help="save N generated clips as WAV next to the results (for `music-gen report`)",
    )


def evaluate_settings(args: argparse.Namespace):
    """An ``EvaluateConfig`` from ``evaluate_settings_args``' flags; held-out rows as
    training holds them out (data.val_fraction of --config/overrides) unless given."""
    import dataclasses

    from music_gen.pipelines.evaluate import EvaluateConfig

    settings = EvaluateConfig(
        **{field.name: getattr(args, field.name) for field in dataclasses.fields(EvaluateConfig)}
    )  # the flags are named as the fields
    if settings.val_fraction is None:
        settings.val_fraction = load_args_config(args).data.val_fraction
    return settings


def run_evaluate(args: argparse.Namespace) -> int:
    from music_gen.pipelines.evaluate import evaluate, samples_folder

    settings = evaluate_settings(args)
    if args.register_metrics:  # checked before the compute is spent
        from music_gen.platform import registry

        name, version = registry.registered_version(args.model)
    results = evaluate(
        args.model,
        args.data,
        settings,
        output=args.output,
        run_id=args.run_id,
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
        if "audio" in adherence:
            print(
                f"  on audio   {adherence['audio']['accuracy']:.3f} (decoded, log-mel classifier)"
            )
    else:
        print(f"adherence    skipped: {adherence['skipped']}")
    print(f"fad          {fad['fad']:.4f} ({fad['embedding']})")
    if "chroma_cosine" in results.get("melody", {}):
        melody = results["melody"]
        print(
            f"melody       chroma cosine {melody['chroma_cosine']:.3f} "
            f"(mismatched pairs {melody['mismatched_chroma_cosine']:.3f})"
        )
    if results.get("mlflow_run_id"):
        print(f"mlflow run   {results['mlflow_run_id']}")
    if args.register_metrics:
        figures = {"eval_loss": val["loss"], "eval_fad": fad["fad"]}
        if "accuracy" in adherence:
            figures["eval_adherence_accuracy"] = adherence["accuracy"]
            if "audio" in adherence:
                figures["eval_audio_adherence_accuracy"] = adherence["audio"]["accuracy"]
        registry.record_metrics(name, version, figures)
        print(f"registered   {', '.join(figures)} on models:/{name}/{version}")
    if results.get("samples"):
        print(f"samples      {len(results['samples'])} clips in {samples_folder(args.output)}")
    if args.output:
        print(f"results      {args.output}")
    return 0
