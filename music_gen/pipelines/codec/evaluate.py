"""Quality figures of a codec (``music-gen codec evaluate``): how well it reconstructs
held-out audio, and what its codes cost.

- ``si_snr_db``: scale-invariant SNR of the reconstruction, mean over segments (dB,
  higher is better; 0 dB: error as loud as the signal);
- ``mel_distance``: multi-scale log-mel L1, the training loss's measure (lower is better);
- ``bitrate_kbps``: ``K x log2(cardinality) x frame_rate / 1000``; ``codes_per_s``: ``K x frame_rate``.

Audio is listed and read as ``data tokenize`` reads it (peak-normalised, at the codec's
rate and channels) and cut into segments of ``segment_seconds``; no Ray is needed.
"""

from __future__ import annotations

import math
import time

import torch

from music_gen.errors import AudioError, UsageError
from music_gen.pipelines import sources

EXPERIMENT = "music-gen-codec-eval"


def _segments(records: list[dict], codec, segment_seconds: float, max_seconds: float):
    """Peak-normalised ``[C, L]`` segments of the files (tails of at least one hop kept)."""
    from music_gen.audio import peak_normalize
    from music_gen.pipelines.tokenize import load_audio

    length, budget = round(segment_seconds * codec.sample_rate), max_seconds * codec.sample_rate
    pieces, bad = [], 0
    for record in records:
        if budget <= 0:
            break
        try:
            audio = load_audio(record["path"], codec.sample_rate, codec.channels)  # [C, S]
        except AudioError:
            bad += 1
            continue
        audio = peak_normalize(audio)[:, : int(budget)]
        budget -= audio.shape[-1]
        pieces += [p for p in audio.split(length, dim=-1) if p.shape[-1] >= codec.hop_length]
    return pieces, bad


@torch.no_grad()
def evaluate_codec(
    codec_src: str,
    input: str,
    segment_seconds: float = 2.0,
    max_seconds: float = 300.0,
    batch_size: int = 8,
) -> dict:
    """SI-SNR, mel distance, bitrate and codes per second of ``codec_src`` on ``input``."""
    from music_gen.models import codec_training as ct
    from music_gen.models.codec import load_codec

    if segment_seconds <= 0 or max_seconds <= 0:
        raise UsageError("--segment-seconds and --max-seconds must be positive")
    started = time.perf_counter()
    codec = load_codec(codec_src)
    records = [r for r in sources.list_sources(input) if not r["stage"]]
    if not records:
        raise UsageError(f"no audio files found in {input}")
    pieces, bad = _segments(records, codec, segment_seconds, max_seconds)
    if not pieces:
        raise AudioError(f"none of the {len(records)} audio file(s) in {input} could be read")
    mel = ct.MelLoss(codec.sample_rate)
    snrs, mels, seconds = [], [], 0.0
    by_length: dict[int, list[torch.Tensor]] = {}
    for piece in pieces:
        by_length.setdefault(piece.shape[-1], []).append(piece)
    for group in by_length.values():
        for start in range(0, len(group), batch_size):
            audio = torch.stack(group[start : start + batch_size])  # [B, C, L]
            output = codec.decode(codec.encode(audio))[..., : audio.shape[-1]]  # [B, C, L]
            snrs.append(ct.si_snr(output, audio))
            mels += [float(mel(o[None], a[None])) for o, a in zip(output, audio, strict=True)]
            seconds += audio.shape[0] * audio.shape[-1] / codec.sample_rate
    snr = torch.cat(snrs)
    codes_per_s = codec.num_codebooks * codec.frame_rate
    return {
        "codec": str(codec_src),
        "data": str(input),
        "files": len(records) - bad,
        "bad_files": bad,
        "segments": int(snr.numel()),
        "audio_seconds": round(seconds, 3),
        "si_snr_db": float(snr.mean()),
        "si_snr_median_db": float(snr.median()),
        "mel_distance": sum(mels) / len(mels),
        "bitrate_kbps": codes_per_s * math.log2(codec.cardinality) / 1000,
        "codes_per_s": codes_per_s,
        "sample_rate": codec.sample_rate,
        "num_codebooks": codec.num_codebooks,
        "cardinality": codec.cardinality,
        "frame_rate": codec.frame_rate,
        "seconds": round(time.perf_counter() - started, 2),
    }


METRICS = ("si_snr_db", "si_snr_median_db", "mel_distance", "bitrate_kbps", "codes_per_s")


def log_evaluation(results: dict, tracking_uri: str | None = None) -> str:
    """One MLflow run in ``EXPERIMENT`` with the figures as metrics; returns its id."""
    from music_gen.platform import tracking

    client = tracking.client(tracking_uri)
    run = client.create_run(
        tracking.experiment_id(client, EXPERIMENT), run_name="codec-evaluate",
        tags={"music_gen.codec": results["codec"], "music_gen.data": results["data"]},
    )  # fmt: skip
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(name, float(results[name]), now, 0) for name in METRICS]
    client.log_batch(run.info.run_id, metrics=metrics)
    client.log_dict(run.info.run_id, results, "codec_evaluation.json")
    client.set_terminated(run.info.run_id)
    return run.info.run_id
