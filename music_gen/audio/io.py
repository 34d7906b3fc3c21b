"""Read and write audio files as float tensors ``[C, S]`` in [-1, 1].

Decoding and encoding go through soundfile, whose bundled libsndfile handles WAV,
FLAC, MP3 and Ogg Vorbis without ffmpeg. Every failure a user can cause (missing,
empty, truncated or non-audio input, a format we cannot write) becomes one
``AudioError`` that names the file; libsndfile's own exceptions never escape.
"""

import io
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import torch

from music_gen.audio.transforms import resample, to_channels
from music_gen.errors import AudioError

READ_FORMATS = ("wav", "flac", "mp3", "ogg")
WRITE_FORMATS = ("wav", "flac", "mp3", "ogg")
SUBTYPES = ("PCM_16", "PCM_24", "FLOAT")  # WAV sample encodings, default first

# Our format name -> (libsndfile's name, subtypes we write there, default first).
# libsndfile has no float FLAC, and MP3 and Ogg (Vorbis) have one encoding each.
_FORMAT_SPECS: dict[str, tuple[str, tuple[str, ...]]] = {
    "wav": ("WAV", SUBTYPES),
    "flac": ("FLAC", ("PCM_16", "PCM_24")),
    "mp3": ("MP3", ("MPEG_LAYER_III",)),
    "ogg": ("OGG", ("VORBIS",)),
}

# The rates MPEG-1/2/2.5 layer III can carry; libsndfile refuses any other.
MP3_SAMPLE_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000)
_MP3_MAX_CHANNELS = 2

# MP3 headers give an estimated length; a real file may decode a little short of it.
# 2 MP3 frames or 1% of the length, whichever is more, is slack, not truncation.
_DECODE_SLACK_FRAMES = 2 * 1152
_DECODE_SLACK_FRACTION = 0.01

# libsndfile reads truncated WAVs silently, but its header log says
# "data : 32000 (should be 15978)". Streaming writers that do not know the length
# in advance put one of these sizes in the header, which is not truncation.
_WAV_DATA_SIZE_MISMATCH = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_WAV_UNKNOWN_DATA_SIZES = (0, 0xFFFFFFFF)

# libsndfile messages that would mislead a user, rewritten.
_FRIENDLY_REASONS = {
    "Format not recognised": "not a recognised audio format (readable: wav, flac, mp3, ogg)",
    "does not exist or is not a regular file": "malformed or truncated audio data",
    "file is malformed": "malformed or truncated audio data",
}

AudioSource = str | os.PathLike[str] | BinaryIO | bytes | bytearray


@dataclass(frozen=True)
class AudioInfo:
    """What an audio file holds, read from its header."""

    sample_rate: int
    channels: int
    frames: int  # samples per channel
    duration: float  # seconds
    format: str  # container, lower case: "wav", "flac", "mp3", "ogg", ...
    subtype: str  # sample encoding: "PCM_16", "FLOAT", "VORBIS", "MPEG_LAYER_III", ...


def read_audio(
    source: AudioSource, sample_rate: int | None = None, channels: int | None = None
) -> tuple[torch.Tensor, int]:
    """Decode ``source`` into float32 audio ``[C, S]`` in [-1, 1] and its sample rate.

    ``source`` is a path, a binary file-like object (an HTTP upload) or bytes.
    Given ``sample_rate``, the audio is resampled to it; given ``channels`` (1 or 2),
    it is mixed down to mono (mean) or mono is copied to stereo.

    Raises:
        AudioError: the file is missing, empty, truncated, corrupt or not audio.
    """
    if channels not in (None, 1, 2):
        raise ValueError(f"channels must be 1, 2 or None, got {channels}")
    name = _display_name(source)
    with _open_sound(source, name) as sound:
        with _audio_errors("read", name, hint="corrupt or truncated audio data"):
            data = sound.read(dtype="float32", always_2d=True)  # [S, C]
        _check_fully_decoded(len(data), sound.frames, name)
        file_rate = sound.samplerate
    audio = _sanitize(torch.from_numpy(np.ascontiguousarray(data.T)))  # [C, S]
    if channels is not None and channels < audio.shape[0]:
        audio = to_channels(audio, channels)  # mix down first: fewer channels to resample
    if sample_rate is not None and sample_rate != file_rate:
        # Sinc interpolation overshoots a little near full scale.
        audio = resample(audio, file_rate, sample_rate).clamp(-1.0, 1.0)  # [C, S']
    if channels is not None:
        audio = to_channels(audio, channels)  # [channels, S']
    return audio, sample_rate or file_rate


def audio_info(source: AudioSource) -> AudioInfo:
    """Describe ``source`` (path, file-like object or bytes) from its header, without decoding it.

    Raises:
        AudioError: the file is missing, empty, truncated or not audio.
    """
    name = _display_name(source)
    with _open_sound(source, name) as sound:
        return AudioInfo(
            sample_rate=sound.samplerate,
            channels=sound.channels,
            frames=sound.frames,
            duration=sound.frames / sound.samplerate,
            format=sound.format.lower(),
            subtype=sound.subtype,
        )


def write_audio(
    path: str | os.PathLike[str],
    audio: torch.Tensor,
    sample_rate: int,
    format: str | None = None,
    subtype: str | None = None,
) -> Path:
    """Write ``audio`` (``[C, S]`` or ``[S]``) to ``path`` and return the path.

    ``format`` is one of ``WRITE_FORMATS`` and defaults to the file suffix.
    ``subtype`` picks the sample encoding (WAV: ``SUBTYPES``; FLAC: PCM_16 or
    PCM_24). Samples are clipped to [-1, 1]. MP3 only carries the rates in
    ``MP3_SAMPLE_RATES``; other rates are resampled to the nearest of them.
    The file is written next to ``path`` under a temporary name and renamed into
    place, so a failure never leaves a partial file behind.

    Raises:
        AudioError: unknown format or subtype, audio the format cannot hold, or the
            file cannot be written.
    """
    path = Path(path)
    name = str(path)
    encoding = _prepare_encoding(audio, sample_rate, format or _suffix_format(path), subtype, name)
    temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    with _audio_errors("write", name):
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with open(temp, "xb") as file:
                _write_encoded(file, encoding, name)
                # Flush to disk before the rename, so a crash cannot leave an empty
                # file under the final name.
                file.flush()
                os.fsync(file.fileno())
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)
    return path


def encode_audio(
    audio: torch.Tensor, sample_rate: int, format: str, subtype: str | None = None
) -> bytes:
    """Encode ``audio`` (``[C, S]`` or ``[S]``) into the bytes of a ``format`` file.

    Same formats, subtypes, clipping and MP3 rate handling as ``write_audio``.

    Raises:
        AudioError: unknown format or subtype, or audio the format cannot hold.
    """
    name = f"<{format} bytes>"
    encoding = _prepare_encoding(audio, sample_rate, format, subtype, name)
    buffer = io.BytesIO()
    _write_encoded(buffer, encoding, name)
    return buffer.getvalue()


# ---------------------------------------------------------------------------
# Reading


def _display_name(source: AudioSource) -> str:
    """How error messages call ``source``."""
    if isinstance(source, (bytes, bytearray)):
        return "<audio bytes>"
    if hasattr(source, "read"):
        name = getattr(source, "name", None)
        return name if isinstance(name, str) else "<audio stream>"
    return os.fspath(source)


@contextmanager
def _open_sound(source: AudioSource, name: str) -> Iterator[sf.SoundFile]:
    """Open ``source`` for reading after checking it exists, has bytes and is complete.

    A stream is put back where it was afterwards, so it can be read again.
    """
    target = _readable(source, name)
    start = None if isinstance(target, str) else target.tell()
    try:
        with _audio_errors("read", name):
            sound = sf.SoundFile(target)
        with sound:
            _check_header(sound, name)
            yield sound
    finally:
        if not isinstance(target, str) and start is not None:
            target.seek(start)


def _readable(source: AudioSource, name: str) -> str | BinaryIO:
    """A path string or seekable stream for libsndfile, refusing what is missing or empty."""
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    with _audio_errors("read", name):
        if hasattr(source, "read"):
            return _readable_stream(source, name)  # type: ignore[arg-type]
        path = Path(source)
        if not path.exists():
            raise _read_error(name, "file not found")
        if path.is_dir():
            raise _read_error(name, "is a directory, not an audio file")
        if path.stat().st_size == 0:
            raise _read_error(name, "file is empty")
        return str(path)


def _readable_stream(stream: BinaryIO, name: str) -> BinaryIO:
    # libsndfile seeks around (headers, trailers), so one-way streams are buffered.
    seekable = getattr(stream, "seekable", None)
    if seekable is None or not seekable():
        stream = io.BytesIO(stream.read())
    start = stream.tell()
    size = stream.seek(0, io.SEEK_END) - start
    stream.seek(start)
    if size <= 0:
        raise _read_error(name, "file is empty")
    return stream


def _check_header(sound: sf.SoundFile, name: str) -> None:
    """Refuse a file whose header promises more samples than it holds, or none."""
    for declared, present in _WAV_DATA_SIZE_MISMATCH.findall(sound.extra_info):
        declared, present = int(declared), int(present)
        if declared not in _WAV_UNKNOWN_DATA_SIZES and declared > present:
            raise _read_error(
                name,
                f"truncated: header promises {declared} bytes of samples, file holds {present}",
            )
    if sound.frames <= 0:
        raise _read_error(name, "holds no audio samples")


def _check_fully_decoded(decoded: int, declared: int, name: str) -> None:
    """Refuse a file that decoded clearly shorter than its header says (a cut MP3)."""
    slack = max(_DECODE_SLACK_FRAMES, int(declared * _DECODE_SLACK_FRACTION))
    if declared - decoded > slack:
        raise _read_error(name, f"truncated: decoded {decoded} of {declared} samples")


def _sanitize(audio: torch.Tensor) -> torch.Tensor:
    """Force decoded samples into [-1, 1]: float files may hold NaN, inf or overs."""
    return torch.nan_to_num(audio, nan=0.0, posinf=1.0, neginf=-1.0).clamp(-1.0, 1.0)


def _read_error(name: str, reason: str) -> AudioError:
    return AudioError(f"cannot read audio {name!r}: {reason}")


# ---------------------------------------------------------------------------
# Writing


@dataclass(frozen=True)
class _Encoding:
    """Everything libsndfile needs to write one file."""

    data: np.ndarray  # [S, C] float32 in [-1, 1]
    sample_rate: int
    format: str  # libsndfile's name: "WAV", "FLAC", "MP3", "OGG"
    subtype: str


def _suffix_format(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def _prepare_encoding(
    audio: torch.Tensor, sample_rate: int, format: str, subtype: str | None, name: str
) -> _Encoding:
    """Validate format and subtype and turn ``audio`` into what libsndfile writes."""
    fmt = format.lower().lstrip(".")
    if fmt not in _FORMAT_SPECS:
        shown = repr(fmt) if fmt else "none (no file suffix and no format given)"
        raise _write_error(
            name, f"unsupported format {shown}; use one of {', '.join(WRITE_FORMATS)}"
        )
    sf_format, subtypes = _FORMAT_SPECS[fmt]
    chosen = subtype.upper() if subtype else subtypes[0]
    if chosen not in subtypes:
        raise _write_error(
            name, f"format {fmt!r} has no subtype {chosen!r}; use one of {', '.join(subtypes)}"
        )
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    clip = _as_clip(audio, name)  # [C, S]
    if fmt == "mp3":
        clip, sample_rate = _fit_mp3(clip, sample_rate, name)
    data = np.ascontiguousarray(clip.T.numpy())  # [S, C]
    return _Encoding(data=data, sample_rate=sample_rate, format=sf_format, subtype=chosen)


def _as_clip(audio: torch.Tensor, name: str) -> torch.Tensor:
    """``audio`` as a CPU float32 ``[C, S]`` tensor clipped to [-1, 1]."""
    if audio.dim() not in (1, 2):
        raise ValueError(f"audio must be [C, S] or [S], got shape {tuple(audio.shape)}")
    clip = audio.detach().to("cpu", torch.float32)
    clip = clip if clip.dim() == 2 else clip.unsqueeze(0)  # [C, S]
    if clip.shape[-1] == 0:
        # libsndfile would quietly write a 0-byte FLAC or MP3 that nothing can read.
        raise _write_error(name, "audio has no samples")
    return _sanitize(clip)


def _fit_mp3(clip: torch.Tensor, sample_rate: int, name: str) -> tuple[torch.Tensor, int]:
    """Bring ``clip`` ``[C, S]`` to a rate and channel count MP3 can carry."""
    if clip.shape[0] > _MP3_MAX_CHANNELS:
        raise _write_error(
            name, f"MP3 holds at most 2 channels, got {clip.shape[0]}; mix down first"
        )
    if sample_rate in MP3_SAMPLE_RATES:
        return clip, sample_rate
    # Nearest supported rate; on a tie the higher one, which loses no bandwidth.
    new_rate = min(MP3_SAMPLE_RATES, key=lambda rate: (abs(rate - sample_rate), -rate))
    return resample(clip, sample_rate, new_rate).clamp(-1.0, 1.0), new_rate


def _write_encoded(target: BinaryIO, encoding: _Encoding, name: str) -> None:
    with _audio_errors("write", name):
        sf.write(
            target,
            encoding.data,
            encoding.sample_rate,
            subtype=encoding.subtype,
            format=encoding.format,
        )


def _write_error(name: str, reason: str) -> AudioError:
    return AudioError(f"cannot write audio {name!r}: {reason}")


# ---------------------------------------------------------------------------
# Errors


@contextmanager
def _audio_errors(action: str, name: str, hint: str | None = None) -> Iterator[None]:
    """Turn libsndfile and OS failures inside the block into one-line AudioErrors."""
    try:
        yield
    except (sf.SoundFileError, OSError) as exc:
        reason = _reason(exc)
        message = f"{hint} ({reason})" if hint else reason
        raise AudioError(f"cannot {action} audio {name!r}: {message}") from exc


def _reason(exc: Exception) -> str:
    """The useful part of a libsndfile or OS error, in words a user can act on."""
    if isinstance(exc, sf.LibsndfileError):
        text = exc.error_string
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = str(exc)
    text = re.sub(r"^Error\s*:\s*", "", text.strip()).rstrip(".")
    for needle, friendly in _FRIENDLY_REASONS.items():
        if needle in text:
            return friendly
    return text
