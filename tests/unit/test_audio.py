"""Audio I/O and transforms on audio the tests write themselves (sines, noise)."""

import io
import math
import os

import pytest
import soundfile as sf
import torch
import torchaudio.functional as AF

from music_gen.audio import (
    MP3_SAMPLE_RATES,
    READ_FORMATS,
    SUBTYPES,
    WRITE_FORMATS,
    audio_info,
    encode_audio,
    is_silent,
    loudness_normalize,
    peak_normalize,
    read_audio,
    resample,
    to_channels,
    write_audio,
)
from music_gen.audio import io as audio_io
from music_gen.errors import AudioError, MusicGenError

pytestmark = pytest.mark.unit

# MP3 decoders may add or drop up to a couple of 1152-sample frames at the edges.
LOSSY_LENGTH_SLACK = 2 * 1152

# (format, subtype, max abs error of a lossless round trip; None for lossy formats)
FORMAT_CASES = [
    ("wav", "PCM_16", 1e-4),
    ("wav", "PCM_24", 1e-6),
    ("wav", "FLOAT", 1e-7),
    ("flac", "PCM_16", 1e-4),
    ("flac", "PCM_24", 1e-6),
    ("mp3", None, None),
    ("ogg", None, None),
]


def sine(freq: float, sample_rate: int, seconds: float, channels: int = 1, amp: float = 0.5):
    """A sine ``[channels, S]``; channel c plays ``freq * (c + 1)`` so channels differ."""
    t = torch.arange(round(sample_rate * seconds)) / sample_rate  # [S]
    rows = [amp * torch.sin(2 * math.pi * freq * (c + 1) * t) for c in range(channels)]
    return torch.stack(rows)  # [C, S]


def dominant_frequency(audio: torch.Tensor, sample_rate: int) -> float:
    """The strongest frequency in Hz of a mono signal ``[S]``."""
    spectrum = torch.fft.rfft(audio * torch.hann_window(audio.shape[-1])).abs()  # [F]
    return spectrum.argmax().item() * sample_rate / audio.shape[-1]


def bin_width(sample_rate: int, length: int) -> float:
    return sample_rate / length


# ---------------------------------------------------------------------------
# Round trips


@pytest.mark.parametrize(("fmt", "subtype", "atol"), FORMAT_CASES)
@pytest.mark.parametrize("channels", [1, 2])
def test_write_read_round_trip(tmp_path, fmt, subtype, atol, channels):
    sr = 44100
    audio = sine(440.0, sr, 0.25, channels)  # [C, S]
    path = write_audio(tmp_path / f"tone.{fmt}", audio, sr, subtype=subtype)

    decoded, rate = read_audio(path)

    assert path == tmp_path / f"tone.{fmt}"
    assert rate == sr
    assert decoded.dtype == torch.float32
    assert decoded.shape[0] == channels
    if atol is None:
        assert abs(decoded.shape[-1] - audio.shape[-1]) <= LOSSY_LENGTH_SLACK
    else:
        assert decoded.shape == audio.shape
        torch.testing.assert_close(decoded, audio, atol=atol, rtol=0)
    for c in range(channels):
        tolerance = 2 * bin_width(sr, decoded.shape[-1])
        assert dominant_frequency(decoded[c], sr) == pytest.approx(440.0 * (c + 1), abs=tolerance)
    assert decoded.abs().max() <= 1.0


@pytest.mark.parametrize(("fmt", "subtype", "atol"), FORMAT_CASES)
def test_audio_info_reads_the_header(tmp_path, fmt, subtype, atol):
    sr = 22050
    path = write_audio(tmp_path / f"tone.{fmt}", sine(440.0, sr, 0.5, 2), sr, subtype=subtype)

    info = audio_info(path)

    assert (info.sample_rate, info.channels, info.format) == (sr, 2, fmt)
    assert info.subtype == (subtype or {"mp3": "MPEG_LAYER_III", "ogg": "VORBIS"}[fmt])
    assert abs(info.frames - sr // 2) <= (0 if atol else LOSSY_LENGTH_SLACK)
    assert info.duration == pytest.approx(info.frames / sr)
    with pytest.raises(AttributeError):
        info.frames = 0  # frozen


@pytest.mark.parametrize(("fmt", "subtype", "atol"), FORMAT_CASES)
def test_encode_audio_bytes_decode_back(fmt, subtype, atol):
    sr = 16000
    audio = sine(440.0, sr, 0.5)  # [1, S]

    data = encode_audio(audio[0], sr, fmt, subtype)  # a [S] tensor is mono
    decoded, rate = read_audio(data)

    assert isinstance(data, bytes)
    assert rate == sr
    assert decoded.shape[0] == 1
    if atol is not None:
        torch.testing.assert_close(decoded, audio, atol=atol, rtol=0)
    tolerance = 2 * bin_width(sr, decoded.shape[-1])
    assert dominant_frequency(decoded[0], sr) == pytest.approx(440.0, abs=tolerance)


def test_formats_advertised():
    assert set(READ_FORMATS) == set(WRITE_FORMATS) == {"wav", "flac", "mp3", "ogg"}
    assert SUBTYPES == ("PCM_16", "PCM_24", "FLOAT")


def test_default_subtype_is_pcm16_and_format_overrides_suffix(tmp_path):
    path = write_audio(tmp_path / "tone.bin", sine(440.0, 8000, 0.1), 8000, format="FLAC")
    assert audio_info(path).format == "flac"
    assert audio_info(write_audio(tmp_path / "t.wav", sine(440.0, 8000, 0.1), 8000)).subtype == (
        "PCM_16"
    )


def test_write_clips_to_full_scale(tmp_path):
    loud = torch.tensor([[2.0, -3.0, 0.5, float("nan")]])  # [1, 4]
    decoded, _ = read_audio(write_audio(tmp_path / "loud.wav", loud, 8000, subtype="FLOAT"))
    torch.testing.assert_close(decoded, torch.tensor([[1.0, -1.0, 0.5, 0.0]]))


def test_write_creates_parent_directories(tmp_path):
    path = write_audio(tmp_path / "a" / "b" / "tone.wav", sine(440.0, 8000, 0.1), 8000)
    assert path.is_file()


@pytest.mark.parametrize(("rate", "written"), [(44100, 44100), (96000, 48000), (40000, 44100)])
def test_mp3_resamples_rates_it_cannot_carry(tmp_path, rate, written):
    path = write_audio(tmp_path / "tone.mp3", sine(440.0, rate, 0.5), rate)

    decoded, got_rate = read_audio(path)

    assert got_rate == written in MP3_SAMPLE_RATES
    assert abs(decoded.shape[-1] - written // 2) <= LOSSY_LENGTH_SLACK
    tolerance = 2 * bin_width(written, decoded.shape[-1])
    assert dominant_frequency(decoded[0], written) == pytest.approx(440.0, abs=tolerance)


def test_ogg_keeps_six_channels(tmp_path):
    path = write_audio(tmp_path / "surround.ogg", sine(220.0, 48000, 0.25, channels=6), 48000)
    assert audio_info(path).channels == 6


# ---------------------------------------------------------------------------
# Odd rates and channel counts


@pytest.mark.parametrize("rate", [11025, 22050, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2, 6])
def test_read_resamples_and_mixes_any_rate_and_layout(tmp_path, rate, channels):
    audio = sine(300.0, rate, 0.25, channels)  # [C, S]
    path = write_audio(tmp_path / "odd.wav", audio, rate, subtype="FLOAT")

    native, native_rate = read_audio(path)
    mono, mono_rate = read_audio(path, sample_rate=16000, channels=1)
    stereo, _ = read_audio(path, sample_rate=16000, channels=2)

    assert native_rate == rate and native.shape == (channels, audio.shape[-1])
    assert mono_rate == 16000
    assert mono.shape == (1, math.ceil(audio.shape[-1] * 16000 / rate))
    assert stereo.shape == (2, mono.shape[-1])
    # Mono is the mean of the channels: resampling it equals mixing the resampled file.
    expected = resample(audio.mean(dim=0, keepdim=True), rate, 16000)
    torch.testing.assert_close(mono, expected.clamp(-1, 1), atol=1e-4, rtol=0)
    if channels == 1:
        torch.testing.assert_close(stereo[0], stereo[1])
    assert dominant_frequency(stereo[0], 16000) == pytest.approx(
        300.0, abs=2 * bin_width(16000, stereo.shape[-1])
    )


def test_read_sample_rate_only_keeps_channels(tmp_path):
    path = write_audio(tmp_path / "s.flac", sine(440.0, 22050, 0.2, 2), 22050)
    decoded, rate = read_audio(path, sample_rate=44100)
    assert rate == 44100 and decoded.shape == (2, 8820)


def test_read_rejects_unsupported_channel_request(tmp_path):
    path = write_audio(tmp_path / "s.wav", sine(440.0, 8000, 0.1), 8000)
    with pytest.raises(ValueError, match="channels"):
        read_audio(path, channels=3)


# ---------------------------------------------------------------------------
# Sources: paths, bytes, streams


def test_read_from_bytesio_bytes_and_one_way_stream(tmp_path):
    audio = sine(440.0, 16000, 0.25, 2)
    data = encode_audio(audio, 16000, "flac")

    class OneWay(io.RawIOBase):
        """An upload body that can only be read forward."""

        def __init__(self, payload: bytes):
            self._inner = io.BytesIO(payload)

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            chunk = self._inner.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    for source in (io.BytesIO(data), data, bytearray(data), OneWay(data), str(tmp_path / "x")):
        if isinstance(source, str):
            (tmp_path / "x").write_bytes(data)  # a path without a suffix works too
        decoded, rate = read_audio(source)
        assert rate == 16000
        torch.testing.assert_close(decoded, audio, atol=1e-4, rtol=0)


def test_stream_position_is_restored_for_a_second_read():
    stream = io.BytesIO(encode_audio(sine(440.0, 16000, 0.25), 16000, "wav"))
    assert audio_info(stream).frames == 4000
    assert stream.tell() == 0
    assert read_audio(stream)[0].shape == (1, 4000)


# ---------------------------------------------------------------------------
# Broken inputs


def _check_read_error(source, name: str, reason: str) -> None:
    with pytest.raises(AudioError) as caught:
        read_audio(source)
    message = str(caught.value)
    assert name in message and reason in message.lower(), message
    assert "\n" not in message
    with pytest.raises(AudioError, match=name):
        audio_info(source)


def test_missing_file(tmp_path):
    _check_read_error(tmp_path / "nowhere.wav", "nowhere.wav", "not found")


def test_directory_is_not_audio(tmp_path):
    (tmp_path / "folder.wav").mkdir()
    _check_read_error(tmp_path / "folder.wav", "folder.wav", "directory")


def test_zero_length_file(tmp_path):
    (tmp_path / "empty.wav").write_bytes(b"")
    _check_read_error(tmp_path / "empty.wav", "empty.wav", "empty")
    _check_read_error(io.BytesIO(b""), "<audio stream>", "empty")


def test_text_file_renamed_wav(tmp_path):
    (tmp_path / "notes.wav").write_text("these are my notes, not audio\n" * 20)
    _check_read_error(tmp_path / "notes.wav", "notes.wav", "not a recognised audio format")


@pytest.mark.parametrize("fmt", ["wav", "flac"])
@pytest.mark.parametrize("keep", ["half", "header"])
def test_truncated_lossless_file(tmp_path, fmt, keep):
    data = encode_audio(sine(440.0, 16000, 0.5, 2), 16000, fmt, "PCM_16")
    cut = len(data) // 2 if keep == "half" else 44  # 44 bytes: a WAV header, a FLAC's first blocks
    (tmp_path / f"cut.{fmt}").write_bytes(data[:cut])
    with pytest.raises(AudioError, match=f"cut.{fmt}") as caught:
        read_audio(tmp_path / f"cut.{fmt}")
    assert any(word in str(caught.value) for word in ("truncated", "malformed", "corrupt"))


def test_truncated_mp3_and_ogg(tmp_path):
    for fmt in ("mp3", "ogg"):
        data = encode_audio(sine(440.0, 16000, 1.0), 16000, fmt)
        (tmp_path / f"cut.{fmt}").write_bytes(data[: len(data) // 2])
        with pytest.raises(AudioError, match=f"cut.{fmt}"):
            read_audio(tmp_path / f"cut.{fmt}")


def test_random_bytes_are_not_audio():
    noise = torch.Generator().manual_seed(0)
    payload = torch.randint(0, 256, (4096,), generator=noise, dtype=torch.uint8).numpy().tobytes()
    with pytest.raises(AudioError, match="audio bytes"):
        read_audio(payload)


@pytest.mark.parametrize(
    ("filename", "kwargs", "reason"),
    [
        ("song.xyz", {}, "unsupported format 'xyz'"),
        ("song", {}, "no file suffix"),
        ("song.wav", {"format": "aac"}, "unsupported format 'aac'"),
        ("song.flac", {"subtype": "FLOAT"}, "no subtype 'FLOAT'"),
        ("song.wav", {"subtype": "PCM_12"}, "no subtype 'PCM_12'"),
    ],
)
def test_write_refuses_unknown_format_or_subtype(tmp_path, filename, kwargs, reason):
    with pytest.raises(AudioError, match=reason) as caught:
        write_audio(tmp_path / filename, sine(440.0, 8000, 0.1), 8000, **kwargs)
    assert filename in str(caught.value)
    assert isinstance(caught.value, MusicGenError)
    assert os.listdir(tmp_path) == []


def test_encode_refuses_unknown_format():
    with pytest.raises(AudioError, match="unsupported format 'xyz'"):
        encode_audio(sine(440.0, 8000, 0.1), 8000, "xyz")


def test_write_refuses_audio_a_format_cannot_hold(tmp_path):
    with pytest.raises(AudioError, match="at most 2 channels"):
        write_audio(tmp_path / "wide.mp3", sine(440.0, 48000, 0.1, 6), 48000)
    with pytest.raises(AudioError, match="no samples"):
        write_audio(tmp_path / "nothing.flac", torch.zeros(1, 0), 48000)
    with pytest.raises(ValueError, match="shape"):
        write_audio(tmp_path / "batch.wav", torch.zeros(2, 1, 100), 48000)
    assert os.listdir(tmp_path) == []


def test_failed_write_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = write_audio(tmp_path / "take.wav", sine(440.0, 8000, 0.1), 8000)
    before = path.read_bytes()

    def fail_halfway(file, *args, **kwargs):
        file.write(b"RIFF partial")  # some bytes reach the disk, then the disk fills up
        raise sf.SoundFileRuntimeError("No space left on device")

    monkeypatch.setattr(audio_io.sf, "write", fail_halfway)
    with pytest.raises(AudioError, match="take.wav.*No space left"):
        write_audio(path, sine(880.0, 8000, 0.1), 8000)
    with pytest.raises(AudioError, match="new.wav"):
        write_audio(tmp_path / "new.wav", sine(880.0, 8000, 0.1), 8000)

    assert sorted(os.listdir(tmp_path)) == ["take.wav"]  # no temp files, no new.wav
    assert path.read_bytes() == before


def test_write_onto_a_directory_fails_cleanly(tmp_path):
    (tmp_path / "taken.wav").mkdir()
    with pytest.raises(AudioError, match="taken.wav"):
        write_audio(tmp_path / "taken.wav", sine(440.0, 8000, 0.1), 8000)
    assert os.listdir(tmp_path) == ["taken.wav"]


# ---------------------------------------------------------------------------
# Transforms


def test_resample_is_a_no_op_at_equal_rates():
    audio = sine(440.0, 16000, 0.1)
    assert resample(audio, 16000, 16000) is audio


@pytest.mark.parametrize(("orig", "new"), [(44100, 16000), (16000, 48000), (44101, 16000)])
def test_resample_keeps_frequency_and_length(orig, new):
    # 44101 Hz is coprime with 16000 Hz: a sinc kernel would need gigabytes.
    audio = sine(440.0, orig, 0.5, 2)  # [2, S]
    out = resample(audio, orig, new)  # [2, S']
    assert out.shape == (2, math.ceil(audio.shape[-1] * new / orig))
    assert dominant_frequency(out[0], new) == pytest.approx(440.0, abs=2 * bin_width(new, 8000))
    # A clean band-limited sine stays a clean sine of the same level.
    assert out[:, 100:-100].abs().max() == pytest.approx(0.5, abs=0.02)


def test_to_channels():
    stereo = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # [2, 2]
    torch.testing.assert_close(to_channels(stereo, 1), torch.tensor([[0.5, 0.5]]))
    torch.testing.assert_close(to_channels(stereo[:1], 2), torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert to_channels(stereo, 2) is stereo
    surround = torch.eye(6)  # [6, 6]: channel c is a click at sample c
    down = to_channels(surround, 2)  # [2, 6]
    assert down.shape == (2, 6)
    assert down[:, 3].abs().sum() == 0  # LFE dropped
    assert down[0, 0] > 0 and down[0, 1] == 0 and down[1, 1] > 0  # left stays left
    assert down[0, 2] == down[1, 2] > 0  # centre goes to both sides
    assert down.sum(dim=1).max() <= 1.0 + 1e-6
    batch = torch.rand(3, 2, 10)  # [B, C, S]
    assert to_channels(batch, 1).shape == (3, 1, 10)
    with pytest.raises(ValueError):
        to_channels(stereo, 6)


def test_peak_normalize():
    audio = sine(440.0, 16000, 0.25, 2) * 0.1
    out = peak_normalize(audio)
    assert out.abs().max().item() == pytest.approx(0.95)
    assert peak_normalize(audio, peak=0.5).abs().max().item() == pytest.approx(0.5)
    silence = torch.zeros(2, 1000)
    assert torch.equal(peak_normalize(silence), silence)
    batch = torch.stack([audio, torch.zeros_like(audio), audio * 5])  # [3, 2, S]: clip by clip
    peaks = peak_normalize(batch).abs().amax(dim=(1, 2))
    torch.testing.assert_close(peaks, torch.tensor([0.95, 0.0, 0.95]))
    assert peak_normalize(torch.zeros(1, 0)).shape == (1, 0)


@pytest.mark.parametrize("kind", ["sine", "noise"])
@pytest.mark.parametrize("target", [-14.0, -23.0])
def test_loudness_normalize_lands_on_target(kind, target):
    sr = 16000
    if kind == "sine":
        audio = sine(1000.0, sr, 2.0, 2) * 0.05
    else:
        audio = 0.02 * torch.randn(2, 2 * sr, generator=torch.Generator().manual_seed(0))
    out = loudness_normalize(audio, sr, target)
    assert AF.loudness(out, sr).item() == pytest.approx(target, abs=1.0)
    assert out.abs().max() <= 1.0


def test_loudness_normalize_never_goes_past_full_scale():
    sr = 16000
    noise = 0.01 * torch.randn(1, 2 * sr, generator=torch.Generator().manual_seed(1))
    out = loudness_normalize(noise, sr, target_lufs=0.0)  # would need peaks far above 1
    assert out.abs().max().item() == pytest.approx(1.0)


def test_loudness_normalize_leaves_silence_and_short_audio_alone():
    silence = torch.zeros(2, 32000)
    out = loudness_normalize(silence, 16000)
    assert torch.equal(out, silence)
    short = sine(440.0, 16000, 0.2)  # under one 400 ms block
    assert torch.equal(loudness_normalize(short, 16000), short)
    mono = sine(1000.0, 16000, 1.0)[0] * 0.05  # [S] works too
    assert loudness_normalize(mono, 16000).shape == mono.shape


def test_loudness_normalize_six_channels():
    audio = sine(1000.0, 16000, 1.0, 6) * 0.05  # torchaudio itself stops at 5 channels
    out = loudness_normalize(audio, 16000, -20.0)
    assert out.shape == audio.shape and torch.isfinite(out).all()
    assert out.abs().max() > audio.abs().max()


def test_is_silent():
    assert is_silent(torch.zeros(2, 1000))
    assert is_silent(torch.zeros(1, 0))
    assert is_silent(sine(440.0, 16000, 0.1) * 1e-4)  # about -83 dBFS
    assert not is_silent(sine(440.0, 16000, 0.1) * 0.1)  # about -23 dBFS
    assert is_silent(sine(440.0, 16000, 0.1) * 0.1, threshold_db=-10.0)
