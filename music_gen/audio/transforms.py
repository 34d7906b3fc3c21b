"""Tensor-to-tensor audio transforms: resampling, channel mixing, normalisation.

Every function takes float audio shaped ``[..., C, S]`` (``[S]`` where noted) and
returns a new tensor; nothing here touches files.
"""

import math

import torch
import torch.nn.functional as F
import torchaudio.functional as AF

# torchaudio builds a polyphase kernel of about (new_sr / g) * (orig_sr / g) taps,
# with g = gcd(orig_sr, new_sr). Coprime rates (44101 -> 48000) would need gigabytes,
# so past this many taps we resample in the frequency domain instead.
_MAX_SINC_KERNEL_TAPS = 1 << 24

# Below this peak (about -180 dBFS) a clip is treated as digital silence.
_SILENCE_PEAK = 1e-9

# ITU-R BS.1770 measures blocks of 400 ms: anything shorter has no loudness.
_LOUDNESS_BLOCK_SECONDS = 0.4

# The standard 5.1 to stereo downmix (ITU-R BS.775), channel order L R C LFE Ls Rs
# as in WAV and FLAC. The LFE channel is dropped; rows sum to 1 so nothing clips.
_DOWNMIX_5_1_TO_STEREO = torch.tensor(
    [
        [1.0, 0.0, math.sqrt(0.5), 0.0, math.sqrt(0.5), 0.0],
        [0.0, 1.0, math.sqrt(0.5), 0.0, 0.0, math.sqrt(0.5)],
    ]
) / (1.0 + 2 * math.sqrt(0.5))


def resample(audio: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample ``audio`` ``[..., S]`` from ``orig_sr`` to ``new_sr`` Hz.

    Band-limited sinc interpolation (``torchaudio.functional.resample``); returns
    ``audio`` unchanged when the rates are equal. The output has
    ``ceil(S * new_sr / orig_sr)`` samples.
    """
    orig_sr, new_sr = int(orig_sr), int(new_sr)
    if orig_sr <= 0 or new_sr <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_sr} -> {new_sr}")
    if orig_sr == new_sr:
        return audio
    gcd = math.gcd(orig_sr, new_sr)
    if (orig_sr // gcd) * (new_sr // gcd) > _MAX_SINC_KERNEL_TAPS:
        return _fft_resample(audio, orig_sr, new_sr)
    return AF.resample(audio, orig_sr, new_sr)


def _fft_resample(audio: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Resample by cropping or zero-padding the spectrum, for nearly coprime rates."""
    length = audio.shape[-1]
    out_length = math.ceil(new_sr * length / orig_sr)
    if length == 0:
        return audio.new_zeros(*audio.shape[:-1], 0)
    flat = audio.reshape(-1, length)  # [N, S]
    # The FFT treats the clip as periodic; mirrored padding keeps the jump between
    # its end and its start out of the part we keep.
    pad = min(length - 1, orig_sr // 10)
    padded = F.pad(flat, (pad, pad), mode="reflect") if pad else flat  # [N, S + 2 pad]
    padded_length = padded.shape[-1]
    new_padded_length = max(1, round(padded_length * new_sr / orig_sr))
    spectrum = torch.fft.rfft(padded)  # [N, F]
    n_bins = new_padded_length // 2 + 1
    spectrum = spectrum[..., :n_bins]
    spectrum = F.pad(spectrum, (0, n_bins - spectrum.shape[-1]))  # [N, F']
    scaled = torch.fft.irfft(spectrum, n=new_padded_length) * (new_padded_length / padded_length)
    start = round(pad * new_sr / orig_sr)
    out = scaled[..., start : start + out_length]  # [N, S']
    out = F.pad(out, (0, out_length - out.shape[-1]))
    return out.reshape(*audio.shape[:-1], out_length).to(audio.dtype)


def to_channels(audio: torch.Tensor, channels: int) -> torch.Tensor:
    """Convert ``audio`` ``[..., C, S]`` to ``[..., channels, S]``.

    Mono is the mean of all channels; mono is copied to every output channel;
    5.1 becomes stereo with the ITU downmix. Other reductions keep the first
    ``channels`` channels, as audiocraft does. Upmixing beyond mono is refused.
    """
    if channels < 1:
        raise ValueError(f"channels must be at least 1, got {channels}")
    have = audio.shape[-2]
    if have == channels:
        return audio
    if channels == 1:
        return audio.mean(dim=-2, keepdim=True)  # [..., 1, S]
    if have == 1:
        return audio.expand(*audio.shape[:-2], channels, audio.shape[-1]).clone()
    if have == 6 and channels == 2:
        matrix = _DOWNMIX_5_1_TO_STEREO.to(audio.device, audio.dtype)  # [2, 6]
        return torch.matmul(matrix, audio)  # [..., 2, S]
    if have > channels:
        return audio[..., :channels, :].clone()
    raise ValueError(f"cannot turn {have} channels into {channels}")


def _clip_dims(audio: torch.Tensor) -> tuple[int, ...]:
    """The dims of one clip: ``[C, S]`` for batched or 2-D audio, all of ``[S]``."""
    return tuple(range(max(audio.dim() - 2, 0), audio.dim()))


def peak_normalize(audio: torch.Tensor, peak: float = 0.95) -> torch.Tensor:
    """Scale each clip of ``audio`` ``[..., C, S]`` so its largest magnitude is ``peak``.

    Silent clips come back unchanged (no division by zero).
    """
    if audio.numel() == 0:
        return audio.clone()
    current = audio.abs().amax(dim=_clip_dims(audio), keepdim=True)  # [..., 1, 1]
    gain = torch.where(current > _SILENCE_PEAK, peak / current.clamp_min(_SILENCE_PEAK), 1.0)
    return audio * gain


def loudness_normalize(
    audio: torch.Tensor, sample_rate: int, target_lufs: float = -14.0
) -> torch.Tensor:
    """Scale each clip of ``audio`` ``[..., C, S]`` (or ``[S]``) to ``target_lufs``.

    Loudness is ITU-R BS.1770 (``torchaudio.functional.loudness``). Clips that are
    silent or shorter than one 400 ms block come back unchanged. A clip whose peak
    would pass 1.0 is turned down until it does not (it then ends below the target)
    rather than clipped, so the waveform is never distorted.
    """
    if audio.shape[-1] < round(_LOUDNESS_BLOCK_SECONDS * sample_rate):
        return audio.clone()
    clips = audio if audio.dim() >= 2 else audio.unsqueeze(0)  # [..., C, S]
    measured = _measure_loudness(clips, sample_rate)  # [...]
    gain_db = target_lufs - measured
    # Silence is gated out of the measurement entirely and comes back as NaN or -inf.
    gain = torch.where(torch.isfinite(gain_db), 10.0 ** (gain_db / 20.0), 1.0)
    louder = clips * gain[..., None, None]  # [..., C, S]
    peak = louder.abs().amax(dim=(-2, -1), keepdim=True)  # [..., 1, 1]
    louder = louder / peak.clamp_min(1.0)
    return louder.reshape(audio.shape)


def _measure_loudness(clips: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """Integrated loudness in LUFS of each clip of ``clips`` ``[..., C, S]``."""
    # torchaudio knows channel weights for up to 5 channels (L R C Ls Rs);
    # wider layouts are measured on their mono mix.
    if clips.shape[-2] > 5:
        clips = clips.mean(dim=-2, keepdim=True)  # [..., 1, S]
    return AF.loudness(clips.float(), sample_rate)  # [...]


def is_silent(audio: torch.Tensor, threshold_db: float = -60.0) -> bool:
    """True when the RMS level of ``audio`` (all channels together) is below ``threshold_db`` dBFS."""
    if audio.numel() == 0:
        return True
    rms = audio.float().pow(2).mean().sqrt().item()
    return rms <= 0.0 or 20.0 * math.log10(rms) < threshold_db
