"""Synthetic music: determinism, classes, captions and their train/held-out split."""

import json
import re

import numpy as np
import pytest

from music_gen.pipelines import synth

pytestmark = pytest.mark.unit


def band_energies(audio: np.ndarray, bands: int = 24) -> np.ndarray:
    """Mean log energy in log-spaced frequency bands: a crude timbre fingerprint."""
    frames = np.lib.stride_tricks.sliding_window_view(audio[0], 512)[::256]  # [N, 512]
    power = np.abs(np.fft.rfft(frames * np.hanning(512), axis=1)) ** 2  # [N, 257]
    edges = np.geomspace(1, 257, bands + 1).astype(int)
    energy = [
        power[:, lo : max(hi, lo + 1)].sum(1) for lo, hi in zip(edges[:-1], edges[1:], strict=True)
    ]
    return np.log(np.stack(energy, 1) + 1e-6).mean(0)  # [bands]


def test_same_seed_same_clip_other_seed_other_clip():
    a, meta_a = synth.make_clip(3, 1.5, seed=7)
    b, meta_b = synth.make_clip(3, 1.5, seed=7)
    c, _ = synth.make_clip(3, 1.5, seed=8)
    assert np.array_equal(a, b) and meta_a == meta_b
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("cls", synth.SYNTH_CLASSES)
def test_every_class_renders_audible_mono_audio(cls):
    audio, meta = synth.make_clip(0, 2.0, seed=1, sample_rate=16000, cls=cls)
    assert audio.shape == (1, 32000) and audio.dtype == np.float32
    assert np.isfinite(audio).all()
    assert 0.5 < np.abs(audio).max() <= 0.9 + 1e-6
    assert np.sqrt(np.mean(audio**2)) > 0.01  # not silent
    assert meta["synth_class"] == cls and meta["instrument"] == synth.CLASS_KEYWORDS[cls]
    assert meta["genre"] == synth.CLASS_GENRES[cls]
    assert len(meta["moods"]) == 2 and 70 <= meta["bpm"] <= 150
    assert (meta["key"] is None) == (cls == "noise_drums")


def test_classes_are_spectrally_separable_across_seeds():
    """Nearest class centroid on band energies: fit on one seed, test on another."""
    n = 4 * len(synth.SYNTH_CLASSES)
    train = [synth.make_clip(i, 2.0, seed=0) for i in range(n)]
    test = [synth.make_clip(i, 2.0, seed=1) for i in range(n)]
    feats = np.stack([band_energies(a) for a, _ in train])
    labels = np.array([m["synth_class"] for _, m in train])
    centroids = {c: feats[labels == c].mean(0) for c in synth.SYNTH_CLASSES}
    hits = 0
    for audio, meta in test:
        f = band_energies(audio)
        guess = min(centroids, key=lambda c: np.linalg.norm(f - centroids[c]))
        hits += guess == meta["synth_class"]
    assert hits == n


def test_caption_templates_split_and_name_their_class():
    for cls in synth.SYNTH_CLASSES:
        train = synth.caption_templates(cls, "train")
        held = synth.caption_templates(cls, "heldout")
        assert len(train) == synth.NUM_TRAIN_PHRASINGS and len(held) >= 2
        assert not set(train) & set(held)
        assert synth.caption_templates(cls, "all") == train + held
        for caption in synth.heldout_captions(cls, seed=3) + synth.train_captions(cls, seed=3):
            assert "{" not in caption and "}" not in caption
            assert synth.class_of_caption(caption) == cls, caption
    with pytest.raises(ValueError):
        synth.caption_templates("kazoo")


def matches(caption: str, templates: list[str]) -> bool:
    """Whether ``caption`` is one of ``templates`` with its slots filled."""
    patterns = [re.sub(r"\\\{\w+\\\}", ".+", re.escape(t)) for t in templates]
    return any(re.fullmatch(p, caption) for p in patterns)


def test_clips_use_the_phrasings_of_their_split():
    for index in range(24):
        _, meta = synth.make_clip(index, 0.5, seed=2)
        _, held = synth.make_clip(index, 0.5, seed=2, split="heldout")
        cls = meta["synth_class"]
        assert matches(meta["description"], synth.caption_templates(cls, "train"))
        assert matches(held["description"], synth.caption_templates(cls, "heldout"))
        assert not matches(held["description"], synth.caption_templates(cls, "train"))


def test_write_dataset_writes_audio_and_sidecars(tmp_path):
    from music_gen.audio import read_audio

    paths = synth.write_synth_dataset(tmp_path, num_clips=3, seconds=1.0, seed=5)
    assert [p.name for p in paths] == ["synth-00000.wav", "synth-00001.wav", "synth-00002.wav"]
    for index, path in enumerate(paths):
        audio, rate = read_audio(path)
        assert rate == 16000 and audio.shape == (1, 16000)
        expected, meta = synth.make_clip(index, 1.0, seed=5)
        assert np.abs(audio.numpy() - expected).max() < 1e-3  # PCM_16 rounding
        sidecar = json.loads(path.with_suffix(".json").read_text())
        assert sidecar == json.loads(json.dumps(meta))
        assert {"description", "genre", "moods", "key", "bpm", "instrument"} <= set(sidecar)


def test_one_caption_for_every_clip_drops_the_key_and_keeps_the_rest(tmp_path):
    paths = synth.write_synth_dataset(
        tmp_path, num_clips=2, seconds=0.5, classes=("saw_bass",), caption="a bass line"
    )
    for index, path in enumerate(paths):
        sidecar = json.loads(path.with_suffix(".json").read_text())
        _, meta = synth.make_clip(index, 0.5, classes=("saw_bass",))
        assert meta["key"] and sidecar["description"] == "a bass line" and sidecar["key"] is None
        assert sidecar["bpm"] == meta["bpm"] and sidecar["root"] == meta["root"]


def test_cli_synth(tmp_path, capsys):
    from music_gen.cli import main

    code = main(
        ["data", "synth", "--output", str(tmp_path), "--num-clips", "2", "--seconds", "0.5",
         "--seed", "1", "--classes", "bell,noise_drums"]
    )  # fmt: skip
    assert code == 0
    metas = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*.json"))]
    assert [m["synth_class"] for m in metas] == ["bell", "noise_drums"]
    assert main(["data", "synth", "--output", str(tmp_path), "--classes", "kazoo"]) == 2
    assert "unknown synth classes" in capsys.readouterr().err
