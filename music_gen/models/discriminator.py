"""A multi-scale STFT discriminator and its losses, for adversarial codec training
(plain PyTorch, no Ray, no MLflow). Training-only: a saved codec never holds it.

EnCodec's discriminator (Défossez et al., 2022; audiocraft's ``MultiScaleSTFTDiscriminator``)
looks at the audio through several STFT resolutions. Each scale::

    audio [B, C, S] -> complex STFT [B, C, F, T] -> real and imaginary parts as channels
      [B, 2C, T, F] (time first, frequency last) -> 2-D convs, LeakyReLU after each
      (the time axis dilated 1, 2, 4; the frequency axis strided by 2) -> a 1-channel
      conv: logits [B, 1, T', F']

and returns its logits and the activations of each conv (the feature maps the
feature-matching loss compares).

Losses (``discriminator_loss``, ``generator_losses``) are hinge losses, as the EnCodec
paper writes them: the discriminator wants ``D(real) >= 1`` and ``D(fake) <= -1``,
the generator wants ``D(fake) >= 1``. The margin is why hinge and not LSGAN: a
discriminator that is already right by the margin gets no gradient from that example,
which keeps it from running away from a codec that starts far behind. Feature matching
is the L1 between the feature maps of real and reconstructed audio, averaged over the
maps of a scale and then over scales (audiocraft's normalisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

STFT_SCALES = ((1024, 256), (2048, 512), (512, 128))
"""(FFT size, hop) of each scale, audiocraft's; the window is the FFT size."""
KERNEL = (3, 9)
"""(time, frequency) kernel of the dilated convolutions."""
MIN_SAMPLES = max(n_fft for n_fft, _ in STFT_SCALES)
"""The shortest audio every scale can see (the STFTs are not centred: no padding)."""
DILATIONS = (1, 2, 4)
"""Time-axis dilations of the middle convolutions (each also halves the frequency axis)."""

Output = tuple[list[Tensor], list[list[Tensor]]]
"""Logits of each scale ``[B, 1, T', F']`` and the feature maps of each scale."""


def _conv(in_ch: int, out_ch: int, kernel: tuple[int, int], stride=(1, 1), dilation=(1, 1)):
    """A weight-normed 2-D conv that keeps the size (up to the stride): 'same' padding."""
    padding = tuple((k - 1) * d // 2 for k, d in zip(kernel, dilation, strict=True))
    conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, dilation=dilation, padding=padding)
    return weight_norm(conv)


class STFTDiscriminator(nn.Module):
    """One scale: a complex STFT and a small 2-D conv stack."""

    def __init__(self, channels: int, filters: int, n_fft: int, hop: int):
        super().__init__()
        self.n_fft, self.hop = n_fft, hop
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        square = (KERNEL[0], KERNEL[0])
        self.convs = nn.ModuleList([_conv(2 * channels, filters, KERNEL)])
        for dilation in DILATIONS:
            self.convs.append(_conv(filters, filters, KERNEL, (1, 2), (dilation, 1)))
        self.convs.append(_conv(filters, filters, square))
        self.post = _conv(filters, 1, square)

    def spectrogram(self, audio: Tensor) -> Tensor:
        """``[B, C, S]`` -> real and imaginary parts ``[B, 2C, T, F]``."""
        batch, channels, samples = audio.shape
        spec = torch.stft(
            audio.reshape(batch * channels, samples), self.n_fft, self.hop,
            window=self.window, center=False, normalized=True, return_complex=True,
        )  # [B*C, F, T]  # fmt: skip
        spec = spec.view(batch, channels, *spec.shape[-2:])  # [B, C, F, T]
        parts = torch.cat([spec.real, spec.imag], dim=1)  # [B, 2C, F, T]
        return parts.transpose(2, 3)  # [B, 2C, T, F]

    def forward(self, audio: Tensor) -> tuple[Tensor, list[Tensor]]:
        x = self.spectrogram(audio)  # [B, 2C, T, F]
        features = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)  # [B, filters, T, F / 2^i]
            features.append(x)
        return self.post(x), features  # [B, 1, T, F'], maps


class MultiScaleSTFTDiscriminator(nn.Module):
    """``forward(audio [B, C, S])`` -> (logits per scale, feature maps per scale)."""

    def __init__(self, channels: int = 1, filters: int = 16, scales=STFT_SCALES):
        super().__init__()
        self.scales = nn.ModuleList(
            STFTDiscriminator(channels, filters, n_fft, hop) for n_fft, hop in scales
        )

    def forward(self, audio: Tensor) -> Output:
        logits, features = [], []
        for scale in self.scales:
            scale_logits, scale_features = scale(audio)
            logits.append(scale_logits)
            features.append(scale_features)
        return logits, features


def build_discriminator(channels: int, filters: int, seed: int) -> MultiScaleSTFTDiscriminator:
    """Random weights, the same for every process given the seed."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return MultiScaleSTFTDiscriminator(channels, filters)


# ---------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------


def _split(output: Output, batch: int) -> tuple[Output, Output]:
    """The outputs of one forward over ``cat([real, fake])`` as (real's, fake's)."""
    logits, features = output
    real = ([x[:batch] for x in logits], [[f[:batch] for f in maps] for maps in features])
    fake = ([x[batch:] for x in logits], [[f[batch:] for f in maps] for maps in features])
    return real, fake


def discriminator_loss(real_logits: list[Tensor], fake_logits: list[Tensor]) -> Tensor:
    """Hinge: ``relu(1 - D(real)) + relu(1 + D(fake))``, averaged over scales (>= 0;
    at least 2 when the discriminator cannot tell the two apart)."""
    total = real_logits[0].new_zeros(())
    for real, fake in zip(real_logits, fake_logits, strict=True):
        total = total + F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    return total / len(real_logits)


def generator_adversarial_loss(fake_logits: list[Tensor]) -> Tensor:
    """Hinge: ``relu(1 - D(fake))`` averaged over scales; 0 once the fakes pass by the margin."""
    total = fake_logits[0].new_zeros(())
    for fake in fake_logits:
        total = total + F.relu(1 - fake).mean()
    return total / len(fake_logits)


def feature_matching_loss(real: list[list[Tensor]], fake: list[list[Tensor]]) -> Tensor:
    """L1 between the feature maps of real and reconstructed audio: the mean over the
    maps of a scale, then over scales (audiocraft's). 0 when the audio is the same."""
    total = fake[0][0].new_zeros(())
    for real_maps, fake_maps in zip(real, fake, strict=True):
        pairs = zip(real_maps, fake_maps, strict=True)
        total = total + sum(F.l1_loss(f, r.detach()) for r, f in pairs) / len(real_maps)
    return total / len(real)


def discriminator_step(
    discriminator: nn.Module, optimizer, real: Tensor, fake: Tensor, grad_clip: float = 0.0
) -> Tensor:
    """One optimizer step of the discriminator on ``real`` and ``fake`` ``[B, C, S]`` (the
    fake detached: the codec is not trained here). One forward over both halves keeps
    DDP to one forward per backward. Returns the loss."""
    batch = real.shape[0]
    output = discriminator(torch.cat([real, fake.detach()]))  # logits [2B, 1, T', F']
    (real_logits, _), (fake_logits, _) = _split(output, batch)
    loss = discriminator_loss(real_logits, fake_logits)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip:
        torch.nn.utils.clip_grad_norm_(discriminator.parameters(), grad_clip)
    optimizer.step()
    return loss.detach()


def generator_losses(discriminator: nn.Module, real: Tensor, fake: Tensor) -> dict[str, Tensor]:
    """``g_adv`` and ``feature`` of the codec's output ``fake`` against ``real`` ``[B, C, S]``.

    Pass the bare discriminator (not its DDP wrapper): its weights are frozen for this
    forward, so only the codec gets gradients, and DDP would wait for gradients that never
    come. Its weights are the same on every rank (its own step's gradients are reduced).
    """
    frozen = [p for p in discriminator.parameters() if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        output = discriminator(torch.cat([real, fake]))
    finally:
        for p in frozen:
            p.requires_grad_(True)
    (_, real_maps), (fake_logits, fake_maps) = _split(output, real.shape[0])
    return {
        "g_adv": generator_adversarial_loss(fake_logits),
        "feature": feature_matching_loss(real_maps, fake_maps),
    }
