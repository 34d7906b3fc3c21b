"""Fréchet Audio Distance: Gaussians fitted to embeddings of real and generated audio.

The embedding is pluggable (``Embedding``):

- ``LogMelEmbedding`` (``log-mel``): every 32 ms frame's log-mel spectrum (64 bands,
  16 kHz) is one vector. It needs no trained network, so it means the same thing with
  any codec, and it separates what a listener would: real synth clips against
  white noise, silence or clips of another instrument class each score orders of
  magnitude above real against held-out real (``tests/unit/test_fad_adherence.py``).
- ``CodecLatentEmbedding`` (``codec-latents``): the model's own codec encoder, every
  latent frame one vector (as the original FAD pools the frames of all clips). With a
  random-weight encoder (the calibrated offline codec) it carries little: real codes
  against random codes came out around 1e-11.

``evaluate.py`` explains what the number means offline.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np
import torch

from music_gen.errors import MusicGenError, UsageError
from music_gen.pipelines import losses

if TYPE_CHECKING:
    from music_gen.models.generator import MusicGen


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


LOG_MEL_RATE = 16_000
"""Sample rate the log-mel embedding works at (audio is resampled to it)."""


def log_mel_frames(audio: torch.Tensor, sample_rate: int, n_mels: int = 64) -> torch.Tensor:
    """Log-mel spectra of mono-mixed audio ``[B, C, S]``: ``[B, frames, n_mels]``
    (512-point FFT, 32 ms hop at 16 kHz; levels in log units floored at 1e-5)."""
    from torchaudio.transforms import MelSpectrogram

    from music_gen.audio.transforms import resample

    audio = resample(audio.float().mean(dim=1), sample_rate, LOG_MEL_RATE)  # [B, S']
    mel = MelSpectrogram(LOG_MEL_RATE, n_fft=512, hop_length=512, n_mels=n_mels, power=2.0)
    return torch.log(mel(audio) + 1e-5).transpose(1, 2)  # [B, frames, n_mels]


class LogMelEmbedding:
    """Every frame's log-mel spectrum a vector (see the module doc)."""

    name = "log-mel"

    def __init__(self, sample_rate: int):
        self.sample_rate = sample_rate

    @torch.inference_mode()
    def __call__(self, audio: torch.Tensor) -> torch.Tensor:
        frames = log_mel_frames(audio, self.sample_rate)  # [B, N, M]
        return frames.reshape(-1, frames.shape[-1])  # [B * N, M]


# Name -> embedding built from the model being evaluated (the CLI's --fad-embedding).
EMBEDDINGS = {
    "log-mel": lambda model: LogMelEmbedding(model.sample_rate),
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
        batch, _ = losses.crop_codes(chunk, max(c.shape[-1] for c in chunk), None)  # [B, K, T]
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
