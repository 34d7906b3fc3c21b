"""Melody conditioning as MusicGen-Melody has it: a chromagram of the melody audio.

The chromagram is 12 pitch classes (C, C#, ..., B) per STFT frame; each frame keeps
only its dominant class, one-hot, so the model hears the tune and not the timbre.
It is computed exactly as transformers' ``MusicgenMelodyFeatureExtractor`` does
(power spectrogram, librosa's chroma filter bank, max-normalised, argmax one-hot),
so imported MusicGen-Melody checkpoints get the features they were trained with.
The frame rate is ``sample_rate / hop_length`` of the model's ``ChromaSettings``
(MusicGen-Melody: 32 kHz, hop 4096, about 7.8 frames per second).

How a melody meets a generation (``melody_chroma``):
- any number of channels (mixed to mono), any sample rate (resampled);
- longer than the generated duration: cut to it;
- shorter: its chroma is *looped* up to the model's ``chroma_length`` frames (the
  conditioner repeats it, as MusicGen-Melody does), so a short tune repeats.

``chroma_cosine`` is the melody measure audiocraft reports (evaluation calls it).

Training conditions a melody model on the chroma of its own target audio, as audiocraft
does. ``data tokenize`` stores it per segment at the *codec* frame rate (one pitch class
per code frame, ``frame_chroma_settings``: the codec's hop, MusicGen-Melody's window in
seconds), so that a training crop of the codes crops its chroma by the same frames;
``chroma_at_rate`` then samples a crop at the conditioner's frame rate, as
``melody_chroma`` would have computed it from the crop's audio.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from music_gen.errors import AudioError, UsageError

SILENCE = 1e-6
"""Frames whose chroma peak is below this are silence (their argmax is class 0, C)."""


@dataclass(frozen=True)
class ChromaSettings:
    sample_rate: int = 32_000
    """Rate the melody is resampled to before the STFT."""
    n_fft: int = 16_384
    """STFT size (and window length)."""
    hop_length: int = 4096
    """STFT hop: the chroma frame rate is ``sample_rate / hop_length``."""
    num_chroma: int = 12
    """Pitch classes."""
    chroma_length: int = 235
    """Frames the conditioner always hands to the model (looped or cut to it)."""

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def frame_rate(self) -> float:
        """Chroma frames per second."""
        return self.sample_rate / self.hop_length


WINDOW_SECONDS = 0.512
"""MusicGen-Melody's STFT window (16384 samples at 32 kHz), kept in seconds at other rates."""


def frame_chroma_settings(sample_rate: int, hop_length: int) -> ChromaSettings:
    """Chroma with one frame per codec frame (a codec's ``sample_rate`` and ``hop_length``)
    and MusicGen-Melody's window in seconds: what ``data tokenize`` stores."""
    n_fft = 2 * round(WINDOW_SECONDS * sample_rate / 2)
    return ChromaSettings(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length)


def chroma_frames(seconds: float, settings: ChromaSettings) -> int:
    """Frames of the chroma of ``seconds`` of audio (a centred STFT: one more than whole hops)."""
    return int(seconds * settings.frame_rate) + 1


def pitch_classes(clip: torch.Tensor, sample_rate: int, hop_length: int, frames: int):
    """One clip ``[C, S]`` -> the dominant pitch class of each of its ``frames`` codec
    frames (``frame_chroma_settings``), ``uint8 [frames]``; the last frame repeats if the
    STFT gives fewer frames than the codec."""
    settings = frame_chroma_settings(sample_rate, hop_length)
    classes = clip_chroma(clip, sample_rate, settings).argmax(-1)  # [T']
    if classes.shape[0] < frames:
        classes = torch.cat([classes, classes[-1:].expand(frames - classes.shape[0])])
    return classes[:frames].to(torch.uint8)  # [frames]


def chroma_at_rate(
    classes: torch.Tensor, frame_rate: float, settings: ChromaSettings
) -> torch.Tensor:
    """Pitch classes ``[B, T]`` at ``frame_rate`` (a codec's) -> one-hot chroma
    ``[B, T', 12]`` at ``settings.frame_rate``: frame ``j`` of a centred STFT is the
    class of the codec frame nearest its centre, ``T'`` as many as ``melody_chroma``
    gives for ``T / frame_rate`` seconds of audio."""
    frames = classes.shape[1]
    count = chroma_frames(frames / frame_rate, settings)
    index = torch.arange(count, device=classes.device) * (frame_rate / settings.frame_rate)
    index = index.round().long().clamp(max=frames - 1)  # [T']
    return F.one_hot(classes[:, index].long(), settings.num_chroma).float()  # [B, T', 12]


def chromagram(audio: torch.Tensor, settings: ChromaSettings) -> torch.Tensor:
    """Mono audio ``[B, S]`` at ``settings.sample_rate`` -> one-hot chroma ``[B, T, 12]``."""
    import torchaudio
    from transformers.audio_utils import chroma_filter_bank

    n_fft = settings.n_fft
    if audio.shape[-1] < n_fft:  # centred zero padding up to one window, as transformers does
        pad = n_fft - audio.shape[-1]
        audio = F.pad(audio, (pad // 2, pad // 2 + pad % 2))
    spectrogram = torchaudio.transforms.Spectrogram(
        n_fft=n_fft, win_length=n_fft, hop_length=settings.hop_length, power=2, normalized=True
    ).to(audio.device)
    spec = spectrogram(audio.float())  # [B, F, T]
    filters = chroma_filter_bank(
        sampling_rate=settings.sample_rate,
        num_frequency_bins=n_fft,
        tuning=0,
        num_chroma=settings.num_chroma,
    )
    filters = torch.from_numpy(filters).float().to(audio.device)  # [12, F]
    raw = torch.einsum("cf,bft->bct", filters, spec)  # [B, 12, T]
    chroma = F.normalize(raw, p=float("inf"), dim=-2, eps=SILENCE).transpose(1, 2)  # [B, T, 12]
    return F.one_hot(chroma.argmax(-1), settings.num_chroma).float()  # [B, T, 12]


def melody_chroma(
    melody: torch.Tensor | Sequence[torch.Tensor],
    sample_rate: int,
    batch: int,
    duration: float,
    settings: ChromaSettings,
) -> torch.Tensor:
    """Melody audio for a batch -> chroma ``[B, chroma_length, 12]`` (see the module
    docstring).

    ``melody`` is one clip ``[S]`` or ``[C, S]`` for every prompt, a batch ``[B, C, S]``,
    or a list of ``B`` clips ``[C, S]`` (each may differ in length and channels). Each row
    is looped (or cut) to ``chroma_length`` on its own, so a short row repeats itself
    rather than being padded by another row's length.
    """
    clips = _clips(melody, batch)
    if not isinstance(sample_rate, int) or isinstance(sample_rate, bool) or sample_rate <= 0:
        raise UsageError(f"melody_sample_rate must be a positive integer, got {sample_rate!r}")
    rows = []
    for index, clip in enumerate(clips):
        clip = clip[:, : max(1, round(duration * sample_rate))]  # [C, S]
        if not bool(torch.isfinite(clip).all()):
            raise AudioError(f"melody {index + 1} has NaN or infinite samples")
        rows.append(clip_chroma(clip, sample_rate, settings))  # [T, 12]
    return torch.stack([loop_frames(row[None], settings.chroma_length)[0] for row in rows])


def clip_chroma(clip: torch.Tensor, sample_rate: int, settings: ChromaSettings) -> torch.Tensor:
    """One clip ``[C, S]`` at ``sample_rate`` -> its chroma ``[T, 12]``, mixed to mono and
    resampled first (no looping: what ``chroma_cosine`` compares)."""
    from music_gen.audio.transforms import resample

    mono = resample(clip.float().mean(dim=0), sample_rate, settings.sample_rate)  # [S']
    return chromagram(mono[None], settings)[0]


def loop_frames(chroma: torch.Tensor, frames: int) -> torch.Tensor:
    """``[B, T, C]`` repeated along time and cut to ``[B, frames, C]`` (MusicGen-Melody's
    rule for a melody shorter than ``chroma_length``)."""
    repeats = -(-frames // chroma.shape[1])
    return chroma.repeat(1, repeats, 1)[:, :frames]


def _clips(melody, batch: int) -> list[torch.Tensor]:
    """The melody argument as ``batch`` clips ``[C, S]``, each non-empty."""
    if isinstance(melody, torch.Tensor):
        if melody.dim() == 1:
            melody = melody[None]
        if melody.dim() == 2:
            clips = [melody] * batch
        elif melody.dim() == 3:
            clips = list(melody)
        else:
            raise UsageError(f"melody must be [S], [C, S] or [B, C, S], got {list(melody.shape)}")
    elif isinstance(melody, Sequence) and not isinstance(melody, str):
        clips = [m[None] if isinstance(m, torch.Tensor) and m.dim() == 1 else m for m in melody]
        if not all(isinstance(m, torch.Tensor) and m.dim() == 2 for m in clips):
            raise UsageError("a list of melodies holds one [C, S] tensor per prompt")
    else:
        raise UsageError(f"melody must be a tensor or a list of tensors, got {type(melody)}")
    if len(clips) == 1 and batch > 1:
        clips = clips * batch
    if len(clips) != batch:
        raise UsageError(f"{len(clips)} melodies for {batch} prompts")
    for index, clip in enumerate(clips):
        if clip.shape[-1] == 0 or clip.shape[0] == 0:
            raise AudioError(f"melody {index + 1} is empty")
    return clips


def chroma_cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Mean over frames of the cosine similarity of two chromagrams ``[B, T, 12]`` -> ``[B]``
    (the shorter length is used). 1 is the same melody; one-hot chroma of unrelated
    tunes averages about 1/12."""
    frames = min(a.shape[1], b.shape[1])
    return F.cosine_similarity(a[:, :frames], b[:, :frames], dim=-1, eps=eps).mean(dim=1)
