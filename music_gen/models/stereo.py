"""Stereo as MusicGen has it: one mono codec applied to the left and right channels,
their codes interleaved (``k = 2 * level + channel``), as transformers' stereo
``MusicgenForConditionalGeneration`` encodes and decodes them (``codes[:, ::2]`` is
the left channel, ``codes[:, 1::2]`` the right).

``StereoCodec`` wraps any mono codec of ``codec.py`` and satisfies the same ``Codec``
interface with twice the codebooks and 2 channels. It saves as the mono codec plus
``"interleaved_channels": 2`` in ``codec.json``; ``codec.load_codec`` reads that back.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from music_gen.errors import AudioError, UsageError

INTERLEAVED_KEY = "interleaved_channels"
"""The ``codec.json`` key that marks a stereo codec made of a mono one."""


def interleaved_channels(codec) -> int:
    """Channels a codec interleaves as codebooks: 2 for ``StereoCodec``, else 1."""
    return 2 if isinstance(codec, StereoCodec) else 1


def interleave(left: Tensor, right: Tensor) -> Tensor:
    """``[B, K, T]`` codes of each channel -> ``[B, 2K, T]``, left first at each level."""
    return torch.stack([left, right], dim=2).flatten(1, 2)  # [B, 2K, T]


class StereoCodec(nn.Module):
    """A mono codec run on each channel of stereo audio; codes interleaved."""

    def __init__(self, mono: nn.Module):
        super().__init__()
        if mono.channels != 1:
            raise UsageError(f"a stereo codec wraps a mono codec, got {mono.channels} channels")
        self.mono = mono
        self.backend = mono.backend
        self.model = mono.model
        self.sample_rate = mono.sample_rate
        self.frame_rate = mono.frame_rate
        self.hop_length = mono.hop_length
        self.cardinality = mono.cardinality
        self.num_codebooks = 2 * mono.num_codebooks
        self.channels = 2

    def train(self, mode: bool = True) -> StereoCodec:
        return super().train(False)  # frozen, as the mono codec

    def _channels(self, audio: Tensor) -> tuple[Tensor, Tensor]:
        if audio.dim() != 3 or audio.shape[1] != 2:
            raise AudioError(
                f"stereo codec expects audio shaped [batch, 2, samples], got {tuple(audio.shape)}"
            )
        return audio[:, :1], audio[:, 1:]  # [B, 1, S] each

    def encode(self, audio: Tensor) -> Tensor:
        left, right = self._channels(audio)
        return interleave(self.mono.encode(left), self.mono.encode(right))  # [B, 2K, T]

    def decode(self, codes: Tensor) -> Tensor:
        if codes.dim() != 3 or codes.shape[1] != self.num_codebooks:
            raise UsageError(
                f"codec expects codes shaped [batch, {self.num_codebooks}, frames], "
                f"got {tuple(codes.shape)}"
            )
        left = self.mono.decode(codes[:, ::2])  # [B, 1, S]
        right = self.mono.decode(codes[:, 1::2])
        return torch.cat([left, right], dim=1)  # [B, 2, S]

    def latents(self, audio: Tensor) -> Tensor:
        """Latents of each channel as rows of the batch: ``[2B, D, T]`` (left rows first)."""
        left, right = self._channels(audio)
        return torch.cat([self.mono.latents(left), self.mono.latents(right)])

    def set_codebooks(self, embed: Tensor, counts: Tensor) -> None:
        """Both channels share the mono codec's codebooks: ``[K / 2, N, D]``."""
        self.mono.set_codebooks(embed, counts)

    def save(self, directory: str | Path) -> Path:
        import json

        from music_gen.models.codec import CODEC_JSON

        directory = self.mono.save(directory)
        spec_path = Path(directory) / CODEC_JSON
        spec = json.loads(spec_path.read_text())
        spec[INTERLEAVED_KEY] = 2
        spec_path.write_text(json.dumps(spec, indent=2))
        return Path(directory)
