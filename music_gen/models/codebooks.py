"""Fitting a codec's residual codebooks by k-means, and the offline codec built that way.

EnCodec fills its codebooks by k-means on the first training batch, so a freshly built
codec has all-zero codebooks and encodes every sound to code 0. ``calibrate_codec`` fits
them on the encoder latents of sample audio, level by level (codebook 0 on the latents,
codebook 1 on what codebook 0 leaves, ...), and writes them into the quantizer's own
buffers (``Codec.set_codebooks``), so the backend's encode/decode use them.
``calibrate_from_files`` does it from audio files; ``tiny_calibrated_codec`` is the small
offline codec of tests, the demo and benchmarks (random decoder: its audio is noise-like,
but its codes tell sounds apart).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
from torch import Tensor

from music_gen.config import CodecConfig
from music_gen.errors import AudioError, MusicGenError
from music_gen.models.codec import Codec, _with_channels, build_codec

logger = logging.getLogger(__name__)


def _nearest(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Index of and squared distance to the nearest centroid, for each row of ``x [N, D]``."""
    chunk = max(1, 2**24 // centroids.shape[0])  # bounds the [chunk, k] distance matrix
    centroid_sq = centroids.pow(2).sum(1)  # [k]
    indices, distances = [], []
    for part in x.split(chunk):
        dist = part.pow(2).sum(1, keepdim=True) - 2 * part @ centroids.T + centroid_sq  # [n, k]
        best = dist.min(dim=1)
        indices.append(best.indices)
        distances.append(best.values.clamp_min(0))
    return torch.cat(indices), torch.cat(distances)  # [N], [N]


def kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means of ``x [N, D]`` into ``k`` centroids; returns (centroids [k, D], counts [k]).

    Starts from k random rows. A centroid left empty (duplicate rows, or fewer rows
    than centroids) is moved to the row farthest from its centroid, so every distinct
    vector gets one as long as there are centroids to spare; rows that already sit on
    a centroid never seed another, so with fewer distinct rows than ``k`` the spare
    centroids stay duplicates with count 0 (never chosen, harmless).
    """
    n = x.shape[0]
    start = torch.randperm(n, generator=generator)[:k] if n >= k else torch.arange(k) % n
    centroids = x[start.to(x.device)].clone()  # [k, D]
    for _ in range(iters):
        assign, dist = _nearest(x, centroids)  # [N], [N]
        counts = torch.bincount(assign, minlength=k)  # [k]
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)  # [k, D]
        filled = counts > 0
        centroids[filled] = sums[filled] / counts[filled, None]
        _reseed_empty(centroids, ~filled, x, dist)
    assign, _ = _nearest(x, centroids)
    return centroids, torch.bincount(assign, minlength=k).to(x.dtype)


def _reseed_empty(centroids: Tensor, empty: Tensor, x: Tensor, dist: Tensor) -> None:
    num_empty = int(empty.sum())
    if num_empty == 0:
        return
    far = dist.topk(min(num_empty, dist.numel())).indices  # [m]
    far = far[dist[far] > 0]  # a row already on a centroid would only duplicate it
    slots = empty.nonzero()[: far.numel(), 0]
    centroids[slots] = x[far[: slots.numel()]]


def _sample_latents(
    codec: Codec, audio_batches: Iterable[Tensor], max_vectors: int, generator
) -> Tensor:
    """Encoder latents of all batches as rows ``[N, D]``: a uniform random subset of at
    most ``max_vectors`` (those with the smallest random keys), so memory stays bounded."""
    kept: Tensor | None = None
    keys = torch.empty(0)
    for audio in audio_batches:
        latents = codec.latents(audio)  # [B, D, T]
        rows = latents.transpose(1, 2).reshape(-1, latents.shape[1]).float()  # [B*T, D]
        kept = rows if kept is None else torch.cat([kept, rows])
        keys = torch.cat([keys, torch.rand(rows.shape[0], generator=generator)])
        if kept.shape[0] > max_vectors:
            keep = keys.topk(max_vectors, largest=False).indices.sort().values
            kept, keys = kept[keep.to(kept.device)], keys[keep]
    if kept is None or kept.shape[0] == 0:
        raise MusicGenError("codec calibration got no audio")
    return kept


def calibrate_codec(
    codec: Codec,
    audio_batches: Iterable[Tensor],
    iters: int = 20,
    seed: int = 0,
    max_vectors: int = 200_000,
) -> Codec:
    """Fit the codec's residual codebooks by k-means on the latents of sample audio.

    Codebook 0 is fitted on the latents, codebook 1 on what remains after quantising
    with codebook 0, and so on, the way residual quantisation encodes. The centroids
    go into the quantizer's own buffers, so ``encode``/``decode`` use them. The codec
    is changed in place and returned. Deterministic for a seed (on CPU).
    """
    from music_gen.models.stereo import interleaved_channels

    generator = torch.Generator().manual_seed(seed)
    residual = _sample_latents(codec, audio_batches, max_vectors, generator)  # [N, D]
    embeds, counts = [], []
    # A stereo codec's channels share the mono codec's codebooks (one set per level).
    for _ in range(codec.num_codebooks // interleaved_channels(codec)):
        centroids, sizes = kmeans(
            residual, codec.cardinality, iters, generator
        )  # [card, D], [card]
        assign, _ = _nearest(residual, centroids)  # [N]
        residual = residual - centroids[assign]  # [N, D]
        embeds.append(centroids)
        counts.append(sizes)
    codec.set_codebooks(torch.stack(embeds), torch.stack(counts))  # [K, card, D], [K, card]
    return codec


CHUNK_SECONDS = 5.0
"""Length of the pieces that files are cut into for calibration."""


def _read_chunks(paths: list[Path], codec: Codec, max_seconds: float) -> list[Tensor]:
    """Audio of the files as ``[C, S]`` pieces of at most CHUNK_SECONDS, max_seconds in all."""
    from music_gen.audio import read_audio  # audio I/O (soundfile) is only needed here

    chunk = int(CHUNK_SECONDS * codec.sample_rate)
    budget = int(max_seconds * codec.sample_rate)
    chunks: list[Tensor] = []
    for path in paths:
        if budget < codec.hop_length:
            break
        try:
            audio, _ = read_audio(path, sample_rate=codec.sample_rate, channels=codec.channels)
        except MusicGenError as exc:
            logger.warning("calibration skips %s: %s", path, exc)
            continue
        audio = audio[:, :budget]  # [C, S]
        budget -= audio.shape[-1]
        chunks += [
            piece for piece in audio.split(chunk, dim=-1) if piece.shape[-1] >= codec.hop_length
        ]
    return chunks


def _batches(chunks: list[Tensor], batch_size: int = 8) -> Iterator[Tensor]:
    """Pieces of equal length stacked into batches (full chunks together, tails alone)."""
    by_length: dict[int, list[Tensor]] = {}
    for piece in chunks:
        by_length.setdefault(piece.shape[-1], []).append(piece)
    for pieces in by_length.values():
        for start in range(0, len(pieces), batch_size):
            yield torch.stack(pieces[start : start + batch_size])  # [B, C, S]


def calibrate_from_files(
    paths: list[Path], codec: Codec, max_seconds: float = 600.0, seed: int = 0
) -> Codec:
    """Calibrate ``codec`` on up to ``max_seconds`` of audio read from ``paths``.

    Unreadable files are skipped with a warning; no readable audio at all is an error.
    """
    chunks = _read_chunks([Path(path) for path in paths], codec, max_seconds)
    if not chunks:
        raise AudioError(f"codec calibration: none of the {len(paths)} audio file(s) could be read")
    return calibrate_codec(codec, _batches(chunks), seed=seed)


# ---------------------------------------------------------------------------
# The offline codec
# ---------------------------------------------------------------------------


def _calibration_clips(sample_rate: int, seed: int) -> Tensor:
    """About 40 s of varied synthetic sound as 1 s clips ``[N, 1, S]``: pure tones over
    five octaves, square and saw waves, chords, a chirp, noise of several colours and
    levels, noise bursts, clicks and silence."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(sample_rate) / sample_rate  # [S]
    pitches = [55.0, 110.0, 220.0, 330.0, 440.0, 660.0, 880.0, 1320.0, 1760.0, 3520.0]
    phase = [2 * math.pi * f * t for f in pitches]
    sines = [0.5 * torch.sin(p) for p in phase]
    squares = [0.3 * torch.sign(torch.sin(p)) for p in phase[1:8:2] + phase[2:9:2]]
    saws = [0.3 * (2 * ((f * t) % 1.0) - 1) for f in pitches[1:9:2] + pitches[2:9:2]]
    chords = [0.2 * (torch.sin(p) + torch.sin(p * 1.26) + torch.sin(p * 1.5)) for p in phase[1:5]]
    chirp = [0.5 * torch.sin(2 * math.pi * (100 * t + 2000 * t**2))]
    white = [level * torch.randn(sample_rate, generator=generator) for level in (0.05, 0.2, 0.5)]
    brown = torch.randn(sample_rate, generator=generator).cumsum(0)
    colored = [0.5 * (brown - brown.mean()) / brown.abs().max()]
    bursts = [white[2] * ((t * 4) % 1.0 < 0.2), white[1] * ((t * 8) % 1.0 < 0.1)]
    clicks = [0.8 * ((t * 10) % 1.0 < 0.002).float()]  # 10 clicks of 2 ms
    silence = [torch.zeros(sample_rate), 1e-3 * torch.randn(sample_rate, generator=generator)]
    clips = sines + squares + saws + chords + chirp + white + colored + bursts + clicks + silence
    return torch.stack(clips)[:, None]  # [N, 1, S]


def tiny_calibrated_codec(
    seed: int = 0, num_codebooks: int = 4, cardinality: int = 256, channels: int = 1
) -> Codec:
    """The offline codec: a random ``tiny`` codec (16 kHz, 50 Hz) whose codebooks are
    calibrated on synthetic sounds. Deterministic for a seed; takes well under a second.
    ``channels=2`` is its stereo form (``num_codebooks`` per channel, interleaved)."""
    cfg = CodecConfig(
        backend="transformers", preset="tiny", num_codebooks=num_codebooks, cardinality=cardinality
    )
    codec = build_codec(cfg, seed=seed)
    clips = _calibration_clips(codec.sample_rate, seed)  # [N, 1, S]
    return _with_channels(calibrate_codec(codec, clips.split(8), seed=seed), channels)
