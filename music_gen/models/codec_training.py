"""Training an EnCodec codec in plain PyTorch (no Ray, no MLflow): the architecture from
a config, the residual quantizer's training forward, the losses and quality measures.

What trains is transformers' own ``EncodecModel`` (so the result saves as a codec
directory that ``load_codec`` reads unchanged); transformers' quantizer only has an
inference path, so ``QuantizedAutoencoder`` runs its training forward here::

    audio [B, C, S] -> encoder -> latents [B, D, T]
      residual VQ, level k = 0..K-1: nearest centroid of what the levels before left
        (codes [B, K, T]); commitment loss |residual - centroid|^2 pulls the encoder
        towards its codebook; the codebook follows its vectors by an exponential moving
        average (EnCodec's EMA update, counts and sums summed over workers), and a
        centroid that nobody picks any more is restarted on a vector of the batch
      straight-through: decoder input = latents + (quantized - latents).detach()
    -> decoder -> reconstruction [B, C, S']

Codebooks start from k-means on the latents of the first batches (``calibrate_codec``),
as EnCodec's own training does, or of the batches after an unquantized warm-up
(``quantize=False``). Losses (``reconstruction_losses``): the relative squared error of
the waveform, waveform L1 and a multi-scale log-mel L1; quality (``si_snr``,
``mel_distance``) is measured the same way by training (validation) and ``codec evaluate``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import EncodecConfig, EncodecModel

from music_gen.errors import ConfigError

MEL_SCALES = (256, 512, 1024, 2048)
"""FFT sizes of the multi-scale mel loss (hop a quarter of each)."""


def encodec_config(
    sample_rate: int,
    channels: int,
    ratios: list[int],
    num_filters: int,
    latent_dim: int,
    lstm_layers: int,
    num_codebooks: int,
    cardinality: int,
    pad_mode: str = "reflect",
) -> EncodecConfig:
    """The ``EncodecConfig`` of a codec to train; user mistakes are one-line ``ConfigError``s."""
    from music_gen.models.codec import _bandwidth_for

    hop = math.prod(ratios)
    if sample_rate % hop:
        raise ConfigError(
            f"codec hop {hop} (product of codec.train.ratios {list(ratios)}) does not divide "
            f"the sample rate {sample_rate}: the frame rate must be a whole number"
        )
    if cardinality < 2 or cardinality & (cardinality - 1):
        raise ConfigError(f"codec.cardinality must be a power of 2 >= 2, got {cardinality}")
    if num_codebooks < 1:
        raise ConfigError(f"codec.num_codebooks must be at least 1, got {num_codebooks}")
    frame_rate = sample_rate // hop
    config = EncodecConfig(
        sampling_rate=sample_rate,
        audio_channels=channels,
        upsampling_ratios=list(ratios),
        num_filters=num_filters,
        hidden_size=latent_dim,
        num_lstm_layers=lstm_layers,
        codebook_size=cardinality,
        target_bandwidths=[_bandwidth_for(num_codebooks, frame_rate, cardinality)],
        use_causal_conv=False,
        use_conv_shortcut=False,
        normalize=False,
        pad_mode=pad_mode,
    )
    if config.num_quantizers != num_codebooks:  # transformers derives it from the bandwidth
        raise ConfigError(
            f"{num_codebooks} codebooks of {cardinality} at {frame_rate} Hz do not fit "
            "transformers' Encodec bandwidth arithmetic: change codec.num_codebooks"
        )
    return config


def build_model(config: EncodecConfig, seed: int) -> EncodecModel:
    """Random weights, the same for every process given the seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EncodecModel(config)


def _nearest_codes(x: Tensor, embed: Tensor) -> Tensor:
    """Index of the nearest centroid ``embed [N, D]`` for each row of ``x [M, D]``: ``[M]``."""
    dist = x.pow(2).sum(1, keepdim=True) - 2 * x @ embed.T + embed.pow(2).sum(1)  # [M, N]
    return dist.argmin(dim=1)


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class QuantizedAutoencoder(nn.Module):
    """An ``EncodecModel`` with the training forward of its residual quantizer.

    ``forward(audio [B, C, S])`` returns ``(reconstruction [B, C, S'], commitment loss,
    codes [B, K, T])``; in training mode each call also moves the codebooks (EMA).
    ``forward(audio, quantize=False)`` skips the quantizer (the decoder reads the
    encoder's latents; no commitment, no codes): the autoencoder warm-up before the
    codebooks are fitted, see ``codec.train.unquantized_steps``.
    """

    def __init__(self, model: EncodecModel, ema_decay: float = 0.99, dead_code: float = 2.0):
        super().__init__()
        self.model = model
        self.ema_decay = ema_decay
        self.dead_code = dead_code
        """A centroid whose EMA count falls below this is restarted on a batch vector."""

    @property
    def books(self) -> list[nn.Module]:
        return [layer.codebook for layer in self.model.quantizer.layers]

    def forward(self, audio: Tensor, quantize: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
        latents = self.model.encoder(audio)  # [B, D, T]
        if not quantize:
            return self.model.decoder(latents), latents.new_zeros(()), None
        batch, dim, frames = latents.shape
        x = latents.transpose(1, 2).reshape(-1, dim)  # [B*T, D]
        residual = x.detach()
        quantized = torch.zeros_like(x)
        commitment = x.new_zeros(())
        codes = []
        for book in self.books:
            index = _nearest_codes(residual, book.embed)  # [B*T]
            if self.training:
                self._ema_update(book, residual, index)
            chosen = book.embed[index]  # [B*T, D]
            # What the encoder's output should have held for this level, as a target.
            target = quantized.detach() + chosen
            commitment = commitment + F.mse_loss(x, target.detach()) / len(self.books)
            quantized = quantized + chosen
            residual = residual - chosen
            codes.append(index.view(batch, frames))
        straight = x + (quantized - x).detach()  # [B*T, D], gradients pass to the encoder
        decoded = self.model.decoder(straight.view(batch, frames, dim).transpose(1, 2))
        return decoded, commitment, torch.stack(codes, dim=1)  # [B, C, S'], [], [B, K, T]

    def broadcast_codebooks(self) -> None:
        """Rank 0's codebooks (and their EMA statistics) on every rank."""
        if _distributed():
            for book in self.books:
                for buffer in (book.embed, book.embed_avg, book.cluster_size):
                    torch.distributed.broadcast(buffer, 0)

    @torch.no_grad()
    def _ema_update(self, book: nn.Module, vectors: Tensor, index: Tensor) -> None:
        """EnCodec's EMA codebook update, with statistics summed over the worker group."""
        size = book.embed.shape[0]
        onehot = F.one_hot(index, size).to(vectors.dtype)  # [M, N]
        counts = onehot.sum(0)  # [N]
        sums = onehot.T @ vectors  # [N, D]
        if _distributed():
            torch.distributed.all_reduce(counts)
            torch.distributed.all_reduce(sums)
        decay = self.ema_decay
        book.cluster_size.mul_(decay).add_(counts, alpha=1 - decay)
        book.embed_avg.mul_(decay).add_(sums, alpha=1 - decay)
        total = book.cluster_size.sum()
        smoothed = (book.cluster_size + 1e-5) / (total + size * 1e-5) * total  # [N]
        book.embed.copy_(book.embed_avg / smoothed[:, None])
        dead = book.cluster_size < self.dead_code
        if dead.any():
            picks = torch.randint(0, vectors.shape[0], (int(dead.sum()),), device=vectors.device)
            book.embed[dead] = vectors[picks]
            book.embed_avg[dead] = vectors[picks] * self.dead_code
            book.cluster_size[dead] = self.dead_code
        if _distributed():  # the restarts drew from rank 0's batch on every rank
            for buffer in (book.embed, book.embed_avg, book.cluster_size):
                torch.distributed.broadcast(buffer, 0)


# ---------------------------------------------------------------------------
# Losses and quality
# ---------------------------------------------------------------------------


class MelLoss(nn.Module):
    """Multi-scale log-mel L1: mean over ``MEL_SCALES`` of |log mel(y) - log mel(x)|."""

    def __init__(self, sample_rate: int, scales: tuple[int, ...] = MEL_SCALES, n_mels: int = 64):
        super().__init__()
        from torchaudio.transforms import MelSpectrogram

        self.transforms = nn.ModuleList(
            MelSpectrogram(
                sample_rate,
                n_fft=n_fft,
                hop_length=n_fft // 4,
                n_mels=min(n_mels, n_fft // 8),
                power=1.0,
                center=True,
            )
            for n_fft in scales
        )

    def forward(self, output: Tensor, target: Tensor) -> Tensor:
        total = output.new_zeros(())
        for mel in self.transforms:
            total = total + F.l1_loss(torch.log(mel(output) + 1e-5), torch.log(mel(target) + 1e-5))
        return total / len(self.transforms)


def reconstruction_losses(output: Tensor, target: Tensor, mel_loss: MelLoss) -> dict[str, Tensor]:
    """``l1`` (waveform), ``mel`` (multi-scale log-mel) and ``waveform`` (the relative
    squared error of each clip, ``|y - x|^2 / |x|^2`` averaged over clips) of ``output``
    against ``target``, both ``[B, C, S]`` (the output cut to the target's length).

    ``waveform`` is what makes the reconstruction follow the waveform and not only its
    spectrum (SI-SNR rises as it falls); normalised per clip, quiet clips count as much
    as loud ones. Its gradient is useful from the first step, where SI-SNR's (a log of
    a correlation near zero) is not."""
    output = output[..., : target.shape[-1]]
    energy = target.pow(2).flatten(1).mean(1).clamp_min(1e-6)  # [B]
    waveform = ((output - target).pow(2).flatten(1).mean(1) / energy).mean()
    return {
        "l1": F.l1_loss(output, target),
        "mel": mel_loss(output, target),
        "waveform": waveform,
    }


def si_snr(output: Tensor, target: Tensor, eps: float = 1e-8) -> Tensor:
    """Scale-invariant signal-to-noise ratio in dB of each clip ``[B, C, S]``: ``[B]``."""
    output = output[..., : target.shape[-1]].flatten(1)  # [B, C*S]
    target = target.flatten(1)
    output = output - output.mean(1, keepdim=True)
    target = target - target.mean(1, keepdim=True)
    scale = (output * target).sum(1, keepdim=True) / (target.pow(2).sum(1, keepdim=True) + eps)
    projection = scale * target  # [B, N]
    noise = output - projection
    ratio = projection.pow(2).sum(1) / (noise.pow(2).sum(1) + eps)
    return 10 * torch.log10(ratio + eps)
