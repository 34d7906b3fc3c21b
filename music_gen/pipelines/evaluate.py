"""Evaluate a model on a tokenized dataset: validation loss, prompt adherence, FAD.

::

    music-gen evaluate --model work/checkpoints/run1 --data work/data/synth -o results.json

Three measures, each a plain function that the training loop and the benchmarks
can call on their own:

``validation_loss``
    Cross-entropy of the model on the dataset's held-out rows, computed exactly as
    training computes its loss: codes ``[B, K, T]`` are delayed (``build_delay``), the
    model reads ``[start ; delayed[..., :-1]]`` and predicts ``delayed``; each codebook's
    loss is the mean over its real slots (``valid_mask``; padding skipped) and the loss
    is the mean over codebooks. Reported with perplexity ``exp(loss)``, per codebook too.

``prompt_adherence`` (synthetic data only)
    For each synth class, generate from held-out caption phrasings the model never
    saw in training (``synth.heldout_captions``) and classify the generated codes
    against per-class references built from the dataset's codes. The classifier is a
    bag of codes: per class and codebook a unigram distribution over the codes,
    add-one (Laplace) smoothed; a clip goes to the class under which its codes have
    the highest mean log-likelihood (over codebooks and frames). Why this one: the
    classes differ in timbre and register, which the codec maps to different codes,
    while key, tempo and where a segment was cut change only the order of the codes,
    which a bag of codes ignores; it needs nothing but counting and has no knobs to
    tune. Checked on real codes: with about 10 reference clips per class, the held-out
    clips of a synth dataset are classified 94-100% right with the calibrated tiny
    codec (``tests/unit/test_evaluate.py``), so a low score measures the model, not the
    classifier. With only a few short clips per class the histograms get sparse
    (256 codes) and the classifier itself drops to ~80%.

``frechet_audio_distance``
    Fréchet distance between Gaussians fitted to embeddings of real and generated
    audio, with a pluggable ``Embedding``. The default, ``CodecLatentEmbedding``, is the
    model's own codec encoder: every latent frame is one vector (as the original FAD
    pools the frames of all clips). Both sides are audio decoded by the model's codec
    (the real side from the dataset's codes): the source audio may be remote or gone,
    and decoding both through the same codec leaves only the language model's share.
    Offline caveat: the calibrated tiny codec's decoder is random, so every decoded
    clip is similar faint noise and FAD comes out near 0 whatever the codes; it
    means something only with a trained codec (``facebook/encodec_32khz``). Offline,
    judge the model by loss and prompt adherence, which work in code space.

Which rows are held out: the same source files as training holds out
(``train.choose_val_sources``: a stable hash of each file's path against
``val_fraction``, whole files on one side), so ``split="val"`` scores exactly the rows
training validated on. With no held-out rows (``val_fraction`` 0, a single file) the
loss falls back to all rows, with a note in the results.

``evaluate`` runs all three, writes JSON and logs metrics to MLflow (the run given by
``run_id``, else a new run in experiment ``evaluate``). Plain pyarrow reads the shards:
evaluation needs no Ray.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from music_gen.errors import MusicGenError, UsageError
from music_gen.models.patterns import build_delay, valid_mask
from music_gen.pipelines import shards, sources, synth

if TYPE_CHECKING:
    from music_gen.models.generator import MusicGen

ROW_COLUMNS = [
    "id",
    "source",
    "caption",
    "genre",
    "moods",
    "key",
    "bpm",
    "instrument",
    "attributes",
    "codes",
    "num_codebooks",
    "frames",
]
ATTRIBUTE_NAMES = ("genre", "moods", "key", "bpm", "instrument")
KEYWORD_CLASSES = {word: cls for cls, word in synth.CLASS_KEYWORDS.items()}
DEFAULT_TRACKING_URI = "sqlite:///work/mlflow.db"  # relative to the working directory
EXPERIMENT = "evaluate"


# --- reading the dataset ----------------------------------------------------------------


def read_rows(data_dir: str, max_rows: int | None = None) -> list[dict]:
    """Rows of every shard of a tokenized dataset (``ROW_COLUMNS``), in shard order."""
    paths = shards.shard_paths(str(data_dir))
    if not paths:
        raise MusicGenError(f"{data_dir}: no shards (run `music-gen data tokenize` first)")
    rows: list[dict] = []
    for uri in paths:
        fs, path = sources.resolve(uri)
        for batch in pq.ParquetFile(path, filesystem=fs).iter_batches(columns=ROW_COLUMNS):
            rows += batch.to_pylist()
            if max_rows is not None and len(rows) >= max_rows:
                return rows[:max_rows]
    return rows


def split_rows(rows: list[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
    """``(train, validation)`` rows, split by source file exactly as training splits them."""
    from music_gen.pipelines.train import choose_val_sources

    held = choose_val_sources([row["source"] for row in rows], val_fraction)
    train = [row for row in rows if row["source"] not in held]
    return train, [row for row in rows if row["source"] in held]


def row_attributes(row: dict) -> dict:
    """The conditioning attributes of a row, as the conditioner takes them."""
    return {name: row.get(name) for name in ATTRIBUTE_NAMES}


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


def check_model_fits(model: MusicGen, data_dir: str) -> dict:
    """Raise unless the model's codebooks can read the dataset's codes; the codec metadata."""
    return shards.check_codec(str(data_dir), model.lm.cfg.num_codebooks, model.lm.cfg.cardinality)


# --- validation loss ---------------------------------------------------------------------


def pad_codes(codes: Sequence[np.ndarray], frames: int, pad: int) -> torch.Tensor:
    """Rows ``[K, T_i]`` cut to at most ``frames`` and padded with ``pad``: ``[B, K, T]``."""
    length = min(frames, max(c.shape[-1] for c in codes))
    out = torch.full((len(codes), codes[0].shape[0], length), pad, dtype=torch.long)
    for i, row in enumerate(codes):
        part = torch.from_numpy(row[:, :length])  # [K, t]
        out[i, :, : part.shape[-1]] = part
    return out


def loss_terms(logits: torch.Tensor, delayed: torch.Tensor, special: int) -> tuple:
    """Per-codebook cross-entropy sums and counts over the real slots of the delay pattern.

    ``logits [B, K, S, card]`` predict ``delayed [B, K, S]``. A slot counts when the
    pattern holds a code there (``valid_mask``) and it is not padding (``special``).
    Returns ``(sums [K], counts [K])``; ``sums / counts`` is training's per-codebook loss.
    """
    num_codebooks, steps = delayed.shape[1], delayed.shape[2]
    mask = valid_mask(num_codebooks, steps, delayed.device)[None] & (delayed != special)
    targets = delayed.masked_fill(~mask, -100)  # [B, K, S]; -100: cross_entropy skips it
    ce = F.cross_entropy(
        logits.float().flatten(0, 2), targets.flatten(), ignore_index=-100, reduction="none"
    ).view_as(delayed)  # [B, K, S], 0 where skipped
    return ce.sum(dim=(0, 2)), mask.sum(dim=(0, 2))  # [K], [K]


@torch.inference_mode()
def batch_loss_terms(model: MusicGen, rows: list[dict], frames: int) -> tuple:
    """``loss_terms`` of one batch of shard rows (codes cut to ``frames``)."""
    special = model.lm.cfg.special_token
    codes = pad_codes([shards.read_codes(r) for r in rows], frames, special)  # [B, K, T]
    codes = codes.to(model.device)
    delayed = build_delay(codes, special)  # [B, K, S]
    start = torch.full_like(delayed[..., :1], special)  # [B, K, 1]
    inputs = torch.cat([start, delayed[..., :-1]], dim=-1)  # [B, K, S]
    memory, mask = model.conditioner(
        [r["caption"] or "" for r in rows], [row_attributes(r) for r in rows]
    )
    logits = model.lm(inputs, memory, mask)  # [B, K, S, card]
    return loss_terms(logits, delayed, special)


def summarize_loss(sums: torch.Tensor, counts: torch.Tensor) -> dict:
    per_codebook = (sums / counts.clamp_min(1)).tolist()
    loss = float(np.mean(per_codebook))
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 80.0)),
        "per_codebook": [
            {"codebook": k, "loss": value, "perplexity": math.exp(min(value, 80.0))}
            for k, value in enumerate(per_codebook)
        ],
        "tokens": int(counts.sum()),
    }


def validation_loss(
    model: MusicGen,
    data_dir: str,
    batch_size: int = 8,
    max_batches: int | None = None,
    segment_frames: int | None = None,
    split: str = "val",
    val_fraction: float = 0.05,
    rows: list[dict] | None = None,
) -> dict:
    """Loss and perplexity (overall and per codebook) on the dataset's held-out rows.

    ``split`` is ``val`` (the source files training holds out) or ``all``.
    ``segment_frames`` cuts each row to its first frames (``None``: the model's context).
    Tokens are pooled over batches: each codebook's loss is its total cross-entropy
    over its total count, so one batch gives exactly training's loss on that batch.
    """
    if batch_size < 1 or (max_batches is not None and max_batches < 1):
        raise UsageError("batch_size and max_batches must be at least 1")
    rows = read_rows(data_dir) if rows is None else rows
    chosen, note = _pick_split(rows, split, val_fraction)
    frames = min(segment_frames or model.max_frames, model.max_frames)
    count = math.ceil(len(chosen) / batch_size)
    count = count if max_batches is None else min(count, max_batches)
    num_codebooks = model.lm.cfg.num_codebooks
    sums, counts = torch.zeros(num_codebooks), torch.zeros(num_codebooks, dtype=torch.long)
    for index in range(count):
        batch = chosen[index * batch_size : (index + 1) * batch_size]
        batch_sums, batch_counts = batch_loss_terms(model, batch, frames)
        sums += batch_sums.cpu()
        counts += batch_counts.cpu()
    result = summarize_loss(sums, counts)
    result.update(split=split, rows=min(len(chosen), count * batch_size), frames=frames)
    if note:
        result["note"] = note
    return result


def _pick_split(rows: list[dict], split: str, val_fraction: float) -> tuple[list[dict], str]:
    if split == "all":
        return rows, ""
    if split != "val":
        raise UsageError(f"split must be 'val' or 'all', got {split!r}")
    _, held = split_rows(rows, val_fraction)
    if held:
        return held, ""
    return rows, f"no source file falls in the {val_fraction:g} validation split: all rows used"


# --- prompt adherence --------------------------------------------------------------------


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


def generate_batches(
    model: MusicGen,
    prompts: list[str],
    duration: float,
    seed: int,
    guidance_scale: float,
    batch_size: int,
) -> list[np.ndarray]:
    """Codes ``[K, T]`` for each prompt, in batches, row ``i`` seeded with ``seed + i``."""
    out: list[np.ndarray] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        codes = model.generate_codes(
            chunk,
            duration=duration,
            guidance_scale=guidance_scale,
            seed=[seed + start + i for i in range(len(chunk))],
        )  # [B, K, T]
        out += list(codes.cpu().numpy())
    return out


def _prompt_adherence(model, rows, classes, per_class, duration, seed, guidance_scale, batch_size):
    """``prompt_adherence`` on rows already read; also returns the generated codes."""
    if per_class < 1 or batch_size < 1:
        raise UsageError("per_class and batch_size must be at least 1")
    labels, found = synth_labels(rows, classes)
    log_probs = class_references(rows, found, labels, model.lm.cfg.cardinality)
    prompts, prompted = adherence_prompts(labels, per_class, seed)
    generated = generate_batches(model, prompts, duration, seed, guidance_scale, batch_size)
    predicted = classify_codes(log_probs, generated)
    report = adherence_report(prompted, predicted.tolist(), labels)
    report.update(per_class=per_class, duration=duration, guidance_scale=guidance_scale)
    return report, generated


def prompt_adherence(
    model: MusicGen,
    data_dir: str,
    classes: Sequence[str] | None = None,
    per_class: int = 4,
    duration: float = 3.0,
    seed: int = 0,
    guidance_scale: float = 3.0,
    batch_size: int = 8,
) -> dict:
    """Does generated music match its prompt? Synthetic datasets only (see module doc).

    Returns ``accuracy``, ``confusion`` (rows: prompted class, columns: predicted),
    ``labels`` and ``chance`` (``1 / len(labels)``).
    """
    rows = read_rows(data_dir)
    report, _ = _prompt_adherence(
        model, rows, classes, per_class, duration, seed, guidance_scale, batch_size
    )
    return report


# --- Fréchet Audio Distance -----------------------------------------------------------------


@runtime_checkable
class Embedding(Protocol):
    """Audio ``[B, C, S]`` at ``sample_rate`` -> embeddings ``[N, D]`` (N vectors, any N)."""

    name: str
    sample_rate: int

    def __call__(self, audio: torch.Tensor) -> torch.Tensor: ...


class CodecLatentEmbedding:
    """A codec encoder's continuous latents: every frame a vector, or one mean per clip."""

    def __init__(self, codec, pooling: str = "frames"):
        if pooling not in ("frames", "mean"):
            raise UsageError(f"pooling must be 'frames' or 'mean', got {pooling!r}")
        self.codec, self.pooling = codec, pooling
        self.name = "codec-latents" if pooling == "frames" else "codec-latents-mean"
        self.sample_rate = codec.sample_rate

    @torch.inference_mode()
    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        latents = self.codec.latents(audio).float()  # [B, D, T]
        if self.pooling == "mean":
            return latents.mean(dim=-1)  # [B, D]
        return latents.transpose(1, 2).reshape(-1, latents.shape[1])  # [B * T, D]


# Name -> embedding built from the model being evaluated (the CLI's --fad-embedding).
EMBEDDINGS = {
    "codec-latents": lambda model: CodecLatentEmbedding(model.codec, "frames"),
    "codec-latents-mean": lambda model: CodecLatentEmbedding(model.codec, "mean"),
}


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix (tiny negative eigenvalues of
    round-off clipped to 0), so that the distance stays real and finite for singular ones."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance of two Gaussians: ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2)``.

    ``tr((S1 S2)^1/2)`` is computed as ``tr((A S2 A)^1/2)`` with ``A = S1^1/2``: the same
    eigenvalues, but a symmetric matrix, so an eigen-decomposition stays exact where
    ``sqrtm`` of the non-symmetric product can turn complex.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    root1 = _sqrtm_psd(sigma1)
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1).clip(min=0)
    value = (
        ((mu1 - mu2) ** 2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * np.sqrt(cross).sum()
    )
    return float(max(value, 0.0))


def gaussian(embeddings) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise MusicGenError(f"FAD needs at least 2 embedding vectors [N, D], got {x.shape}")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def frechet_audio_distance(real_embeddings, fake_embeddings) -> float:
    """FAD: Fréchet distance of Gaussians fitted to ``[N, D]`` and ``[M, D]`` embeddings."""
    return frechet_distance(*gaussian(real_embeddings), *gaussian(fake_embeddings))


def embed_codes(
    model: MusicGen, codes: Sequence[np.ndarray], embedding: Embedding, batch_size: int
) -> np.ndarray:
    """Decode ``[K, T]`` codes with the model's codec and embed the audio: ``[N, D]``."""
    from music_gen.audio.transforms import resample

    out = []
    for start in range(0, len(codes), batch_size):
        chunk = codes[start : start + batch_size]
        batch = pad_codes(chunk, max(c.shape[-1] for c in chunk), 0)  # [B, K, T]
        audio = model.decode(batch)  # [B, C, S]
        audio = resample(audio, model.sample_rate, embedding.sample_rate)
        out.append(embedding(audio).double().cpu().numpy())
    return np.concatenate(out)


def fad_section(model, real_codes, fake_codes, embedding: Embedding, batch_size: int) -> dict:
    """FAD between decoded real and generated codes, real clips cut to the generated length."""
    frames = max(c.shape[-1] for c in fake_codes)
    real = embed_codes(model, [c[:, :frames] for c in real_codes], embedding, batch_size)
    fake = embed_codes(model, fake_codes, embedding, batch_size)
    return {
        "fad": frechet_audio_distance(real, fake),
        "embedding": embedding.name,
        "real_clips": len(real_codes),
        "fake_clips": len(fake_codes),
        "real_vectors": int(real.shape[0]),
        "fake_vectors": int(fake.shape[0]),
    }


# --- everything together ----------------------------------------------------------------------


def evaluate(
    model_src,
    data_dir: str,
    output: str | None = None,
    run_id: str | None = None,
    *,
    batch_size: int = 8,
    max_batches: int | None = None,
    segment_frames: int | None = None,
    split: str = "val",
    val_fraction: float = 0.05,
    per_class: int = 4,
    duration: float = 3.0,
    guidance_scale: float = 3.0,
    seed: int = 0,
    fad_clips: int = 24,
    embedding: Embedding | str = "codec-latents",
    device=None,
    mlflow_logging: bool = True,
) -> dict:
    """Validation loss, prompt adherence (synth data) and FAD of ``model_src`` on ``data_dir``.

    ``model_src`` is anything ``MusicGen.from_pretrained`` loads, or a ``MusicGen``.
    Writes the results as JSON to ``output`` (when given) and logs them to MLflow.
    """
    if mlflow_logging and run_id is not None:
        check_run(run_id)
    model = load_model(model_src, device)
    check_model_fits(model, data_dir)
    if isinstance(embedding, str):
        embedding = _embedding_named(embedding, model)
    rows = read_rows(data_dir)
    real = _fad_real_rows(rows, split, val_fraction, fad_clips)
    results: dict = {"model": str(model_src), "data": str(data_dir), "rows": len(rows)}
    results["validation"] = validation_loss(
        model, data_dir, batch_size, max_batches, segment_frames, split, val_fraction, rows
    )
    generation = (duration, seed, guidance_scale, batch_size)
    if all(row_class(row) is not None for row in rows):
        # The adherence generations double as FAD's generated set.
        adherence, generated = _prompt_adherence(model, rows, None, per_class, *generation)
    else:
        adherence = {"skipped": "not synthetic data: some rows have no synth class"}
        generated = generate_batches(model, [r["caption"] or "" for r in real], *generation)
    results["prompt_adherence"] = adherence
    real_codes = [shards.read_codes(row) for row in real]
    results["fad"] = fad_section(model, real_codes, generated, embedding, batch_size)
    if mlflow_logging:
        results["mlflow_run_id"] = log_to_mlflow(results, run_id)
    if output:
        write_results(results, output)
    return results


def load_model(model_src, device=None) -> MusicGen:
    from music_gen.models.generator import MusicGen

    if isinstance(model_src, MusicGen):
        return model_src if device is None else model_src.to(device)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    return MusicGen.from_pretrained(model_src, device=device)


def _fad_real_rows(rows: list[dict], split: str, val_fraction: float, count: int) -> list[dict]:
    """Up to ``count`` real rows for FAD, held-out ones first, spread over the dataset."""
    if count < 2:
        raise UsageError("FAD needs at least 2 clips (fad_clips)")
    chosen, _ = _pick_split(rows, split, val_fraction)
    if len(chosen) < count:
        taken = {row["id"] for row in chosen}
        chosen = chosen + [row for row in rows if row["id"] not in taken]
    step = max(1, len(chosen) // count)
    return chosen[::step][:count]


def _embedding_named(name: str, model: MusicGen) -> Embedding:
    if name not in EMBEDDINGS:
        raise UsageError(f"unknown FAD embedding {name!r}; choose from {', '.join(EMBEDDINGS)}")
    return EMBEDDINGS[name](model)


def write_results(results: dict, output: str) -> Path:
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(path)  # never a half-written results file
    return path


def metrics_of(results: dict) -> dict[str, float]:
    """The numbers of ``evaluate``'s results as flat MLflow metric names (``eval_`` prefix,
    so that they never collide with a training run's own metrics)."""
    val = results["validation"]
    metrics = {"eval_loss": val["loss"], "eval_perplexity": val["perplexity"]}
    for entry in val["per_codebook"]:
        metrics[f"eval_loss_cb{entry['codebook']}"] = entry["loss"]
        metrics[f"eval_perplexity_cb{entry['codebook']}"] = entry["perplexity"]
    adherence = results.get("prompt_adherence", {})
    if "accuracy" in adherence:
        metrics["eval_adherence_accuracy"] = adherence["accuracy"]
        metrics["eval_adherence_chance"] = adherence["chance"]
    metrics["eval_fad"] = results["fad"]["fad"]
    return metrics


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI``, else the project's sqlite store (set for ``mlflow`` calls)."""
    import mlflow

    uri = os.environ.get("MLFLOW_TRACKING_URI", DEFAULT_TRACKING_URI)
    if uri == DEFAULT_TRACKING_URI:
        Path("work").mkdir(exist_ok=True)  # sqlite creates the file, not its folder
    mlflow.set_tracking_uri(uri)
    return uri


def check_run(run_id: str) -> None:
    """Fail before the (long) evaluation when the run to log into does not exist."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    try:
        mlflow.MlflowClient(uri).get_run(run_id)
    except MlflowException as exc:
        raise MusicGenError(f"MLflow ({uri}): {exc.message.splitlines()[0]}") from None


def log_to_mlflow(results: dict, run_id: str | None = None) -> str:
    """Log metrics and the results JSON to ``run_id``, else to a new run in ``evaluate``.

    Through ``MlflowClient`` with explicit run ids: no global active run or experiment,
    so a training process that evaluates mid-run keeps its own.
    """
    import mlflow
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    uri = tracking_uri()
    client = mlflow.MlflowClient(uri)
    try:
        own_run = run_id is None
        if own_run:
            experiment = client.get_experiment_by_name(EXPERIMENT)
            experiment_id = (
                experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
            )
            run_id = client.create_run(experiment_id, run_name="evaluate").info.run_id
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, 0) for k, v in metrics_of(results).items()]
        client.log_batch(run_id, metrics=metrics)
        # Tags, not params: a run may be evaluated again on other data (params are write-once).
        client.set_tag(run_id, "eval_model", results["model"])
        client.set_tag(run_id, "eval_data", results["data"])
        client.log_dict(run_id, results, "evaluate/results.json")
        if own_run:
            client.set_terminated(run_id)
        return run_id
    except MlflowException as exc:
        raise MusicGenError(f"MLflow ({uri}): {exc.message.splitlines()[0]}") from None
