"""Stereo as MusicGen has it: interleaved left/right codebooks over one mono codec."""

import json

import pytest
import torch

from music_gen import MusicGen
from music_gen.audio import audio_info, read_audio
from music_gen.cli import main
from music_gen.errors import CheckpointError, ConfigError
from music_gen.models import formats
from music_gen.models.codebooks import tiny_calibrated_codec
from music_gen.models.codec import build_codec, load_codec
from music_gen.models.patterns import build_delay, revert_delay, valid_mask
from music_gen.models.stereo import StereoCodec
from tests.helpers import sine, tiny_codec_config, tiny_model_config

pytestmark = pytest.mark.unit


def _stereo_musicgen(seed: int = 0) -> MusicGen:
    torch.manual_seed(seed)
    codec = tiny_calibrated_codec(cardinality=64, channels=2)  # decodes codes apart
    return MusicGen.from_config(tiny_model_config(num_codebooks=8), codec)


def test_interleaved_delay_pattern_shares_a_delay_per_level():
    codes = torch.arange(4 * 3).view(1, 4, 3)  # [B, K=4 (2 levels x 2 channels), T=3]
    delayed = build_delay(codes, -1, channels=2)
    assert delayed.shape == (1, 4, 4)  # T + K/2 - 1
    assert delayed[0, :2, 0].tolist() == [0, 3] and delayed[0, 2:, 0].tolist() == [-1, -1]
    assert delayed[0, 2:, 1].tolist() == [6, 9]
    assert torch.equal(revert_delay(delayed, channels=2), codes)
    assert torch.equal(valid_mask(4, 4, channels=2), delayed[0] != -1)


def test_stereo_codec_codes_each_channel_with_the_mono_codec(tmp_path):
    stereo = tiny_calibrated_codec(cardinality=64, channels=2)
    assert isinstance(stereo, StereoCodec) and stereo.channels == 2 and stereo.num_codebooks == 8
    rate = stereo.sample_rate
    audio = torch.cat([sine(220, 0.5, rate), sine(880, 0.5, rate)])[None]  # [1, 2, S]
    codes = stereo.encode(audio)  # [1, 8, T]
    assert torch.equal(codes[:, ::2], stereo.mono.encode(audio[:, :1]))
    assert torch.equal(codes[:, 1::2], stereo.mono.encode(audio[:, 1:]))
    assert not torch.equal(codes[:, ::2], codes[:, 1::2])  # the two channels differ
    decoded = stereo.decode(codes)
    assert decoded.shape == (1, 2, codes.shape[-1] * stereo.hop_length)
    again = load_codec(stereo.save(tmp_path / "codec"))
    assert isinstance(again, StereoCodec) and torch.equal(again.encode(audio), codes)


def test_stereo_model_generates_two_channels_and_round_trips(tmp_path):
    model = _stereo_musicgen()
    assert model.lm.cfg.audio_channels == 2
    codes = model.generate_codes(["a duet"], duration=0.3, seed=1)
    assert codes.shape == (1, 8, 15)
    audio = model.decode(codes)
    assert audio.shape == (1, 2, 15 * model.codec.hop_length)
    model.save_pretrained(tmp_path / "ckpt")
    assert formats.read_meta(tmp_path / "ckpt")["lm"]["audio_channels"] == 2
    again = MusicGen.from_pretrained(tmp_path / "ckpt")
    assert torch.equal(again.generate_codes(["a duet"], duration=0.3, seed=1), codes)


def test_stereo_checkpoint_with_a_mono_codec_is_one_error(tmp_path):
    model = _stereo_musicgen()
    model.save_pretrained(tmp_path / "ckpt")
    # swap in a mono codec of the same codebook count (8): only the channels differ
    build_codec(tiny_codec_config(num_codebooks=8)).save(tmp_path / "ckpt" / formats.CODEC_DIR)
    spec = json.loads((tmp_path / "ckpt" / formats.CODEC_DIR / "codec.json").read_text())
    assert "interleaved_channels" not in spec
    with pytest.raises(CheckpointError, match="stereo.*codec is mono"):
        MusicGen.from_pretrained(tmp_path / "ckpt")


def test_channels_2_for_a_codec_that_is_stereo_itself_is_refused():
    from types import SimpleNamespace

    from music_gen.models.codec import _with_channels

    with pytest.raises(ConfigError, match="already has 2 channels"):
        _with_channels(SimpleNamespace(channels=2), 2)  # e.g. encodec's 48 kHz model


def test_generate_writes_two_channel_files(tmp_path, capsys):
    ckpt = _stereo_musicgen().save_pretrained(tmp_path / "ckpt")
    out = tmp_path / "duet.flac"
    code = main(
        ["generate", "a duet", "--model", str(ckpt), "--duration", "0.4", "-o", str(out)]
        + ["--format", "flac", "--seed", "0"]
    )
    assert code == 0, capsys.readouterr().err
    info = audio_info(out)
    assert info.channels == 2 and info.format == "flac"
    audio, _ = read_audio(out)
    assert audio.shape[0] == 2 and not torch.equal(audio[0], audio[1])
