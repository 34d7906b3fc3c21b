"""The ``serve`` stage: Ray Serve on the production version, prompts sent over HTTP, each
answer kept as audio and a spectrogram and classified by ear; ``--keep-serving``'s wait."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from music_gen import outputs
from music_gen.errors import UsageError
from music_gen.pipelines.demo.client import answers, in_use, post
from music_gen.pipelines.demo.sizes import APP_NAME, CLASSES, MODEL_NAME

if TYPE_CHECKING:
    from music_gen.pipelines.demo.runner import Demo


def serve_stage(demo: Demo, bar) -> dict:
    """Serve the production version, send a prompt per class at once, keep the answers."""
    from music_gen.pipelines.synth import heldout_captions

    prompts = [
        (cls, caption)
        for cls in CLASSES
        for caption in heldout_captions(cls, seed=11)[: demo.sizes.serve_per_class]
    ]
    url = start_server(demo)
    served = demo.paths.served
    if served.exists():
        shutil.rmtree(served)
    served.mkdir(parents=True)
    seconds = demo.sizes.serve_seconds

    def ask(item):
        index, (cls, prompt) = item
        body = {"prompt": prompt, "duration": seconds, "seed": index, "format": "wav"}
        return index, cls, prompt, post(f"{url}/generate", body)

    bar.set_postfix_str(f"{len(prompts)} prompts to {url}/generate")
    with ThreadPoolExecutor(len(prompts)) as pool:  # together: the server batches them
        replies = list(pool.map(ask, enumerate(prompts)))
    rows = [keep_answer(demo, *reply) for reply in replies]
    judged = judge_served(rows, CLASSES)
    outputs.write_text(served / "responses.json", json.dumps(rows, indent=1) + "\n")
    files = [r["audio"] for r in rows] + [r["spectrogram"] for r in rows]
    return {"url": url, "responses": rows, "duration": seconds, **judged,
            "outputs": [str(served / "responses.json"), *files]}  # fmt: skip


def start_server(demo: Demo) -> str:
    """The Serve app on ``models:/music-gen@production``, as ``music-gen serve`` runs it."""
    from ray import serve

    from music_gen.config import ServeConfig
    from music_gen.serve.app import build, check_source

    demo.ensure_ray()
    cfg = ServeConfig(
        model=f"models:/{MODEL_NAME}@production", host=demo.host, port=demo.port,
        app_name=APP_NAME, route_prefix="/", num_cpus=1.0, ingress_num_cpus=0.1,
        max_batch_size=8, max_duration=30.0,
        env_vars={"MLFLOW_TRACKING_URI": demo.tracking_uri,
                  "MUSIC_GEN_WORK_DIR": str(demo.paths.root)},
    )  # fmt: skip
    check_source(cfg.model)
    app = build(cfg)
    from music_gen.platform.cluster import verbose

    if not verbose():  # Serve's own INFO lines (started, ready, deleting) stay out
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    status = serve.status()
    base = f"http://{demo.host}:{demo.port}"
    if status.proxies or status.applications:  # Serve runs already (a test's, a cluster's)
        if not answers(f"{base}/-/routes"):
            raise UsageError(
                f"Ray Serve already runs on this cluster but not at {demo.host}:{demo.port}: "
                "pass its port with --port"
            )
    else:
        if in_use(demo.host, demo.port):
            raise UsageError(f"port {demo.port} on {demo.host} is in use: pass --port")
        serve.start(http_options={"host": demo.host, "port": demo.port})
        demo.started_serve = True
    demo.deployed = True
    serve.run(app, name=APP_NAME, route_prefix=cfg.route_prefix, blocking=False)
    return base


def keep_answer(demo: Demo, index: int, cls: str, prompt: str, answer: dict) -> dict:
    """The answer's audio as a file, its spectrogram as a PNG, and what they hold."""
    from music_gen.audio import audio_info, read_audio
    from music_gen.pipelines.train.samples import spectrogram_png

    stem = demo.paths.served / f"{index:02d}-{cls}"
    audio_path = outputs.write_bytes(stem.with_suffix(".wav"), answer["body"])
    info = audio_info(audio_path)  # raises AudioError for anything but audio
    audio, _ = read_audio(audio_path)
    png = stem.with_suffix(".png")
    spectrogram_png(audio, png)
    return {
        "prompt": prompt, "class": cls, "seed": index, "audio": str(audio_path),
        "spectrogram": str(png), "seconds": info.duration, "sample_rate": info.sample_rate,
        "format": info.format, "model_version": answer["headers"].get("x-model-version"),
        "generation_seconds": float(answer["headers"].get("x-generation-seconds") or 0),
        "batch_size": int(answer["headers"].get("x-batch-size") or 1),
    }  # fmt: skip


def hold(demo: Demo) -> None:
    """``--keep-serving``: wait for Ctrl-C (the server stops in ``Demo._shutdown``)."""
    import signal

    base = f"http://{demo.host}:{demo.port}"
    demo.say(f"serving models:/{MODEL_NAME}@production at {base}/ (API docs {base}/docs)")
    demo.say("Ctrl-C to stop")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        demo.say("shutting down")


def judge_served(rows: list[dict], classes) -> dict:
    """The served clips classified by ear: the audio classifier fitted on real synth clips."""
    import torch

    from music_gen.audio import read_audio
    from music_gen.pipelines.adherence import fit_synth_classifier

    labels = list(classes)
    rate = rows[0]["sample_rate"]
    classifier = fit_synth_classifier(labels, rate, per_class=8, seconds=2.0)
    clips = [read_audio(row["audio"], sample_rate=rate, channels=1)[0] for row in rows]
    length = min(clip.shape[-1] for clip in clips)
    predicted = classifier.predict(torch.stack([clip[:, :length] for clip in clips]))
    for row, index in zip(rows, predicted.tolist(), strict=True):
        row["heard_as"] = labels[index]
    hits = sum(row["heard_as"] == row["class"] for row in rows)
    return {"served_hits": hits, "served_chance": 1.0 / len(labels)}
