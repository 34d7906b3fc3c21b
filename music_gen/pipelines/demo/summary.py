"""What the demo prints: one line of figures per stage, and the summary at the end (the
figures, where the files are, the commands that open the MLflow UI, the page and the Ray
dashboard)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from music_gen.pipelines.demo.sizes import MODEL_NAME, STAGES

if TYPE_CHECKING:
    from music_gen.pipelines.demo.runner import Demo


def stage_line(demo: Demo, name: str, r: dict) -> str:
    """One line of figures for a stage's result."""
    if name == "synth":
        return (
            f"{r['clips']} captioned clips of {r['seconds']:g} s, {len(r['classes'])} "
            f"classes -> {show(demo.paths.audio)}"
        )
    if name == "codec":
        if r["method"] == "calibrate":
            return (
                "k-means calibrated codebooks, random decoder (`codec calibrate`) -> "
                f"{show(demo.paths.codec)}"
            )
        return (
            f"trained {r['steps']} steps (Ray Train): held-out SI-SNR {r['val_si_snr']:.2f} "
            f"dB, mel {r['val_mel']:.3f} -> {show(demo.paths.codec)}"
        )
    if name == "tokenize":
        return (
            f"{r['segments']} segments in {r['shards']} shard(s), {r['files_failed']} bad "
            f"files (Ray Data) -> {show(demo.paths.tokens)}"
        )
    if name == "train":
        return (
            f"{r['steps']} steps (Ray Train): val_loss {r['val_loss']:.4f}, "
            f"MLflow run {r['run_id'][:8]}"
        )
    if name == "tune":
        trials = ", ".join(
            f"lr {t['lr']:.2e} -> {t['val_loss']:.4f}"
            + (" (stopped by ASHA)" if t["stopped_early"] else "")
            for t in r["trials"] if t["val_loss"] is not None
        )  # fmt: skip
        return f"{len(r['trials'])} fine-tuning trials (Ray Tune, ASHA): {trials}"
    if name == "evaluate":
        return "; ".join(
            f"{label}: eval_loss {c['eval_loss']:.4f}, adherence {adherence(c)}"
            for label, c in r["candidates"].items()
        )
    if name == "registry":
        versions = ", ".join(f"{label} v{v}" for label, v in r["versions"].items())
        if r["refused"]:
            moved = f"the gate kept production at v{r['production']}: {r['refused']}"
        else:
            moved = f"production -> v{r['production']} ({r['best']}, lower eval_loss)"
        return f"registered {versions} as '{MODEL_NAME}'; {moved}"
    if name == "serve":
        return (
            f"{len(r['responses'])} prompts over HTTP: {r['duration']:g} s WAVs + "
            f"spectrograms -> {show(demo.paths.served)}; heard as prompted "
            f"{r['served_hits']}/{len(r['responses'])} (chance {r['served_chance']:.2f})"
        )
    raise KeyError(name)


def summarize(demo: Demo, seconds: float) -> dict:
    """What ran, the figures, where the files are and how to look at them."""
    r = demo.results
    ran = [name for name in STAGES if name not in demo.reused]
    reused = f" ({', '.join(demo.reused)})" if demo.reused else ""
    lines = [
        "",
        f"demo done in {seconds:.0f} s ({demo.sizes.name} sizes): {len(ran)} stage(s) "
        f"ran, {len(demo.reused)} reused{reused}",
    ]
    codec = r["codec"]
    if codec["method"] == "train":
        lines.append(
            f"  codec      trained {codec['steps']} steps: held-out SI-SNR "
            f"{codec['val_si_snr']:.2f} dB. A short CPU run with no adversarial loss "
            "reaches several dB at best: its audio is recognisable, not clean"
        )
    else:
        lines.append(
            "  codec      k-means calibration, not training (--codec train trains one, for "
            "minutes more: configs/codec/offline.yaml's 700 steps take about 4 minutes on 2 "
            "cores and reach about 5 dB SI-SNR, benchmarks/codec.py). "
            "Its decoder is random, so the audio is noise-like and by-ear figures sit at "
            "chance: judge the model by its loss and its adherence in codes"
        )
    train, tune = r["train"], r["tune"]
    lines.append(f"  train      val_loss {train['val_loss']:.4f} after {train['steps']} steps")
    lines.append(
        f"  tune       best of {len(tune['trials'])} trials: val_loss "
        f"{tune['best_val_loss']:.4f} at lr {tune['best_lr']:.2e}"
    )
    for label, c in r["evaluate"]["candidates"].items():
        lines.append(
            f"  evaluate   {label:<6} eval_loss {c['eval_loss']:.4f}, prompt adherence "
            f"{adherence(c)}"
        )
    registry = r["registry"]
    lines.append(
        f"  registry   models:/{MODEL_NAME}@production -> version {registry['production']}"
        + (" (the gate refused the new one)" if registry["refused"] else "")
    )
    served = r["serve"]
    lines.append(
        f"  serve      {served['served_hits']}/{len(served['responses'])} served clips "
        f"heard as their prompt's class by the audio classifier (chance "
        f"{served['served_chance']:.2f})"
    )
    quick = " --quick" if demo.sizes.name == "quick" else ""
    root = show(demo.paths.root)
    lines += [
        "files",
        f"  served audio   {show(demo.paths.served)}/ (NN-class.wav, NN-class.png, responses.json)",
        f"  evaluations    {show(demo.paths.evaluation)}/",
        f"  stage logs     {show(demo.paths.logs)}/ (what each stage printed)",
        f"  figures        {show(demo.paths.root / 'summary.json')}",
        "open",
        f"  MLflow UI      mlflow ui --backend-store-uri sqlite:///{demo.paths.store}"
        "   then http://127.0.0.1:5000",
        f"  web page       music-gen demo --workdir {root}{quick} --keep-serving"
        f"   then http://{demo.host}:{demo.port}/",
        f"                 (or MUSIC_GEN_WORK_DIR={root} music-gen serve --model "
        f"models:/{MODEL_NAME}@production)",
        "  Ray dashboard  the demo's own cluster runs without one (to spare the cores); for "
        "one: ray start --head --num-cpus 2, then RAY_AUTH_MODE=token "
        f"RAY_ADDRESS=127.0.0.1:6379 music-gen demo --workdir {root}{quick} --keep-serving"
        "   then http://127.0.0.1:8265 (token: ~/.ray/auth_token; `ray stop` ends it)",
    ]
    return {"seconds": seconds, "sizes": demo.sizes.name, "ran": ran, "reused": demo.reused,
            "results": r, "lines": lines}  # fmt: skip


def show(path: Path) -> str:
    """``path`` relative to the current folder when it lies inside it, else absolute."""
    try:
        return str(Path(path).relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def adherence(candidate: dict) -> str:
    if candidate["adherence"] is None:
        return "- (not synthetic data)"
    text = f"{candidate['adherence']:.2f} in codes"
    if candidate.get("audio_adherence") is not None:
        text += f", {candidate['audio_adherence']:.2f} by ear"
    return f"{text} (chance {candidate['chance']:.2f})"
