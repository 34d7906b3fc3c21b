"""Samples during training: generated audio and its spectrogram, logged as artifacts."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F


def spectrogram_png(audio: torch.Tensor, path: Path, n_fft: int = 512) -> None:
    """Log-magnitude spectrogram of ``audio [C, S]`` as a PNG (low frequencies at the bottom)."""
    from matplotlib.image import imsave

    mono = audio.float().mean(dim=0)  # [S]
    if mono.numel() < n_fft:
        mono = F.pad(mono, (0, n_fft - mono.numel()))
    window = torch.hann_window(n_fft)
    spec = torch.stft(mono, n_fft, n_fft // 4, window=window, return_complex=True).abs()  # [F, N]
    db = 20 * torch.log10(spec + 1e-5)
    db = db.clamp_min(db.max() - 80)
    imsave(path, db.numpy(), cmap="magma", origin="lower")


def write_samples(model, prompts: list[str], seconds: float, seed: int, directory: Path) -> None:
    """Generate ``prompts`` and write ``NN.wav``, ``NN.png`` and ``prompts.txt``."""
    from music_gen.audio import write_audio

    directory.mkdir(parents=True, exist_ok=True)
    codes = model.generate_codes(prompts, duration=seconds, seed=seed)  # [B, K, T]
    audio = model.decode(codes)  # [B, C, S]
    for index, clip in enumerate(audio):
        write_audio(directory / f"{index:02d}.wav", clip, model.sample_rate)
        spectrogram_png(clip, directory / f"{index:02d}.png")
    lines = [f"{index:02d}: {prompt}" for index, prompt in enumerate(prompts)]
    (directory / "prompts.txt").write_text("\n".join(lines) + "\n")


def log_samples(log, musicgen, prompts: list[str], seconds: float, seed: int, step: int) -> None:
    """Rank 0: generated audio and spectrograms as artifacts ``samples/step_NNNNNNN``; the
    model's modules are back in training mode afterwards."""
    if not prompts or not log.enabled:
        return
    musicgen.lm.eval()
    musicgen.conditioner.eval()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / f"step_{step:07d}"
        write_samples(musicgen, prompts, seconds, seed, directory)
        log.artifacts(directory, f"samples/step_{step:07d}")
    musicgen.lm.train()
    musicgen.conditioner.train()
