"""`music-gen demo --quick` end to end on the session's Ray cluster, then again: the second
run reuses every stage. Serve's HTTP proxy is the one test_serve starts once per cluster
(its port is passed with --port); the demo deploys its own app and deletes it."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from music_gen.pipelines.demo import APP_NAME, CLASSES, MODEL_NAME, QUICK, STAGES
from music_gen.pipelines.synth import SYNTH_CLASSES

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def demo(work, port: int) -> int:
    from music_gen.cli import main

    return main(["demo", "--quick", "--workdir", str(work), "--port", str(port), "--no-progress"])


def test_demo_runs_every_stage_then_reuses_them(ray_cluster, tmp_path, capsys):
    from mlflow import MlflowClient
    from ray import serve

    from music_gen.audio import audio_info
    from music_gen.pipelines.shards import validate
    from tests.integration.test_serve import serve_port

    port = serve_port()
    work = tmp_path / "demo"
    assert demo(work, port) == 0
    out = capsys.readouterr().out
    summary = json.loads((work / "summary.json").read_text())
    results = summary["results"]
    assert summary["ran"] == list(STAGES) and summary["reused"] == []
    for index, name in enumerate(STAGES, 1):  # one line per stage
        assert (
            sum(line.startswith(f"[{index}/{len(STAGES)}] {name}") for line in out.splitlines())
            == 1
        )

    # 1-3: clips with captions, a codec, a valid dataset of every clip
    assert len(list((work / "audio").glob("*.wav"))) == QUICK.clips
    assert len(list((work / "audio").glob("*.json"))) == QUICK.clips
    assert results["codec"]["method"] == "calibrate" and (work / "codec" / "codec.json").is_file()
    report = validate(str(work / "tokens"))
    assert report["total_violations"] == 0
    assert (
        results["tokenize"]["segments"] == QUICK.clips and results["tokenize"]["files_failed"] == 0
    )

    # 4-6: a trained checkpoint, two trials, both candidates evaluated
    train, tune = results["train"], results["tune"]
    assert train["steps"] == QUICK.train_steps and (work / "runs" / "demo").is_dir()
    # It learned: the training loss ends below the uniform guess over 64 codes (ln 64).
    # (Not the val_loss: 10% of 24 clips is one held-out clip, chosen by a hash of its
    # path, and 40 steps leave that one clip's loss anywhere from 2.2 to 4.4 by its class.)
    client = MlflowClient(tracking_uri=f"sqlite:///{work / 'mlflow.db'}")
    history = client.get_metric_history(train["run_id"], "train_loss")
    assert history[-1].step == QUICK.train_steps and history[-1].value < 4.16
    assert history[-1].value < history[0].value and math.isfinite(train["val_loss"])
    assert len(tune["trials"]) == 2 and all(t["val_loss"] is not None for t in tune["trials"])
    assert tune["best_val_loss"] == min(t["val_loss"] for t in tune["trials"])
    candidates = results["evaluate"]["candidates"]
    assert set(candidates) == {"train", "sweep"}
    for candidate in candidates.values():
        saved = json.loads(Path(candidate["results"]).read_text())
        assert saved["validation"]["loss"] == candidate["eval_loss"]
        assert saved["prompt_adherence"]["labels"] == [c for c in SYNTH_CLASSES if c in CLASSES]

    # 7: both registered, the lower eval_loss holds production (a fresh store: no refusal)
    holder = client.get_model_version_by_alias(MODEL_NAME, "production")
    registry = results["registry"]
    best = min(candidates, key=lambda label: candidates[label]["eval_loss"])
    assert registry["refused"] is None and registry["best"] == best
    assert str(holder.version) == registry["production"] == registry["versions"][best]
    assert sorted(registry["versions"].values()) == ["1", "2"]

    # 8: real audio over HTTP from the production version, of the asked length
    served = results["serve"]["responses"]
    assert len(served) == len(CLASSES)
    for row in served:
        info = audio_info(row["audio"])
        assert info.format == "wav" and info.sample_rate == 16000
        assert info.duration == pytest.approx(QUICK.serve_seconds, abs=0.021)  # whole frames
        assert row["model_version"] == f"{MODEL_NAME}/{holder.version}"
        assert Path(row["spectrogram"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert APP_NAME not in serve.status().applications  # the demo deleted its app

    # the summary names the figures and how to look at them
    assert f"val_loss {train['val_loss']:.4f}" in out
    for candidate in candidates.values():
        assert f"eval_loss {candidate['eval_loss']:.4f}" in out
        assert f"prompt adherence {candidate['adherence']:.2f}" in out
    assert f"models:/{MODEL_NAME}@production -> version {holder.version}" in out
    assert f"mlflow ui --backend-store-uri sqlite:///{work.resolve() / 'mlflow.db'}" in out
    assert "k-means calibration, not training" in out  # says which codec it used

    # a second run reuses every stage and changes nothing
    assert demo(work, port) == 0
    again = capsys.readouterr().out
    second = json.loads((work / "summary.json").read_text())
    assert second["ran"] == [] and second["reused"] == list(STAGES)
    for index, name in enumerate(STAGES, 1):
        assert f"[{index}/{len(STAGES)}] {name:<9} reused" in again
    assert f"8 reused ({', '.join(STAGES)})" in again
    assert second["results"]["registry"]["production"] == registry["production"]
    assert len(client.search_model_versions(f"name = '{MODEL_NAME}'")) == 2
