"""Codec backends: shapes and frame counts, save/load, calibration, load errors."""

from __future__ import annotations

import json
import math

import huggingface_hub.constants
import pytest
import soundfile
import torch

from music_gen.config import CodecConfig
from music_gen.errors import AudioError, CheckpointError, ConfigError, MusicGenError, UsageError
from music_gen.models.codebooks import (
    calibrate_codec,
    calibrate_from_files,
    kmeans,
    tiny_calibrated_codec,
)
from music_gen.models.codec import (
    Codec,
    EncodecPackageCodec,
    TransformersCodec,
    build_codec,
    load_codec,
)

pytestmark = pytest.mark.unit


def tone(freq: float, seconds: float, sample_rate: int, channels: int = 1, kind: str = "sine"):
    t = torch.arange(int(seconds * sample_rate)) / sample_rate  # [S]
    wave = torch.sin(2 * math.pi * freq * t)
    if kind == "square":
        wave = torch.sign(wave)
    return (0.4 * wave).expand(1, channels, -1).clone()  # [1, C, S]


def noise(seconds: float, sample_rate: int, channels: int = 1, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return 0.3 * torch.randn(
        1, channels, int(seconds * sample_rate), generator=generator
    )  # [1, C, S]


def code_histogram(codes, cardinality: int):
    counts = torch.bincount(codes[0, 0], minlength=cardinality).float()  # [card]
    return counts / counts.sum()


@pytest.fixture(scope="module")
def tiny():
    return tiny_calibrated_codec(seed=0)


@pytest.fixture(scope="module")
def random_tiny():
    return build_codec(CodecConfig(backend="transformers", preset="tiny"))


@pytest.fixture(scope="module")
def encodec24():
    codec = build_codec(CodecConfig(backend="encodec", sample_rate=24_000, bandwidth=1.5))
    clips = [tone(f, 0.5, 24_000) for f in (110, 440, 1760)] + [noise(0.5, 24_000)]
    return calibrate_codec(codec, clips, iters=5)


@pytest.fixture(scope="module")
def encodec48():
    return build_codec(CodecConfig(backend="encodec", sample_rate=48_000, bandwidth=3.0))


@pytest.fixture()
def offline_hub(monkeypatch):
    # The hub is unreachable here; offline mode fails at once instead of retrying for ~20 s.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


# --- shapes and frame counts -------------------------------------------------


def test_attributes(tiny, encodec24, encodec48):
    assert (tiny.backend, tiny.sample_rate, tiny.channels, tiny.hop_length) == (
        "transformers",
        16_000,
        1,
        320,
    )
    assert (tiny.frame_rate, tiny.num_codebooks, tiny.cardinality) == (50.0, 4, 256)
    assert (encodec24.backend, encodec24.sample_rate, encodec24.channels) == ("encodec", 24_000, 1)
    assert (encodec24.frame_rate, encodec24.num_codebooks, encodec24.cardinality) == (75.0, 2, 1024)
    assert (encodec48.sample_rate, encodec48.channels, encodec48.frame_rate) == (48_000, 2, 150.0)
    assert encodec48.num_codebooks == 2
    for codec in (tiny, encodec24, encodec48):
        assert isinstance(codec, Codec)


@pytest.mark.parametrize("hops", [0.01, 0.99, 1.01, 7.5])
@pytest.mark.parametrize("name", ["tiny", "encodec24", "encodec48"])
def test_round_trip_shapes(name, hops, request):
    codec = request.getfixturevalue(name)
    samples = max(1, int(hops * codec.hop_length))
    audio = torch.randn(3, codec.channels, samples) * 0.1  # [B, C, S]
    codes = codec.encode(audio)  # [B, K, T]
    frames = math.ceil(samples / codec.hop_length)
    assert codes.shape == (3, codec.num_codebooks, frames)
    assert codes.dtype == torch.long
    assert codes.min() >= 0 and codes.max() < codec.cardinality
    decoded = codec.decode(codes)  # [B, C, T * hop]
    assert decoded.shape == (3, codec.channels, frames * codec.hop_length)
    assert decoded.dtype == torch.float32
    latents = codec.latents(audio)  # [B, D, T]
    assert latents.shape[0] == 3 and latents.shape[-1] == frames


def test_one_second_of_tiny(tiny):
    codes = tiny.encode(torch.randn(2, 1, 16_000) * 0.1)
    assert codes.shape == (2, 4, 50)
    assert tiny.decode(codes).shape == (2, 1, 16_000)


@pytest.mark.slow
def test_encodec48_spans_segments(encodec48):
    # 48 kHz encodes 1 s segments (150 frames each); the codes simply concatenate.
    audio = noise(1.2, 48_000, channels=2)  # [1, 2, 57600]
    codes = encodec48.encode(audio)
    assert codes.shape == (1, 2, 180)
    assert encodec48.decode(codes).shape == (1, 2, 180 * 320)
    assert encodec48.latents(audio).shape[-1] == 180


@pytest.mark.slow
def test_musicgen_preset_is_encodec_32khz():
    codec = build_codec(CodecConfig(backend="transformers", preset="musicgen"))
    assert (codec.sample_rate, codec.channels, codec.hop_length, codec.frame_rate) == (
        32_000,
        1,
        640,
        50.0,
    )
    assert (codec.num_codebooks, codec.cardinality) == (4, 2048)
    assert codec.encode(torch.zeros(1, 1, 3200)).shape == (1, 4, 5)


def test_codes_are_ordinary_tensors_and_codec_stays_frozen(tiny):
    codes = tiny.encode(noise(0.1, 16_000))
    assert not codes.is_inference()  # usable as embedding indices in a training step
    embedding = torch.nn.Embedding(tiny.cardinality, 4)
    embedding(codes).sum().backward()
    tiny.train()
    assert not tiny.training and not tiny.model.training
    assert not any(p.requires_grad for p in tiny.parameters())


# --- calibration -------------------------------------------------------------


def test_random_codec_encodes_everything_to_zero(random_tiny, encodec48):
    # EnCodec's codebooks start at zero and are filled by k-means in training, so an
    # uncalibrated codec maps every sound to code 0.
    for codec in (random_tiny, encodec48):
        sr, ch = codec.sample_rate, codec.channels
        for audio in (tone(220, 0.2, sr, ch), noise(0.2, sr, ch), tone(880, 0.2, sr, ch, "square")):
            assert codec.encode(audio).eq(0).all()


def test_calibrated_codec_tells_sounds_apart(tiny):
    sounds = [tone(220, 2.0, 16_000), noise(2.0, 16_000), tone(880, 2.0, 16_000, kind="square")]
    codes = [tiny.encode(audio) for audio in sounds]
    histograms = [code_histogram(c, tiny.cardinality) for c in codes]
    for i in range(3):
        for j in range(i + 1, 3):
            assert torch.minimum(histograms[i], histograms[j]).sum() < 0.5
    # Every codebook is in use, not only the first.
    assert all(codes[1][0, k].unique().numel() > 4 for k in range(tiny.num_codebooks))
    assert torch.equal(tiny.encode(sounds[0]), codes[0])


def test_calibration_is_deterministic(tiny):
    again = tiny_calibrated_codec(seed=0)
    audio = noise(0.5, 16_000, seed=3)
    assert torch.equal(again.encode(audio), tiny.encode(audio))
    assert torch.equal(
        again.model.quantizer.layers[2].codebook.embed,
        tiny.model.quantizer.layers[2].codebook.embed,
    )


def test_calibration_marks_codebooks_inited(tiny):
    book = tiny.model.quantizer.layers[0].codebook
    assert book.inited.item() == 1.0
    assert torch.equal(book.embed_avg, book.embed)
    assert book.cluster_size.sum() > 0


@pytest.mark.parametrize("name", ["tiny", "encodec48"])
def test_latents_are_what_encode_quantizes(name, request):
    codec = request.getfixturevalue(name)
    audio = noise(0.3, codec.sample_rate, codec.channels, seed=7)  # [1, C, S]
    if name == "encodec48":  # 48 kHz normalises each segment: a fresh calibrated copy checks it
        codec = build_codec(CodecConfig(backend="encodec", sample_rate=48_000, bandwidth=3.0))
        calibrate_codec(codec, [audio, 0.1 * audio.flip(-1)], iters=2)
    latents = codec.latents(audio)  # [1, D, T]
    quantizer = codec.model.quantizer
    first = quantizer.layers[0] if name == "tiny" else quantizer.vq.layers[0]
    nearest = first.encode(latents)[0]  # [T]: the backend's own codebook 0 lookup
    assert torch.equal(codec.encode(audio)[0, 0], nearest)


def test_kmeans_with_fewer_distinct_vectors_than_centroids():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 5.0], [3.0, 3.0], [-2.0, 1.0]])
    x = points.repeat(40, 1)  # [200, 2]: 5 distinct vectors for 16 centroids
    centroids, counts = kmeans(x, 16, iters=10, generator=torch.Generator().manual_seed(0))
    assert centroids.shape == (16, 2) and counts.sum() == 200
    assert int((counts > 0).sum()) == 5
    for point in points:
        assert (centroids - point).norm(dim=1).min() < 1e-6


def test_kmeans_separates_clusters():
    generator = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = (centers[:, None] + 0.1 * torch.randn(3, 100, 2, generator=generator)).reshape(
        -1, 2
    )  # [300, 2]
    centroids, counts = kmeans(x, 3, iters=20, generator=torch.Generator().manual_seed(1))
    assert sorted(counts.tolist()) == [100, 100, 100]
    for center in centers:
        assert (centroids - center).norm(dim=1).min() < 0.1


def test_calibrate_from_files(tmp_path):
    paths = []
    for i, audio in enumerate([tone(330, 1.5, 16_000), noise(1.0, 16_000)]):
        paths.append(tmp_path / f"clip{i}.wav")
        soundfile.write(paths[-1], audio[0].T.numpy(), 16_000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF not really audio")
    codec = build_codec(
        CodecConfig(backend="transformers", preset="tiny", num_codebooks=2, cardinality=64)
    )
    calibrate_from_files([tmp_path / "broken.wav", *paths], codec)
    assert codec.encode(noise(0.5, 16_000)).unique().numel() > 1
    with pytest.raises(MusicGenError):
        calibrate_from_files([tmp_path / "broken.wav", tmp_path / "missing.wav"], codec)


# --- save and load -----------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny", "encodec24"])
def test_save_load_round_trip(name, request, tmp_path):
    codec = request.getfixturevalue(name)
    codec.save(tmp_path / "codec")
    spec = json.loads((tmp_path / "codec" / "codec.json").read_text())
    assert spec["backend"] == codec.backend
    loaded = load_codec(tmp_path / "codec")
    assert type(loaded) is type(codec)
    audio = noise(0.4, codec.sample_rate, codec.channels)
    codes = codec.encode(audio)
    assert torch.equal(loaded.encode(audio), codes)
    assert torch.equal(loaded.decode(codes), codec.decode(codes))
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))


def test_build_codec_from_source(tiny, tmp_path):
    tiny.save(tmp_path / "codec")
    codec = build_codec(CodecConfig(source=str(tmp_path / "codec")))
    audio = noise(0.2, 16_000)
    assert torch.equal(codec.encode(audio), tiny.encode(audio))


def test_transformers_save_pretrained_dir_loads(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "hf")
    loaded = load_codec(tmp_path / "hf")
    assert isinstance(loaded, TransformersCodec) and loaded.num_codebooks == 4
    audio = noise(0.4, 16_000)
    assert torch.equal(loaded.encode(audio), tiny.encode(audio))


def test_encodec_package_checkpoint_dir(encodec24, tmp_path, monkeypatch):
    checkpoint = tmp_path / "encodec_24khz-d7cc33bc.th"
    torch.save(encodec24.model.state_dict(), checkpoint)
    # Our file cannot match the official checksum that the package checks ...
    with pytest.raises(CheckpointError, match="encodec_24khz"):
        load_codec(tmp_path)
    # ... with the check passed, the package's own loading path reads it.
    monkeypatch.setattr("encodec.model._check_checksum", lambda path, checksum: None)
    with pytest.raises(CheckpointError, match="48000 Hz"):
        load_codec(tmp_path, sample_rate=48_000)
    loaded = load_codec(tmp_path, bandwidth=1.5)
    assert isinstance(loaded, EncodecPackageCodec)
    audio = noise(0.3, 24_000)
    assert torch.equal(loaded.encode(audio), encodec24.encode(audio))


# --- errors ------------------------------------------------------------------


def test_missing_dir(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_codec(tmp_path / "nope" / "codec")
    with pytest.raises(CheckpointError, match="not a codec directory"):
        load_codec(tmp_path)


def test_truncated_weights(tiny, tmp_path):
    directory = tiny.save(tmp_path / "codec")
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_codec(directory)
    weights.unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_codec(directory)


def test_truncated_transformers_dir(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="hf"):
        load_codec(tmp_path / "hf")


def test_unknown_backend_and_mismatched_weights(tiny, encodec24, tmp_path):
    directory = tiny.save(tmp_path / "codec")
    spec = json.loads((directory / "codec.json").read_text())
    (directory / "codec.json").write_text(json.dumps({**spec, "backend": "dac"}))
    with pytest.raises(CheckpointError, match="unknown codec backend 'dac'"):
        load_codec(directory)
    (directory / "codec.json").write_text(json.dumps(encodec24.spec()))
    with pytest.raises(CheckpointError, match="do not match"):
        load_codec(directory)
    (directory / "codec.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="codec.json"):
        load_codec(directory)


def test_unreachable_hub_id(offline_hub):
    with pytest.raises(CheckpointError, match="facebook/encodec_32khz"):
        load_codec("facebook/encodec_32khz")


def test_bad_settings():
    with pytest.raises(ConfigError, match="bandwidth"):
        build_codec(CodecConfig(backend="encodec", bandwidth=5.0))
    with pytest.raises(ConfigError, match="sample_rate"):
        build_codec(CodecConfig(backend="encodec", sample_rate=44_100))
    with pytest.raises(ConfigError, match="power of 2"):
        build_codec(CodecConfig(preset="tiny", cardinality=300))


def test_bad_inputs(tiny):
    with pytest.raises(AudioError, match="channel"):
        tiny.encode(torch.zeros(1, 2, 320))
    with pytest.raises(AudioError):
        tiny.encode(torch.zeros(320))
    with pytest.raises(UsageError, match="codes must lie"):
        tiny.decode(torch.full((1, 4, 3), 256))
    with pytest.raises(UsageError, match="frames"):
        tiny.decode(torch.zeros(1, 3, 5, dtype=torch.long))
