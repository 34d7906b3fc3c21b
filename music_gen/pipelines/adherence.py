"""Prompt adherence's classifiers (no model, no Ray): one on codes, one on audio.

In code space, a bag of codes per synth class: per class and codebook a unigram
distribution over the codes, add-one smoothed; a clip goes to the class under which its
codes have the highest mean log-likelihood. Why this one, and how well it tells real
codes apart: see ``evaluate.py``.

On audio (``AudioClassifier``), judged by ear-like features rather than by code
histograms: each clip becomes the mean and standard deviation over time of its log-mel
spectrum (``fad.log_mel_frames``: timbre and register, and how much they move), the
features are standardised, and a clip goes to the nearest class centroid. It is fitted
on real synth audio rendered for the purpose (``fit_synth_classifier``), never on
decoded codes, so a generated clip scores only if it sounds like the prompted class;
on real held-out clips it is right >= 90% of the time (tested), so a low score
measures the model and its codec, not the classifier. ``audio_adherence`` decodes a
model's generations with its codec and classifies them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch

from music_gen.errors import MusicGenError, UsageError
from music_gen.pipelines import fad, shards, synth

KEYWORD_CLASSES = {word: cls for cls, word in synth.CLASS_KEYWORDS.items()}


def row_class(row: dict) -> str | None:
    """The synth class of a row: its ``synth_class`` attribute, its instrument, its caption."""
    try:
        attrs = json.loads(row.get("attributes") or "{}")
    except json.JSONDecodeError:
        attrs = {}
    if attrs.get("synth_class") in synth.SYNTH_CLASSES:
        return attrs["synth_class"]
    if row.get("instrument") in KEYWORD_CLASSES:
        return KEYWORD_CLASSES[row["instrument"]]
    return synth.class_of_caption(row.get("caption") or "")


def fit_code_unigrams(
    codes: Sequence[np.ndarray],
    labels: Sequence[int],
    num_classes: int,
    cardinality: int,
    alpha: float = 1.0,
) -> np.ndarray:
    """Per class and codebook, log-probabilities of each code: ``[C, K, card]``.

    ``codes`` are ``[K, T]`` arrays, ``labels`` their class indices. Add-``alpha``
    smoothing keeps a code never seen in a class at a finite (low) likelihood.
    """
    num_codebooks = codes[0].shape[0]
    counts = np.full((num_classes, num_codebooks, cardinality), alpha, dtype=np.float64)
    for row, label in zip(codes, labels, strict=True):
        for k in range(num_codebooks):
            counts[label, k] += np.bincount(row[k], minlength=cardinality)[:cardinality]
    return np.log(counts / counts.sum(-1, keepdims=True))


def code_scores(log_probs: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Mean log-likelihood of ``codes [K, T]`` under each class: ``[C]``."""
    num_codebooks = codes.shape[0]
    picked = log_probs[:, np.arange(num_codebooks)[:, None], codes]  # [C, K, T]
    return picked.mean(axis=(1, 2))


def classify_codes(log_probs: np.ndarray, codes: Sequence[np.ndarray]) -> np.ndarray:
    """The most likely class of each ``[K, T]`` clip: ``[N]`` class indices."""
    return np.array([int(code_scores(log_probs, row).argmax()) for row in codes], dtype=np.int64)


def confusion_matrix(true: Sequence[int], predicted: Sequence[int], num_classes: int) -> list:
    """``[C, C]`` counts: rows the true (prompted) class, columns the predicted one."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for t, p in zip(true, predicted, strict=True):
        matrix[t, p] += 1
    return matrix.tolist()


def adherence_report(true: Sequence[int], predicted: Sequence[int], labels: list[str]) -> dict:
    hits = sum(int(t == p) for t, p in zip(true, predicted, strict=True))
    return {
        "accuracy": hits / max(1, len(true)),
        "confusion": confusion_matrix(true, predicted, len(labels)),
        "labels": list(labels),
        "chance": 1.0 / len(labels),
    }


def synth_labels(rows: list[dict], classes: Sequence[str] | None) -> tuple[list[str], list]:
    """The classes to evaluate (in ``SYNTH_CLASSES`` order) and every row's class."""
    found = [row_class(row) for row in rows]
    present = [c for c in synth.SYNTH_CLASSES if c in set(found)]
    if classes is None:
        labels = present
    else:
        unknown = sorted(set(classes) - set(synth.SYNTH_CLASSES))
        if unknown:
            raise UsageError(f"unknown synth classes {unknown}")
        missing = sorted(set(classes) - set(present))
        if missing:
            raise MusicGenError(f"no rows of class {missing} in the dataset to build references")
        labels = [c for c in synth.SYNTH_CLASSES if c in classes]
    if not labels:
        raise MusicGenError("no synthetic rows in the dataset: prompt adherence needs synth data")
    return labels, found


def class_references(rows: list[dict], found: list, labels: list[str], cardinality: int):
    """Unigram references ``[C, K, card]`` from the rows of the evaluated classes."""
    index = {label: i for i, label in enumerate(labels)}
    picked = [
        (shards.read_codes(r), index[c]) for r, c in zip(rows, found, strict=True) if c in index
    ]
    codes, targets = zip(*picked, strict=True)
    return fit_code_unigrams(codes, targets, len(labels), cardinality)


def adherence_prompts(labels: list[str], per_class: int, seed: int) -> tuple[list[str], list]:
    """``per_class`` held-out captions per class (phrasings cycle, attributes vary by seed)."""
    prompts, prompted = [], []
    for index, cls in enumerate(labels):
        phrasings = len(synth.caption_templates(cls, "heldout"))
        for j in range(per_class):
            prompts.append(synth.heldout_captions(cls, seed=seed + j // phrasings)[j % phrasings])
            prompted.append(index)
    return prompts, prompted


# --- on audio ---------------------------------------------------------------------------


def clip_features(audio, sample_rate: int) -> np.ndarray:
    """``[B, C, S]`` audio -> ``[B, 2 * n_mels]``: log-mel mean and std over time."""
    frames = fad.log_mel_frames(audio, sample_rate)  # [B, N, M]
    return torch.cat([frames.mean(1), frames.std(1)], dim=1).double().numpy()


class AudioClassifier:
    """Nearest centroid on standardised clip features (see the module doc)."""

    def __init__(self, labels: Sequence[str], sample_rate: int):
        self.labels, self.sample_rate = list(labels), sample_rate
        # Set by fit: feature mean and scale [F], class centroids [classes, F].
        self.mean = self.scale = self.centroids = np.zeros(0)

    def fit(self, audio, targets: Sequence[int]) -> AudioClassifier:
        """``audio [N, C, S]`` with ``targets`` (indices into ``labels``); every class needs a clip."""
        x = clip_features(audio, self.sample_rate)  # [N, F]
        classes = np.asarray(targets)
        missing = sorted(set(range(len(self.labels))) - set(classes.tolist()))
        if missing:
            raise MusicGenError(f"no clips of class {[self.labels[i] for i in missing]} to fit on")
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-6
        z = (x - self.mean) / self.scale
        self.centroids = np.stack([z[classes == c].mean(0) for c in range(len(self.labels))])
        return self

    def predict(self, audio) -> np.ndarray:
        """Class index of each clip of ``audio [N, C, S]``: ``[N]``."""
        if not self.centroids.size:
            raise MusicGenError("the audio classifier is not fitted")
        z = (clip_features(audio, self.sample_rate) - self.mean) / self.scale  # [N, F]
        distances = ((z[:, None, :] - self.centroids[None]) ** 2).sum(-1)  # [N, classes]
        return distances.argmin(1)


def synth_clips(labels: Sequence[str], per_class: int, seconds: float, sample_rate: int, seed: int):
    """``per_class`` real clips of each class: audio ``[N, 1, S]`` and class indices."""
    clips, targets = [], []
    for index, cls in enumerate(labels):
        for j in range(per_class):
            audio, _ = synth.make_clip(j, seconds, seed, sample_rate, cls=cls)
            clips.append(torch.from_numpy(audio))
            targets.append(index)
    return torch.stack(clips), targets  # [N, 1, S]


def fit_synth_classifier(
    labels: Sequence[str], sample_rate: int, per_class: int = 12, seconds: float = 2.0,
    seed: int = 104_729,
) -> AudioClassifier:  # fmt: skip
    """An ``AudioClassifier`` fitted on freshly rendered real clips of the synth classes."""
    audio, targets = synth_clips(labels, per_class, seconds, sample_rate, seed)
    return AudioClassifier(labels, sample_rate).fit(audio, targets)


def audio_adherence(
    model, generated: Sequence[np.ndarray], labels: list[str], per_class: int, seed: int,
    batch_size: int = 8,
) -> dict:  # fmt: skip
    """Adherence judged on audio: ``generated`` codes (in ``adherence_prompts`` order for
    ``labels``, ``per_class``, ``seed``) decoded by the model's codec and classified by
    an ``AudioClassifier`` fitted on real synth clips at the model's sample rate."""
    from music_gen.pipelines import losses

    classifier = fit_synth_classifier(labels, model.sample_rate)
    _, prompted = adherence_prompts(labels, per_class, seed)
    predicted = []
    for start in range(0, len(generated), batch_size):
        chunk = generated[start : start + batch_size]
        codes, _ = losses.crop_codes(chunk, max(c.shape[-1] for c in chunk), None)  # [B, K, T]
        audio = model.decode(codes).cpu()  # [B, C, S]
        predicted += classifier.predict(audio).tolist()
    return {**adherence_report(prompted, predicted, labels), "classifier": "log-mel centroid"}
