"""Round trips through the real pipeline on the session's local Ray cluster (2 CPUs):
``data tokenize`` of synthetic clips, a few training steps, ``generate`` from the result.

- melody: the shards carry each segment's chroma, a tiny model built with
  ``model.melody=true`` trains conditioned on it, and ``generate --melody`` follows a tune;
- stereo: 2-channel clips tokenized with a stereo codec (interleaved codebooks), a tiny
  stereo model trained on them, a 2-channel file generated.

Sizes are the smallest that still exercise every stage: each test is one tokenize run
and one ``trainer.fit()``.
"""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from music_gen import MusicGen
from music_gen.audio import audio_info, write_audio
from music_gen.cli import main
from music_gen.config import load_config
from music_gen.models.codebooks import tiny_calibrated_codec
from music_gen.pipelines import shards, synth
from music_gen.pipelines.train import train
from music_gen.testing import sine
from tests.integration.test_train import TINY

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SECONDS = 1.5
NUM_CLIPS = 8  # val_fraction 0.25: 2 files held out, 6 to train on
TOKENIZE = [
    "--no-progress", f"data.segment_seconds={SECONDS}", "data.min_seconds=0.5",
    "data.files_per_shard=8", "data.batch_size=8", "data.encode_num_cpus=0.5",
    "data.decode_num_cpus=0.5",
]  # fmt: skip
STEPS = ["train.steps=4", "train.checkpoint_every=4", "train.eval_every=4", "train.eval_samples=0"]


def tokenize(clips, codec, out, *overrides):
    args = ["data", "tokenize", "--input", str(clips), "--output", str(out)]
    assert main([*args, "--codec", str(codec), *TOKENIZE, *overrides]) == 0
    return str(out)


def run(data, tmp_path, monkeypatch, *overrides) -> dict:
    """Train a few steps, with MLflow in a work dir of the test's own."""
    monkeypatch.setenv("MUSIC_GEN_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = load_config(overrides=[*TINY, *STEPS, "data.val_fraction=0.25", *overrides])
    cfg.data.output, cfg.train.storage = data, str(tmp_path / "runs")
    return train(cfg)


def test_tokenize_train_and_generate_with_a_melody(ray_cluster, tmp_path, monkeypatch, capsys):
    clips = tmp_path / "clips"
    synth.write_synth_dataset(clips, NUM_CLIPS, SECONDS, seed=0, classes=("square_lead",))
    codec = tiny_calibrated_codec(cardinality=64).save(tmp_path / "codec")
    data = tokenize(clips, codec, tmp_path / "data")
    rows = pq.read_table(shards.shard_paths(data)[0]).to_pylist()
    assert len(rows) == NUM_CLIPS and all(len(r["chroma"]) == r["frames"] == 75 for r in rows)
    notes = [set(shards.read_chroma(r["chroma"]).tolist()) for r in rows]
    assert all(len(classes) > 1 for classes in notes)  # melodies: several pitch classes
    assert (
        json.loads((tmp_path / "data" / "dataset.json").read_text())["chroma"]["hop_length"] == 320
    )

    summary = run(data, tmp_path, monkeypatch, "model.melody=true", "model.melody_dropout=0.25")
    assert summary["end_step"] == 4 and np.isfinite(summary["val_loss"])
    model = MusicGen.from_pretrained(summary["checkpoint"])
    assert model.has_melody

    tune = torch.cat([sine(f, 0.25, 16_000) for f in (261.63, 392.0, 440.0, 329.63)], dim=-1)
    write_audio(tmp_path / "tune.wav", tune, 16_000)
    out = tmp_path / "out.wav"
    capsys.readouterr()
    args = ["generate", "a square lead", "--model", summary["checkpoint"], "--duration", "0.6"]
    assert main([*args, "--melody", str(tmp_path / "tune.wav"), "-o", str(out), "--seed", "0"]) == 0
    info = audio_info(out)
    assert info.channels == 1 and info.frames == round(0.6 * 16_000)
    # The melody reaches the model: another tune, another generation (same seed).
    other = {"melody": tune.flip(-1), "melody_sample_rate": 16_000}
    ours = {"melody": tune, "melody_sample_rate": 16_000}
    codes = [model.generate_codes(["a square lead"], 0.6, seed=0, **m) for m in (ours, other)]
    assert not torch.equal(*codes)


def test_stereo_round_trip(ray_cluster, tmp_path, monkeypatch):
    clips = tmp_path / "clips"
    clips.mkdir()
    for index in range(NUM_CLIPS):
        audio, meta = synth.make_clip(index, SECONDS, seed=1, sample_rate=16_000)
        left = torch.from_numpy(audio)  # [1, S]
        stereo = torch.cat([left, 0.5 * left.roll(400, dims=-1)])  # [2, S]: a wider image
        write_audio(clips / f"{meta['name']}.wav", stereo, 16_000)
        (clips / f"{meta['name']}.json").write_text(json.dumps(meta))
    # A mono codec run on each channel (codec.channels=2), as the README tokenizes stereo.
    codec = tiny_calibrated_codec(cardinality=64).save(tmp_path / "codec")
    data = tokenize(clips, codec, tmp_path / "data", "codec.channels=2", "data.channels=2")
    meta = shards.codec_info(data)
    assert meta["channels"] == 2 and meta["num_codebooks"] == 8

    summary = run(data, tmp_path, monkeypatch)
    assert summary["end_step"] == 4 and np.isfinite(summary["val_loss"])
    out = tmp_path / "stereo.wav"
    args = ["generate", "a bell", "--model", summary["checkpoint"], "--duration", "0.4"]
    assert main([*args, "-o", str(out), "--seed", "0"]) == 0
    info = audio_info(out)
    assert info.channels == 2 and info.frames == round(0.4 * 16_000)
