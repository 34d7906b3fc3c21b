"""Tiny models and audio made in the tests (no downloads)."""

from __future__ import annotations

import math

import torch

from music_gen.config import CodecConfig, ModelConfig, TextEncoderConfig


def tiny_model_config(**overrides) -> ModelConfig:
    fields = {
        "preset": "debug",
        "dim": 32,
        "num_layers": 2,
        "num_heads": 2,
        "num_codebooks": 4,
        "cardinality": 64,
        "max_frames": 64,
        "text": TextEncoderConfig(dim=16, num_layers=1, num_heads=2),
        **overrides,
    }
    return ModelConfig(**fields)


def tiny_codec_config(**overrides) -> CodecConfig:
    return CodecConfig(**{"num_codebooks": 4, "cardinality": 64, **overrides})


def tiny_musicgen(seed: int = 0, **model_overrides):
    from music_gen import MusicGen
    from music_gen.models.codec import build_codec

    torch.manual_seed(seed)
    return MusicGen.from_config(
        tiny_model_config(**model_overrides), build_codec(tiny_codec_config())
    )


def sine(freq: float, seconds: float, rate: int, channels: int = 1) -> torch.Tensor:
    t = torch.arange(int(seconds * rate)) / rate
    wave = 0.5 * torch.sin(2 * math.pi * freq * t)
    return wave.expand(channels, -1).clone()  # [C, S]
