"""What each stage runs, through the platform's own API (the one its command calls).

Each stage is a function of the ``Demo`` (its paths, sizes and the results of the stages
before) and the stage's progress bar, returning the stage's result: its figures and the
``outputs`` whose presence lets a second run reuse it. The ``serve`` stage is in
``serving``.
"""

from __future__ import annotations

import shutil
from typing import TYPE_CHECKING

from music_gen.errors import MusicGenError
from music_gen.pipelines.demo.progress import tune_progress_callback
from music_gen.pipelines.demo.sizes import CLASSES, EXPERIMENT, MODEL_NAME, THREADS, WORKER_CPUS

if TYPE_CHECKING:
    from music_gen.pipelines.demo.runner import Demo


def config(demo: Demo, *overrides: str):
    """The defaults with ``overrides``, on the demo's codec and dataset."""
    from music_gen.config import load_config

    cfg = load_config(overrides=overrides)
    cfg.codec.source = str(demo.paths.codec)
    cfg.data.output = str(demo.paths.tokens)
    return cfg


def synth_stage(demo: Demo, bar) -> dict:
    from music_gen.pipelines.synth import write_synth_dataset

    s = demo.sizes
    paths = write_synth_dataset(demo.paths.audio, s.clips, s.seconds, seed=0, classes=CLASSES)
    return {"clips": len(paths), "seconds": s.seconds, "classes": list(CLASSES),
            "outputs": [str(demo.paths.audio)]}  # fmt: skip


def codec_stage(demo: Demo, bar) -> dict:
    s = demo.sizes
    overrides = ["codec.num_codebooks=4", f"codec.cardinality={s.cardinality}"]
    if demo.codec_method == "calibrate":
        from music_gen.config import load_config
        from music_gen.pipelines.calibrate import calibrate

        cfg = load_config(overrides=overrides)
        info = calibrate(str(demo.paths.audio), str(demo.paths.codec), cfg.codec, 300.0)
        return {"method": "calibrate", "files": info["files"],
                "outputs": [str(demo.paths.codec)]}  # fmt: skip
    from music_gen.pipelines.codec.driver import train_codec

    demo.ensure_ray()
    # configs/codec/offline.yaml's codec, losses and workers, for the demo's steps.
    cfg = config(
        demo, *overrides, f"codec.train.steps={s.codec_steps}", "codec.train.lr=3.0e-3",
        "codec.train.num_filters=12", "codec.train.pad_mode=constant",
        f"codec.train.batch_size={s.codec_batch}", "codec.train.segment_seconds=0.5",
        "codec.train.si_snr_weight=4.0", "codec.train.warmup_steps=20",
        f"codec.train.unquantized_steps={s.codec_steps // 5}",
        "codec.train.num_workers=2", "codec.train.cpus_per_worker=0.9",
        f"codec.train.torch_threads={THREADS}",
        f"codec.train.log_every={max(1, s.codec_steps // 20)}",
        f"codec.train.checkpoint_every={s.codec_steps}", "codec.train.keep_checkpoints=1",
        "codec.train.name=demo-codec", "codec.train.val_fraction=0.1",
    )  # fmt: skip
    cfg.codec.source = None
    cfg.codec.train.storage = str(demo.paths.codec_runs)
    cfg.codec.train.tracking_uri = demo.tracking_uri
    if demo.fresh_downstream and (demo.paths.codec_runs / "demo-codec").exists():
        shutil.rmtree(demo.paths.codec_runs / "demo-codec")
    summary = train_codec(cfg, str(demo.paths.audio), str(demo.paths.codec))
    return {
        "method": "train", "steps": summary["end_step"], "val_si_snr": summary["val_si_snr"],
        "val_mel": summary["val_mel"], "run_id": summary["run_id"],
        "outputs": [str(demo.paths.codec)],
    }  # fmt: skip


def tokenize_stage(demo: Demo, bar) -> dict:
    from music_gen.pipelines.tokenize import tokenize

    demo.ensure_ray()
    s = demo.sizes
    cfg = config(
        demo, f"data.segment_seconds={s.seconds}", "data.pad_tail=true", "data.files_per_shard=64",
        "data.encode_num_cpus=0.5", "data.decode_num_cpus=0.5", "data.batch_size=16",
    )  # fmt: skip
    cfg.data.input = str(demo.paths.audio)
    bar.disable = True  # tokenize draws its own bar
    summary = tokenize(cfg, overwrite=demo.fresh_downstream, progress=demo.progress)
    return {"segments": summary["segments"], "shards": summary["shards_complete"],
            "files": summary["files"], "files_failed": summary["files_failed"],
            "outputs": [str(demo.paths.tokens / "dataset.json")]}  # fmt: skip


def train_config(demo: Demo, steps: int, batch: int, lr: float, *extra: str):
    """The language model's config for training and the sweep, logged to the demo's store."""
    s = demo.sizes
    cfg = config(
        demo, *s.model, f"train.steps={steps}", f"train.batch_size={batch}", f"train.lr={lr}",
        f"train.warmup_steps={max(1, steps // 10)}", "train.precision=fp32",
        f"train.segment_curriculum={{0: {min(2.0, s.seconds)}}}", "data.val_fraction=0.1",
        f"train.experiment={EXPERIMENT}", f"train.eval_samples={s.train_samples}",
        "train.eval_sample_seconds=1.0", "train.keep_checkpoints=1", *extra,
    )  # fmt: skip
    cfg.train.tracking_uri = demo.tracking_uri
    return cfg


def train_stage(demo: Demo, bar) -> dict:
    from music_gen.pipelines.train import train

    demo.ensure_ray()
    s = demo.sizes
    cfg = train_config(
        demo, s.train_steps, s.train_batch, s.train_lr, "train.num_workers=1",
        f"train.cpus_per_worker={WORKER_CPUS}", f"train.torch_threads={THREADS}",
        f"train.log_every={max(1, s.train_steps // 20)}",
        f"train.checkpoint_every={max(1, s.train_steps // 2)}",
        f"train.eval_every={s.train_steps}",
    )  # fmt: skip
    cfg.train.name = "demo"
    cfg.train.storage = str(demo.paths.runs)
    summary = train(cfg, overwrite=demo.fresh_downstream)
    return {"steps": summary["end_step"], "val_loss": summary["val_loss"],
            "tokens_per_s": summary.get("tokens_per_s"), "run_id": summary["run_id"],
            "checkpoint": summary["checkpoint"], "model": summary["run_uri"],
            "outputs": [summary["checkpoint"]]}  # fmt: skip


def tune_stage(demo: Demo, bar) -> dict:
    from music_gen.tune.sweep import sweep

    demo.ensure_ray()
    s = demo.sizes
    train_result = demo.results["train"]
    cfg = train_config(
        demo, s.tune_steps, s.train_batch, s.train_lr, "train.num_workers=1",
        # Two trials side by side on 2 cores, half a core left to Ray Data.
        "train.cpus_per_worker=0.7", f"train.torch_threads={THREADS}",
        "train.eval_samples=0", f"train.log_every={s.tune_steps}",
        f"train.checkpoint_every={max(1, s.tune_steps // 2)}",
        f"train.eval_every={s.tune_steps}", "tune.name=demo-sweep", "tune.num_samples=2",
        f"tune.grace_period={max(1, s.tune_steps // 2)}",
        "tune.search_space={train.lr: {loguniform: [1.0e-4, 1.0e-3]}}",
    )  # fmt: skip
    cfg.train.init = train_result["checkpoint"]
    cfg.tune.storage = str(demo.paths.tune)
    # Afresh whenever this stage runs: a sweep of seconds is not worth resuming, and
    # Ray Tune would restore the callbacks of the run it resumes.
    shutil.rmtree(demo.paths.tune / "demo-sweep", ignore_errors=True)
    callback = tune_progress_callback(bar, 2, s.tune_steps)
    summary = sweep(cfg, callbacks=[callback])
    if summary["interrupted"]:  # Ray Tune took the Ctrl-C and ended the sweep
        raise KeyboardInterrupt
    rows = [
        {"trial": r["trial_id"], "lr": r.get("train.lr"), "val_loss": r["best_metric"],
         "steps": r["steps"], "stopped_early": r["stopped_early"], "run_id": r["run_id"]}
        for r in summary["rows"]
    ]  # fmt: skip
    best = summary["best"]
    return {"trials": rows, "best_trial": best["trial_id"],
            "best_val_loss": best["best_metric"], "best_run_id": best["run_id"],
            "best_lr": best.get("train.lr"), "table": summary["table"],
            "outputs": [summary["table"]]}  # fmt: skip


def evaluate_stage(demo: Demo, bar) -> dict:
    from music_gen.pipelines.evaluate import EvaluateConfig, evaluate

    s = demo.sizes
    settings = EvaluateConfig(
        batch_size=8, per_class=s.eval_per_class, duration=s.eval_seconds,
        fad_clips=s.fad_clips, val_fraction=0.1, seed=0,
    )  # fmt: skip
    candidates = {
        "train": demo.results["train"]["run_id"],
        "sweep": demo.results["tune"]["best_run_id"],
    }
    demo.paths.evaluation.mkdir(parents=True, exist_ok=True)
    scores = {}
    for label, run_id in candidates.items():
        output = demo.paths.evaluation / f"{label}.json"
        results = evaluate(
            f"runs:/{run_id}/model", str(demo.paths.tokens), settings, output=str(output),
            run_id=run_id, device="cpu",
        )  # fmt: skip
        adherence = results["prompt_adherence"]
        scores[label] = {
            "run_id": run_id, "eval_loss": results["validation"]["loss"],
            "perplexity": results["validation"]["perplexity"],
            "adherence": adherence.get("accuracy"), "chance": adherence.get("chance"),
            "audio_adherence": adherence.get("audio", {}).get("accuracy"),
            "fad": results["fad"]["fad"], "results": str(output),
        }  # fmt: skip
    return {"candidates": scores,
            "outputs": [s["results"] for s in scores.values()]}  # fmt: skip


def registry_stage(demo: Demo, bar) -> dict:
    from music_gen.platform import registry

    candidates = demo.results["evaluate"]["candidates"]
    registered = {
        row["run_id"]: row["version"]
        for row in _versions(registry)
        if row["run_id"] in {c["run_id"] for c in candidates.values()}
    }
    versions = {}
    for label, candidate in candidates.items():
        run_id = candidate["run_id"]
        if run_id not in registered:
            registered[run_id] = registry.register_source(MODEL_NAME, run_id=run_id)["version"]
        versions[label] = str(registered[run_id])
        # This evaluation's figures on the version, for the gate (as `evaluate
        # --register-metrics` records them).
        figures = {"eval_loss": candidate["eval_loss"], "eval_fad": candidate["fad"]}
        if candidate["adherence"] is not None:
            figures["eval_adherence_accuracy"] = candidate["adherence"]
        registry.record_metrics(MODEL_NAME, versions[label], figures)
    best = min(candidates, key=lambda label: candidates[label]["eval_loss"])
    reason = f"demo: lowest eval_loss of {', '.join(candidates)} ({best})"
    try:
        done = registry.promote(
            MODEL_NAME, versions[best], "production", metric="eval_loss", reason=reason
        )
        refused = None
    except MusicGenError as exc:  # the gate: a holder from an earlier run is better
        if "promotion refused" not in str(exc):
            raise
        done, refused = None, str(exc)
    holder = registry.show(f"{MODEL_NAME}@production")
    return {"versions": versions, "best": best, "production": str(holder["version"]),
            "previous": done["previous"] if done else None, "refused": refused,
            "outputs": [str(demo.paths.store)]}  # fmt: skip


def _versions(registry) -> list[dict]:
    try:
        return registry.list_versions(MODEL_NAME)
    except MusicGenError:
        return []
