"""A melody model follows the tune it is given, by the chroma measure (issue 13).

One pitched class (sawtooth bass lines, which follow the chord roots), and every clip
captioned with the same keyless sentence, so that the pitch can come from the melody
alone. Pitch has to survive decoding, so a small codec is trained first (a short run of
configs/codec/offline.yaml's recipe); then Ray Data tokenizes the clips with their chroma,
a small ``model.melody=true`` model trains on them, and each clip training held out is the
melody of a generation. The outputs' chroma must match their own melody far better than
the other clips' melodies (what a model deaf to its melody scores: about 1/12).
"""

import os
from pathlib import Path

import pytest

from music_gen import MusicGen
from music_gen.config import load_config
from music_gen.pipelines import synth
from music_gen.pipelines.codec.driver import train_codec
from music_gen.pipelines.evaluate import melody_adherence, read_rows, split_rows
from music_gen.pipelines.train import train
from tests.integration.test_melody_train import tokenize

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLIPS, CODEC_CLIPS, SECONDS, VAL_FRACTION = 640, 240, 2.0, 0.1
CAPTION = "a sawtooth bass line"
OFFLINE_CODEC = Path(__file__).parents[2] / "configs" / "codec" / "offline.yaml"
# Reflection padding, as when this test was tuned: with the offline config's zero padding
# the short codec followed pitch less well (chroma 0.21 against 0.07 mismatched, where
# reflection gave 0.30 against 0.05; one run each) and one CI run fell under the 2x bar.
# The config's batches of 8 segments (16 took 113 s here, 8 take 78 s, for about the same
# held-out SI-SNR: 9.6 and 9.3 dB, one run each).
CODEC = [
    "codec.train.steps=120", "codec.train.unquantized_steps=50", "codec.train.num_filters=8",
    "codec.train.checkpoint_every=120", "codec.train.log_every=60", "codec.train.pad_mode=reflect",
]  # fmt: skip
MODEL = [
    "model.dim=64", "model.num_layers=2", "model.num_heads=4", "model.max_frames=100",
    "model.text.dim=64", "model.text.num_layers=1", "model.text.num_heads=4",
    "model.melody=true", "model.melody_dropout=0.2",
]  # fmt: skip
STEPS = 700


def test_a_melody_model_follows_held_out_melodies(ray_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("MUSIC_GEN_WORK_DIR", str(tmp_path / "work"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    clips, codec_clips = tmp_path / "clips", tmp_path / "codec-clips"
    paths = synth.write_synth_dataset(  # no key in the caption: the tune alone
        clips, CLIPS, SECONDS, seed=0, classes=("saw_bass",), caption=CAPTION
    )
    # The codec learns from the first clips (its steps see no more); the model from all.
    codec_clips.mkdir()
    for path in paths[:CODEC_CLIPS]:
        os.link(path, codec_clips / path.name)

    storage = f"codec.train.storage={tmp_path / 'codec-runs'}"
    codec_cfg = load_config([OFFLINE_CODEC], [*CODEC, storage])
    codec = train_codec(codec_cfg, str(codec_clips), str(tmp_path / "codec"))
    assert codec["val_si_snr"] > 5.0, codec  # held-out dB: pitch survives decoding
    data = tokenize(
        clips, tmp_path / "codec", tmp_path / "data",
        f"data.segment_seconds={SECONDS}", "data.files_per_shard=60",
    )  # fmt: skip

    cfg = load_config(
        overrides=[
            *MODEL, f"train.steps={STEPS}", "train.batch_size=16", "train.lr=3e-3",
            "train.warmup_steps=50", "train.min_lr_ratio=0.1", "train.num_workers=1",
            "train.cpus_per_worker=1.5", "train.torch_threads=2", "train.log_every=300",
            f"train.checkpoint_every={STEPS}", f"train.eval_every={STEPS}",
            "train.eval_samples=0", f"data.val_fraction={VAL_FRACTION}",
        ]
    )  # fmt: skip
    cfg.data.output, cfg.train.storage = data, str(tmp_path / "runs")
    model = MusicGen.from_pretrained(train(cfg)["checkpoint"])

    _, held = split_rows(read_rows(data), VAL_FRACTION)  # clips training never saw
    scores = melody_adherence(model, held[:16], SECONDS, seed=0, guidance_scale=3.0, batch_size=8)
    assert scores["clips"] == 16
    assert scores["chroma_cosine"] > 2 * scores["mismatched_chroma_cosine"], scores
    assert scores["chroma_cosine"] > 1 / 12 + 0.05, scores
