"""A FAD that separates real from degraded audio, and the audio-level adherence classifier,
both on real synth clips rendered here."""

import numpy as np
import pytest
import torch

from music_gen.pipelines import adherence, fad, synth

RATE = 16_000


def embed(audio: torch.Tensor) -> np.ndarray:
    return fad.LogMelEmbedding(RATE)(audio).double().numpy()


@pytest.fixture(scope="module")
def pads():
    """Real sine-pad clips: a reference set and a held-out one (other seeds)."""
    real, _ = adherence.synth_clips(["sine_pad"], 12, 2.0, RATE, seed=0)
    held_out, _ = adherence.synth_clips(["sine_pad"], 12, 2.0, RATE, seed=1)
    return real, held_out


def test_log_mel_fad_separates_real_from_degraded(pads):
    real, held_out = pads
    baseline = fad.frechet_audio_distance(embed(real), embed(held_out))
    generator = torch.Generator().manual_seed(0)
    degraded = {
        "noise": 0.3 * torch.randn(real.shape, generator=generator),
        "silence": torch.zeros_like(real),
        "bell": adherence.synth_clips(["bell"], 12, 2.0, RATE, seed=1)[0],
        "drums": adherence.synth_clips(["noise_drums"], 12, 2.0, RATE, seed=1)[0],
    }
    scores = {k: fad.frechet_audio_distance(embed(real), embed(v)) for k, v in degraded.items()}
    assert baseline > 0
    for name, score in scores.items():
        assert score > 20 * baseline, (name, score, baseline)


def test_log_mel_embedding_is_registered():
    class Model:
        sample_rate = 32_000

    embedding = fad.EMBEDDINGS["log-mel"](Model())
    out = embedding(torch.zeros(2, 1, 32_000))  # 1 s at 32 kHz -> 16 kHz frames
    assert out.shape == (2 * 32, 64) and embedding.name == "log-mel"


def test_audio_classifier_on_real_held_out_clips():
    labels = list(synth.SYNTH_CLASSES)
    classifier = adherence.fit_synth_classifier(labels, RATE, per_class=12, seconds=2.0)
    audio, targets = adherence.synth_clips(labels, 8, 2.0, RATE, seed=7)  # other clips
    predicted = classifier.predict(audio)
    accuracy = float((predicted == np.asarray(targets)).mean())
    assert accuracy >= 0.9, adherence.confusion_matrix(targets, predicted.tolist(), len(labels))
    # Noise is not mistaken for a tonal class's centroid when drums are not among them.
    tonal = adherence.fit_synth_classifier(["sine_pad", "bell"], RATE, per_class=4, seconds=1.0)
    assert tonal.predict(audio[:1]).tolist() == [0]  # the first clip is a sine pad


def test_audio_adherence_decodes_and_classifies():
    """With a codec whose decode returns the clip its codes name, adherence is perfect."""
    labels = ["sine_pad", "bell"]
    audio, _ = adherence.synth_clips(labels, 2, 1.0, RATE, seed=3)  # [4, 1, S]

    class Model:
        sample_rate = RATE

        def decode(self, codes):  # code value = index of the clip to play
            return audio[codes[:, 0, 0]]

    generated = [np.full((1, 50), i, dtype=np.int64) for i in range(4)]
    report = adherence.audio_adherence(Model(), generated, labels, per_class=2, seed=0)
    assert report["accuracy"] == 1.0 and report["labels"] == labels
