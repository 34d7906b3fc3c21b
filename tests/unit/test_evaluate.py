"""Evaluation measures: FAD, the adherence classifier, validation loss (no Ray).

Datasets are written directly with ``music_gen.testing`` (synth clips encoded by a
codec in this process).
"""

import json

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from music_gen.errors import MusicGenError, UsageError
from music_gen.models.codebooks import tiny_calibrated_codec
from music_gen.models.codec import build_codec
from music_gen.pipelines import evaluate as ev
from music_gen.pipelines import synth
from music_gen.testing import synth_codes, tiny_codec_config, tiny_musicgen, write_dataset

pytestmark = pytest.mark.unit


# --- FAD -------------------------------------------------------------------------------------


def test_fad_of_identical_sets_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 8))
    assert ev.frechet_audio_distance(x, x) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_closed_form_for_shifted_scaled_gaussians():
    dim, shift, a, b = 6, 0.7, 1.5, 0.5
    # |mu1 - mu2|^2 + D (a - b)^2 for N(0, a^2 I) and N(shift, b^2 I)
    expected = dim * shift**2 + dim * (a - b) ** 2
    value = ev.frechet_distance(
        np.zeros(dim), a**2 * np.eye(dim), np.full(dim, shift), b**2 * np.eye(dim)
    )
    assert value == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_matches_scipy_sqrtm_on_random_covariances():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    s1, s2 = a @ a.T + 0.1 * np.eye(5), b @ b.T + 0.1 * np.eye(5)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert ev.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_fad_of_sampled_shifted_gaussians_approaches_the_closed_form():
    rng = np.random.default_rng(2)
    real = rng.normal(size=(20000, 4))
    fake = rng.normal(size=(20000, 4)) * 2.0 + 1.0  # N(1, 4 I)
    expected = 4 * 1.0**2 + 4 * (1.0 - 2.0) ** 2  # = 8
    assert ev.frechet_audio_distance(real, fake) == pytest.approx(expected, rel=0.05)


def test_fad_is_finite_for_singular_covariances():
    rng = np.random.default_rng(3)
    real, fake = rng.normal(size=(3, 16)), rng.normal(size=(4, 16)) + 1  # N < D: rank-deficient
    value = ev.frechet_audio_distance(real, fake)
    assert np.isfinite(value) and value > 0


def test_fad_needs_two_vectors():
    with pytest.raises(MusicGenError, match="at least 2"):
        ev.frechet_audio_distance(np.zeros((1, 4)), np.zeros((5, 4)))


def test_codec_latent_embedding_frames_and_mean():
    codec = build_codec(tiny_codec_config())
    audio = torch.randn(2, 1, 1600) * 0.1  # 5 frames at hop 320
    frames = ev.CodecLatentEmbedding(codec)(audio)
    mean = ev.CodecLatentEmbedding(codec, pooling="mean")(audio)
    assert isinstance(ev.CodecLatentEmbedding(codec), ev.Embedding)
    assert frames.shape == (2 * 5, 32) and mean.shape == (2, 32)
    torch.testing.assert_close(mean[0], frames[:5].mean(0))


# --- the adherence classifier -------------------------------------------------------------------


def test_classifier_separates_synthetic_code_distributions():
    rng = np.random.default_rng(0)
    num_classes, codebooks, card, frames = 4, 3, 32, 60
    # Each class prefers its own random subset of codes in every codebook.
    dists = rng.dirichlet(np.full(card, 0.2), size=(num_classes, codebooks))  # [C, K, card]

    def sample(label: int) -> np.ndarray:
        return np.stack(
            [rng.choice(card, size=frames, p=dists[label, k]) for k in range(codebooks)]
        )

    train_labels = [c for c in range(num_classes) for _ in range(5)]
    test_labels = [c for c in range(num_classes) for _ in range(10)]
    log_probs = ev.fit_code_unigrams(
        [sample(c) for c in train_labels], train_labels, num_classes, card
    )
    assert log_probs.shape == (num_classes, codebooks, card)
    np.testing.assert_allclose(np.exp(log_probs).sum(-1), 1.0)
    predicted = ev.classify_codes(log_probs, [sample(c) for c in test_labels])
    report = ev.adherence_report(test_labels, predicted.tolist(), ["a", "b", "c", "d"])
    assert report["accuracy"] == 1.0
    assert report["chance"] == 0.25
    assert report["confusion"] == (10 * np.eye(num_classes, dtype=int)).tolist()


def test_classifier_unseen_codes_stay_finite():
    log_probs = ev.fit_code_unigrams([np.zeros((2, 5), dtype=np.int64)], [0], 2, 8)
    scores = ev.code_scores(log_probs, np.full((2, 5), 7))
    assert np.isfinite(scores).all()


def test_confusion_rows_are_prompted_columns_predicted():
    assert ev.confusion_matrix([0, 0, 1], [1, 0, 1], 2) == [[1, 1], [0, 1]]


@pytest.mark.parametrize("cardinality", [64, 256])
def test_classifier_recognises_held_out_real_synth_codes(cardinality):
    """The sanity check: references from some clips, real codes of other clips classified.
    This proves the classifier on real codec codes, independently of any model."""
    codec = tiny_calibrated_codec(num_codebooks=4, cardinality=cardinality)
    codes, metas = synth_codes(codec, num_clips=96, seconds=2.0, seed=1)
    labels = list(synth.SYNTH_CLASSES)
    classes = [labels.index(ev.row_class({"attributes": json.dumps(m)})) for m in metas]
    # 10 clips per class for references, 6 held out. With fewer references (say 6 of 2 s
    # against 256 codes) the class histograms get sparse and accuracy drops to ~80%.
    train, held = slice(0, 60), slice(60, 96)
    log_probs = ev.fit_code_unigrams(codes[train], classes[train], len(labels), cardinality)
    predicted = ev.classify_codes(log_probs, codes[held])
    accuracy = float(np.mean(predicted == np.array(classes[held])))
    assert accuracy >= 0.9, ev.confusion_matrix(classes[held], predicted.tolist(), len(labels))


def test_row_class_from_attribute_instrument_or_caption():
    assert ev.row_class({"attributes": json.dumps({"synth_class": "bell"})}) == "bell"
    assert ev.row_class({"attributes": "{}", "instrument": "sawtooth bass"}) == "saw_bass"
    assert ev.row_class({"attributes": "{}", "caption": "solo drums at 90 bpm"}) == "noise_drums"
    assert ev.row_class({"attributes": "{}", "caption": "a jazz trio"}) is None


def test_adherence_prompts_use_held_out_phrasings():
    prompts, prompted = ev.adherence_prompts(["bell", "saw_bass"], per_class=3, seed=0)
    assert prompted == [0, 0, 0, 1, 1, 1]
    assert len(set(prompts[:3])) == 3
    for prompt in prompts[:3]:  # both held-out phrasings, then the first with other attributes
        assert synth.class_of_caption(prompt) == "bell"
        assert prompt in synth.heldout_captions("bell", 0) + synth.heldout_captions("bell", 1)


# --- validation loss ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def loss_dataset(tmp_path_factory):
    """Three rows of random codes of different lengths, for a model with 4 x 64 codes."""
    rng = np.random.default_rng(0)
    codes = [rng.integers(0, 64, size=(4, t)) for t in (7, 5, 9)]
    metas = [
        {"name": f"clip{i}", "description": caption, "genre": genre, "instrument": "bell"}
        for i, (caption, genre) in enumerate(
            [("warm pad", "ambient"), ("fast drums", "rock"), ("a bell tune", "folk")]
        )
    ]
    codec = build_codec(tiny_codec_config())
    root = write_dataset(tmp_path_factory.mktemp("loss"), codes, metas, codec, save_codec=False)
    return root, codes, metas


def hand_loss(model, codes: list[np.ndarray], metas: list[dict], frames: int):
    """Per-codebook cross-entropy, row by row, with the delay written out as loops."""
    special, num_codebooks = model.lm.cfg.special_token, model.lm.cfg.num_codebooks
    sums, counts = np.zeros(num_codebooks), np.zeros(num_codebooks)
    for row, meta in zip(codes, metas, strict=True):
        row = row[:, :frames]
        length = row.shape[1]
        steps = length + num_codebooks - 1
        inputs = torch.full((1, num_codebooks, steps), special)
        for k in range(num_codebooks):
            for t in range(length):
                if t + k + 1 < steps:  # delayed step t + k is read at position t + k + 1
                    inputs[0, k, t + k + 1] = int(row[k, t])
        attrs = {"genre": meta["genre"], "instrument": meta["instrument"]}
        memory, mask = model.conditioner([meta["description"]], [attrs])
        with torch.no_grad():
            logp = F.log_softmax(model.lm(inputs, memory, mask).double(), dim=-1)  # [1, K, S, card]
        for k in range(num_codebooks):
            for t in range(length):
                sums[k] -= float(logp[0, k, t + k, int(row[k, t])])
                counts[k] += 1
    return sums / counts


@pytest.mark.parametrize("segment_frames", [None, 6])
def test_validation_loss_equals_hand_computation(loss_dataset, segment_frames):
    root, codes, metas = loss_dataset
    model = tiny_musicgen(seed=3, attributes=["genre", "instrument"])
    result = ev.validation_loss(
        model, root, batch_size=2, segment_frames=segment_frames, split="all"
    )
    expected = hand_loss(model, codes, metas, segment_frames or 10**6)
    got = [entry["loss"] for entry in result["per_codebook"]]
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert result["loss"] == pytest.approx(expected.mean(), rel=1e-5)
    assert result["perplexity"] == pytest.approx(np.exp(expected.mean()), rel=1e-5)
    assert result["rows"] == 3


def test_validation_loss_max_batches_and_split_fallback(loss_dataset):
    root, _, _ = loss_dataset
    model = tiny_musicgen(seed=3)
    one = ev.validation_loss(model, root, batch_size=1, max_batches=1, split="all")
    assert one["rows"] == 1
    held = ev.validation_loss(model, root, batch_size=4, split="val", val_fraction=0.0)
    assert "note" in held and held["rows"] == 3
    one_file = ev.validation_loss(model, root, batch_size=4, split="val", val_fraction=0.05)
    assert "note" not in one_file and one_file["rows"] == 1  # training holds out >= 1 file
    with pytest.raises(UsageError):
        ev.validation_loss(model, root, batch_size=0)


def test_split_is_by_source_stable_and_matches_training():
    from music_gen.pipelines.shards import choose_val_sources

    rows = [{"source": f"/d/{i // 2}.wav", "id": str(i)} for i in range(2000)]  # 2 rows a file
    train, held = ev.split_rows(rows, 0.1)
    assert len(train) + len(held) == 2000
    assert 140 < len(held) < 260
    assert ev.split_rows(rows, 0.1)[1] == held
    held_sources = {row["source"] for row in held}
    assert held_sources == choose_val_sources([r["source"] for r in rows], 0.1)
    assert not held_sources & {row["source"] for row in train}


def test_missing_dataset_is_a_user_error(tmp_path):
    with pytest.raises(MusicGenError, match="not a tokenized dataset"):
        ev.read_rows(str(tmp_path))
