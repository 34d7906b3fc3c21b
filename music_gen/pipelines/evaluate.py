"""Evaluate a model on a tokenized dataset: validation loss, prompt adherence, FAD.

::

    music-gen evaluate --model work/checkpoints/run1 --data work/data/synth -o results.json

Three measures, each a plain function that the training loop and the benchmarks
can call on their own:

``validation_loss``
    Cross-entropy of the model on the dataset's held-out rows, computed by the code
    training validates with (``pipelines/losses.py``): codes ``[B, K, T]`` are delayed,
    the model reads ``[start ; delayed[..., :-1]]`` and predicts ``delayed``; each
    codebook's loss is the mean over its real slots (padding skipped) and the loss is
    the mean over codebooks. Reported with perplexity ``exp(loss)``, per codebook too.

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

``melody_adherence`` (models with a melody conditioner)
    Held-out rows' own audio is the melody of a generation prompted with the row's
    caption; the chroma cosine of melody and output (audiocraft's measure), beside the
    same with mismatched pairs (what ignoring the melody scores).

``prompt_adherence["audio"]``
    The same generations judged by ear: decoded by the model's codec and classified by
    ``adherence.AudioClassifier`` (log-mel statistics, nearest centroid, fitted on real
    synth clips rendered for the purpose; >= 90% right on real held-out clips). It
    measures model and codec together: through a codec with a random decoder (the
    calibrated tiny codec) it sits near chance whatever the codes.

``frechet_audio_distance``
    Fréchet distance between Gaussians fitted to embeddings of real and generated
    audio, with a pluggable ``Embedding``. The default, ``LogMelEmbedding``, embeds each
    frame's log-mel spectrum (real synth audio against noise, silence or another class
    scores 300x and more above real against held-out real: ``tests/unit/
    test_fad_adherence.py``); ``codec-latents`` uses the model's codec encoder. Both
    sides are audio decoded by the model's codec (the real side from the dataset's
    codes): the source audio may be remote or gone, and decoding both through the same
    codec leaves only the language model's share. Offline caveat: the calibrated tiny
    codec's decoder is random, so decoded clips are all similar noise and FAD says
    little; with a trained codec (``music-gen codec train``, ``facebook/encodec_32khz``)
    it means what it should. Offline, judge the model by loss and code-space adherence.

Which rows are held out: the same source files as training holds out
(``shards.choose_val_sources``: a stable hash of each file's name and folder against
``val_fraction``, by default training's ``data.val_fraction``, whole files on one side),
so ``split="val"`` scores exactly the rows training validated on. With no held-out rows (``val_fraction`` 0, a single file) the
loss falls back to all rows, with a note in the results.

``evaluate`` runs all three (settings in an ``EvaluateConfig``), writes JSON (with
``samples`` set, also that many generated clips as WAV in ``results_samples/`` beside
it, listed under ``samples``: what ``music-gen report`` plays and draws) and logs
metrics to the platform's MLflow store (``platform/tracking.py``: the run given by
``run_id``, else a new run in experiment ``evaluate``). Plain pyarrow reads the shards:
evaluation needs no Ray.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow.parquet as pq
import torch

from music_gen import outputs
from music_gen.errors import MusicGenError, UsageError
from music_gen.pipelines import losses, shards, sources
from music_gen.pipelines.adherence import (  # noqa: F401 (re-exported: part of evaluation's API)
    KEYWORD_CLASSES,
    adherence_prompts,
    adherence_report,
    audio_adherence,
    class_references,
    classify_codes,
    code_scores,
    confusion_matrix,
    fit_code_unigrams,
    row_class,
    synth_labels,
)
from music_gen.pipelines.fad import (  # noqa: F401 (re-exported: part of evaluation's API)
    EMBEDDINGS,
    CodecLatentEmbedding,
    Embedding,
    embed_codes,
    fad_section,
    frechet_audio_distance,
    frechet_distance,
    gaussian,
)

if TYPE_CHECKING:
    from music_gen.models.generator import MusicGen

ROW_COLUMNS = ["id", "source", "attributes", *losses.BATCH_COLUMNS]
EXPERIMENT = "evaluate"
"""MLflow experiment of evaluations that log into no given run."""


# --- reading the dataset ----------------------------------------------------------------


def read_rows(data_dir: str, max_rows: int | None = None) -> list[dict]:
    """Rows of every shard of a tokenized dataset (``ROW_COLUMNS``, and the chroma of
    shards that have it), in shard order.

    Refuses (``MusicGenError``, one line) a dataset without shards or rows, or with a
    damaged shard (``shards.readable_shards``, then any row that cannot be read)."""
    rows: list[dict] = []
    for uri in shards.readable_shards(str(data_dir)):
        fs, path = sources.resolve(uri)
        try:
            parquet = pq.ParquetFile(path, filesystem=fs)
            chroma = [shards.CHROMA] if shards.CHROMA in parquet.schema_arrow.names else []
            for batch in parquet.iter_batches(columns=ROW_COLUMNS + chroma):
                rows += batch.to_pylist()
                if max_rows is not None and len(rows) >= max_rows:
                    return rows[:max_rows]
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise MusicGenError(
                f"dataset {data_dir}: shard {uri} has unreadable rows ({type(exc).__name__}); "
                f"run `music-gen data validate {data_dir}`, then re-run tokenize to redo it"
            ) from None
    return rows


def split_rows(rows: list[dict], val_fraction: float) -> tuple[list[dict], list[dict]]:
    """``(train, validation)`` rows, split by source file exactly as training splits them."""
    held = shards.choose_val_sources([row["source"] for row in rows], val_fraction)
    train = [row for row in rows if row["source"] not in held]
    return train, [row for row in rows if row["source"] in held]


def check_model_fits(model: MusicGen, data_dir: str) -> dict:
    """Raise unless the model's codebooks can read the dataset's codes; the codec metadata."""
    return shards.check_codec(str(data_dir), model.lm.cfg.num_codebooks, model.lm.cfg.cardinality)


# --- validation loss ---------------------------------------------------------------------


def model_forward(model: MusicGen):
    """``losses.Forward`` of a ``MusicGen``: conditions, then the LM."""
    from music_gen.models.melody import chroma_at_rate

    def forward(inputs: torch.Tensor, texts: list[str], attributes: list[dict], chroma=None):
        melody = None  # a melody model hears each row's own chroma, as training validates
        if chroma is not None and model.has_melody:
            settings = model.conditioner.melody
            melody = chroma_at_rate(chroma.to(model.device), model.frame_rate, settings)
        memory, mask = model.conditioner(texts, attributes, melody=melody)  # [B, L, D], [B, L]
        return model.lm(inputs, memory, mask)  # [B, K, S, card]

    return forward


@torch.inference_mode()
def batch_loss_terms(model: MusicGen, rows: list[dict], frames: int) -> tuple:
    """Per-codebook loss sums and counts ``[K]``, ``[K]`` of one batch of shard rows
    (each row's first ``frames``): ``losses.batch_loss``, as training validates."""
    batch = losses.make_batch(rows, frames, rng=None)
    cfg = model.lm.cfg
    return losses.batch_loss(
        model_forward(model), batch, cfg.special_token, model.device, cfg.audio_channels
    )


def summarize_loss(totals: losses.LossTotals) -> dict:
    per_codebook = totals.per_codebook().tolist()
    loss = float(np.mean(per_codebook))
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 80.0)),
        "per_codebook": [
            {"codebook": k, "loss": value, "perplexity": math.exp(min(value, 80.0))}
            for k, value in enumerate(per_codebook)
        ],
        "tokens": int(totals.counts.sum()),
    }


def default_val_fraction() -> float:
    """Training's validation fraction (``data.val_fraction``'s default)."""
    from music_gen.config import DataConfig

    return DataConfig.model_fields["val_fraction"].default


def validation_loss(
    model: MusicGen,
    data_dir: str,
    batch_size: int = 8,
    max_batches: int | None = None,
    segment_frames: int | None = None,
    split: str = "val",
    val_fraction: float | None = None,
    rows: list[dict] | None = None,
) -> dict:
    """Loss and perplexity (overall and per codebook) on the dataset's held-out rows.

    ``split`` is ``val`` (the source files training holds out with ``val_fraction``,
    default ``data.val_fraction``'s) or ``all``.
    ``segment_frames`` cuts each row to its first frames (``None``: the model's context).
    Tokens are pooled over batches: each codebook's loss is its total cross-entropy
    over its total count, so one batch gives exactly training's loss on that batch.
    """
    if batch_size < 1 or (max_batches is not None and max_batches < 1):
        raise UsageError("batch_size and max_batches must be at least 1")
    val_fraction = default_val_fraction() if val_fraction is None else val_fraction
    rows = read_rows(data_dir) if rows is None else rows
    chosen, note = _pick_split(rows, split, val_fraction)
    frames = min(segment_frames or model.max_frames, model.max_frames)
    count = math.ceil(len(chosen) / batch_size)
    count = count if max_batches is None else min(count, max_batches)
    totals = losses.LossTotals(model.lm.cfg.num_codebooks)
    for index in range(count):
        batch = chosen[index * batch_size : (index + 1) * batch_size]
        totals.add(*(terms.cpu() for terms in batch_loss_terms(model, batch, frames)))
    result = summarize_loss(totals)
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


def _prompt_adherence(
    model, rows, classes, per_class, duration, seed, guidance_scale, batch_size, by_ear
):
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
    if by_ear:  # the same generations decoded by the codec, classified on log-mels
        report["audio"] = audio_adherence(model, generated, labels, per_class, seed, batch_size)
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
    by_ear: bool = False,
) -> dict:
    """Does generated music match its prompt? Synthetic datasets only (see module doc).

    Returns ``accuracy``, ``confusion`` (rows: prompted class, columns: predicted),
    ``labels`` and ``chance`` (``1 / len(labels)``); with ``by_ear``, also ``audio``: the
    same generations decoded by the codec and judged on audio (``audio_adherence``).
    """
    rows = read_rows(data_dir)
    report, _ = _prompt_adherence(
        model, rows, classes, per_class, duration, seed, guidance_scale, batch_size, by_ear
    )
    return report


# --- melody ------------------------------------------------------------------------------------


def melody_adherence(
    model: MusicGen,
    rows: list[dict],
    duration: float,
    seed: int,
    guidance_scale: float,
    batch_size: int,
) -> dict:
    """How closely generations follow their melody (models with a melody conditioner).

    Each row's own audio (its codes decoded by the model's codec, ``duration`` long) is
    the melody of a generation prompted with the row's caption; the score is the chroma
    cosine between melody and output (``melody.chroma_cosine``, audiocraft's measure).
    ``mismatched`` pairs each output with every other row's melody: the level a model that
    ignored its melody would get (one-hot chroma of unrelated tunes: about 1/12).
    """
    if len(rows) < 2:
        return {"skipped": f"{len(rows)} held-out row(s): the measure needs 2 or more"}
    settings = model.conditioner.melody
    frames = max(1, round(duration * model.frame_rate))
    melodies = [c[0] for c in _decoded(model, [shards.read_codes(r) for r in rows], frames)]
    outputs_codes = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        outputs_codes.append(
            model.generate_codes(
                [r["caption"] or "" for r in chunk],
                duration=duration,
                guidance_scale=guidance_scale,
                seed=[seed + start + i for i in range(len(chunk))],
                melody=melodies[start : start + batch_size],
                melody_sample_rate=model.sample_rate,
            ).cpu()
        )  # [B, K, T]
    generated = [c.numpy() for batch in outputs_codes for c in batch]
    played = [c[0] for c in _decoded(model, generated, frames)]
    scores = melody_scores(melodies, played, model.sample_rate, settings)
    return {**scores, "clips": len(rows), "duration": duration}


def melody_scores(melodies, outputs, sample_rate: int, settings) -> dict:
    """Mean chroma cosine of each output ``[C, S]`` with its melody ``[C, S]``, and with
    every other row's melody (``mismatched``: what ignoring the melody would score; the
    mean over all other rows, not one, so that two tunes that happen to share their
    chords do not sway it)."""
    from music_gen.models.melody import chroma_cosine, clip_chroma

    wanted = [clip_chroma(m, sample_rate, settings) for m in melodies]  # [T, 12] each
    got = [clip_chroma(o, sample_rate, settings) for o in outputs]

    def mean_cosine(pairs) -> float:
        values = [float(chroma_cosine(a[None], b[None])) for a, b in pairs]
        return sum(values) / len(values)

    others = [(w, g) for i, w in enumerate(wanted) for j, g in enumerate(got) if i != j]
    return {
        "chroma_cosine": mean_cosine(zip(wanted, got, strict=True)),
        "mismatched_chroma_cosine": mean_cosine(others),
    }


def _decoded(model: MusicGen, codes: list[np.ndarray], frames: int) -> list[torch.Tensor]:
    """Each ``[K, T]`` row cut to ``frames`` and decoded alone: ``[1, C, S]`` audio each."""
    out = []
    for row in codes:
        batch, _ = losses.crop_codes([row], frames, None)  # [1, K, T]
        out.append(model.decode(batch.to(model.device)).cpu())
    return out


# --- everything together ----------------------------------------------------------------------


@dataclass
class EvaluateConfig:
    """What ``evaluate`` measures and how (the ``music-gen evaluate`` flags)."""

    batch_size: int = 8
    """Rows per loss batch and prompts per generation batch."""
    max_batches: int | None = None
    """Cap on loss batches (None: every held-out row)."""
    segment_frames: int | None = None
    """Frames per row for the loss (None: the model's context)."""
    split: str = "val"
    """Rows scored for the loss: ``val`` (the files training holds out) or ``all``."""
    val_fraction: float | None = None
    """Share of source files held out; None: ``data.val_fraction``'s default, as training."""
    per_class: int = 4
    """Generations per synth class for prompt adherence."""
    duration: float = 3.0
    """Seconds per generation."""
    guidance_scale: float = 3.0
    seed: int = 0
    fad_clips: int = 24
    """Real clips for FAD."""
    melody_clips: int = 8
    """Held-out rows whose audio is the melody of a generation (melody models only)."""
    embedding: Embedding | str = "log-mel"
    """A name in ``EMBEDDINGS`` or an ``Embedding``."""
    samples: int = 0
    """Generated clips to save as WAV next to the results (``save_samples``); 0: none."""


def evaluate(
    model_src,
    data_dir: str,
    settings: EvaluateConfig | None = None,
    *,
    output: str | None = None,
    run_id: str | None = None,
    device=None,
    mlflow_logging: bool = True,
    samples_dir: str | None = None,
) -> dict:
    """Validation loss, prompt adherence (synth data) and FAD of ``model_src`` on ``data_dir``.

    ``model_src`` is anything ``MusicGen.from_pretrained`` loads, or a ``MusicGen``.
    Writes the results as JSON to ``output`` (when given) and logs them to the platform's
    MLflow store (``tracking.tracking_uri()``, where ``runs:/`` models are read from too).
    With ``settings.samples``, that many generated clips are saved as WAV in
    ``samples_dir`` (default: ``samples_folder(output)``) and listed under ``samples``.
    """
    settings = settings or EvaluateConfig()
    if output:
        outputs.check_file(output, "--output")  # before the compute, not after it
    samples_dir = _check_samples(settings.samples, samples_dir, output)
    fraction = settings.val_fraction
    fraction = default_val_fraction() if fraction is None else fraction
    if mlflow_logging and run_id is not None:
        check_run(run_id)
    shards.readable_shards(str(data_dir))  # an empty or damaged dataset: before the model
    model = load_model(model_src, device)
    check_model_fits(model, data_dir)
    embedding = settings.embedding
    if isinstance(embedding, str):
        embedding = _embedding_named(embedding, model)
    rows = read_rows(data_dir)
    real = _fad_real_rows(rows, settings.split, fraction, settings.fad_clips)
    results: dict = {"model": str(model_src), "data": str(data_dir), "rows": len(rows)}
    results["validation"] = validation_loss(
        model, data_dir, settings.batch_size, settings.max_batches, settings.segment_frames,
        settings.split, fraction, rows,
    )  # fmt: skip
    generation = (settings.duration, settings.seed, settings.guidance_scale, settings.batch_size)
    if all(row_class(row) is not None for row in rows):
        # The adherence generations (judged on codes and by ear) double as FAD's set.
        adherence, generated = _prompt_adherence(
            model, rows, None, settings.per_class, *generation, by_ear=True
        )
    else:
        adherence = {"skipped": "not synthetic data: some rows have no synth class"}
        generated = generate_batches(model, [r["caption"] or "" for r in real], *generation)
    results["prompt_adherence"] = adherence
    if model.has_melody:
        held = real[: settings.melody_clips]
        results["melody"] = melody_adherence(model, held, *generation)
    real_codes = [shards.read_codes(row) for row in real]
    results["fad"] = fad_section(model, real_codes, generated, embedding, settings.batch_size)
    if samples_dir is not None:
        prompts = _generated_prompts(adherence, real, settings)
        base = Path(output).expanduser().parent if output else None
        results["samples"] = save_samples(
            model, generated, prompts, settings.seed, settings.samples, samples_dir, base
        )
    if mlflow_logging:
        results["mlflow_run_id"] = log_to_mlflow(results, run_id)
    if output:
        write_results(results, output)
    return results


# --- generated samples -----------------------------------------------------------------------


def samples_folder(output: str | os.PathLike[str]) -> Path:
    """Where ``evaluate -o results.json --samples N`` puts its clips: ``results_samples/``."""
    output = Path(output).expanduser()
    return output.with_name(output.stem + "_samples")


def _check_samples(count: int, samples_dir: str | None, output: str | None) -> Path | None:
    """The folder the samples go to (checked before any compute), ``None`` for no samples."""
    if count < 0:
        raise UsageError(f"--samples must be 0 or more, got {count}")
    if count == 0:
        return None
    if samples_dir is None:
        if not output:
            raise UsageError("--samples needs --output: the clips are saved next to the results")
        samples_dir = str(samples_folder(output))
    return outputs.check_dir(samples_dir, "samples folder")


def _generated_prompts(adherence: dict, real: list[dict], settings: EvaluateConfig) -> list[str]:
    """The prompt of each generated clip, in ``generated`` order (as ``evaluate`` made them)."""
    if "labels" in adherence:
        return adherence_prompts(adherence["labels"], settings.per_class, settings.seed)[0]
    return [row["caption"] or "" for row in real]


def pick_samples(total: int, count: int) -> list[int]:
    """``count`` indices spread evenly over ``total`` clips (one per class when ``count`` is
    the number of synth classes: the adherence generations come class by class)."""
    count = min(count, total)
    return [index * total // count for index in range(count)]


@torch.inference_mode()
def save_samples(
    model: MusicGen,
    generated: Sequence[np.ndarray],
    prompts: Sequence[str],
    seed: int,
    count: int,
    folder: str | os.PathLike[str],
    base: Path | None = None,
) -> list[dict]:
    """Decode ``count`` of the generated codes ``[K, T]`` and write them as WAV to ``folder``
    (filled beside it, then moved into place); one entry per clip: its ``path`` (relative
    to ``base`` when under it), ``prompt`` and the ``seed`` it was generated with."""
    from music_gen.audio import write_audio

    folder = Path(folder)
    entries = []
    with outputs.replace_dir(folder) as temp:
        for index in pick_samples(len(generated), count):
            codes = torch.as_tensor(np.asarray(generated[index]))[None]  # [1, K, T]
            audio = model.decode(codes)[0].cpu()  # [C, S]
            name = f"sample-{index:03d}.wav"
            write_audio(temp / name, audio, model.sample_rate)
            path = folder / name
            if base is not None and path.resolve().is_relative_to(base.resolve()):
                path = path.resolve().relative_to(base.resolve())
            entries.append(
                {
                    "path": str(path),
                    "prompt": prompts[index],
                    "seed": seed + index,
                    "seconds": audio.shape[-1] / model.sample_rate,
                    "sample_rate": int(model.sample_rate),
                }
            )
    return entries


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
    """The results as JSON, written atomically (never a half-written results file)."""
    return outputs.write_text(
        outputs.check_file(output, "--output"), json.dumps(results, indent=2) + "\n"
    )


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
    if "accuracy" in adherence.get("audio", {}):
        metrics["eval_audio_adherence_accuracy"] = adherence["audio"]["accuracy"]
    metrics["eval_fad"] = results["fad"]["fad"]
    if "chroma_cosine" in results.get("melody", {}):
        metrics["eval_melody_chroma_cosine"] = results["melody"]["chroma_cosine"]
    return metrics


def check_run(run_id: str) -> None:
    """Fail before the (long) evaluation when the run to log into does not exist."""
    from mlflow.exceptions import MlflowException

    from music_gen.platform import tracking

    client = tracking.client()
    try:
        client.get_run(run_id)
    except MlflowException as exc:
        raise MusicGenError(
            f"MLflow ({client.tracking_uri}): {exc.message.splitlines()[0]}"
        ) from None


def log_to_mlflow(results: dict, run_id: str | None = None) -> str:
    """Log metrics and the results JSON to ``run_id``, else to a new run in ``evaluate``.

    Through ``MlflowClient`` with explicit run ids: no global active run or experiment,
    so a training process that evaluates mid-run keeps its own.
    """
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException

    from music_gen.platform import tracking

    client = tracking.client()
    try:
        own_run = run_id is None
        if own_run:
            experiment = tracking.experiment_id(client, EXPERIMENT)
            run_id = client.create_run(experiment, run_name="evaluate").info.run_id
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
        raise MusicGenError(
            f"MLflow ({client.tracking_uri}): {exc.message.splitlines()[0]}"
        ) from None
