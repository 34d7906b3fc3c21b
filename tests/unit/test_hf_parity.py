"""Our greedy codes equal transformers' own MusicGen ``generate(do_sample=False)``."""

import pytest
import torch

from music_gen import MusicGen
from music_gen.testing import transformers_musicgen

pytestmark = pytest.mark.unit

CONFIGS = {
    # text width differs from the decoder's: the checkpoint has a projection
    "projected": {"text_dim": 32, "dim": 48, "layers": 2, "heads": 4, "codebooks": 4, "card": 512},
    # equal widths, no projection; more codebooks and heads
    "unprojected": {
        "text_dim": 64,
        "dim": 64,
        "layers": 3,
        "heads": 8,
        "codebooks": 8,
        "card": 1024,
    },
    # stereo: 2 x 4 interleaved codebooks over one mono codec of 4
    "stereo": {
        "text_dim": 32,
        "dim": 48,
        "layers": 2,
        "heads": 4,
        "codebooks": 8,
        "card": 512,
        "channels": 2,
    },
}


def _transformers_musicgen(spec, directory):
    # 16 kHz, hop 320 -> 50 Hz; at K * 0.5 kbps the codec has K quantizers of 9-10 bits
    channels = spec.get("channels", 1)
    return transformers_musicgen(
        directory,
        text={
            "d_model": spec["text_dim"], "d_ff": 2 * spec["text_dim"], "num_layers": 2,
            "num_heads": 4, "feed_forward_proj": "gated-gelu",
        },
        codec={
            "codebook_size": spec["card"],
            "target_bandwidths": [spec["codebooks"] // channels * 0.5],
        },
        decoder={
            "vocab_size": spec["card"], "hidden_size": spec["dim"],
            "num_hidden_layers": spec["layers"], "num_attention_heads": spec["heads"],
            "ffn_dim": 2 * spec["dim"], "num_codebooks": spec["codebooks"],
            "max_position_embeddings": 256, "audio_channels": channels,
        },
    )  # fmt: skip


def _transformers_codes(model, tokenizer, prompts, guidance, steps, **extra):
    """Run transformers' generate and catch the codes it hands to the codec (stereo models
    decode the left codebooks, then the right: interleaved back as the decoder has them)."""
    captured = []
    decode = type(model.audio_encoder).decode.__get__(model.audio_encoder)

    def spy(audio_codes, *args, **kwargs):
        captured.append(audio_codes[0])  # [B, K, T]
        return decode(audio_codes, *args, **kwargs)

    model.audio_encoder.decode = spy
    inputs = tokenizer(prompts, padding=True, return_tensors="pt")
    model.generate(
        **inputs, do_sample=False, guidance_scale=guidance, max_new_tokens=steps, **extra
    )
    if len(captured) == 2:
        return torch.stack(captured, dim=2).flatten(1, 2)  # [B, 2K, T], left first per level
    return captured[0]  # [B, K, T]


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_greedy_codes_equal_transformers(name, guidance, tmp_path):
    spec = CONFIGS[name]
    hf, tokenizer = _transformers_musicgen(spec, tmp_path)
    ours = MusicGen.from_pretrained(tmp_path)
    prompts = ["upbeat jazz with saxophone", "slow piano"]
    steps = 24
    expected = _transformers_codes(hf, tokenizer, prompts, guidance, steps)
    frames = steps + 1 - spec["codebooks"] // spec.get("channels", 1)
    codes = ours.generate_codes(
        prompts, duration=frames / ours.frame_rate, top_k=1, guidance_scale=guidance
    )
    assert codes.shape == expected.shape
    assert torch.equal(codes, expected)


def test_imported_model_saves_as_ours_and_reloads(tmp_path):
    _transformers_musicgen(CONFIGS["projected"], tmp_path / "hf")
    ours = MusicGen.from_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "ours")
    again = MusicGen.from_pretrained(tmp_path / "ours")
    a = ours.generate_codes(["jazz"], duration=0.2, seed=3)
    assert torch.equal(a, again.generate_codes(["jazz"], duration=0.2, seed=3))


def test_stereo_audio_equals_transformers(tmp_path):
    hf, tokenizer = _transformers_musicgen(CONFIGS["stereo"], tmp_path)
    ours = MusicGen.from_pretrained(tmp_path)
    inputs = tokenizer(["a duet"], return_tensors="pt")
    expected = hf.generate(**inputs, do_sample=False, guidance_scale=3.0, max_new_tokens=12)
    codes = ours.generate_codes(["a duet"], duration=9 / ours.frame_rate, top_k=1)
    audio = ours.decode(codes)
    assert audio.shape == expected.shape and audio.shape[1] == 2  # [B, 2, samples]
    torch.testing.assert_close(audio, expected)


# -- MusicGen-Melody ---------------------------------------------------------------

MELODY = {"text_dim": 32, "dim": 48, "layers": 2, "heads": 4, "codebooks": 4, "card": 512}
CHROMA = {"sampling_rate": 16000, "n_fft": 1024, "hop_length": 320}  # 50 Hz, the codec's rate


def _transformers_melody(spec, directory, chroma_length=24):
    """A tiny random MusicGen-Melody saved with its tokenizer and feature extractor."""
    from transformers import (
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyFeatureExtractor,
        MusicgenMelodyForConditionalGeneration,
    )

    # the mono builder's sub-configs; the decoder is MusicGen-Melody's own (no cross-attention)
    mono = _transformers_musicgen(spec, directory / "mono")[0].config
    torch.manual_seed(1)
    decoder = MusicgenMelodyDecoderConfig(**{
        key: getattr(mono.decoder, key)
        for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                    "ffn_dim", "num_codebooks", "max_position_embeddings", "pad_token_id",
                    "bos_token_id", "audio_channels")
    })  # fmt: skip
    config = MusicgenMelodyConfig(
        text_encoder=mono.text_encoder,
        audio_encoder=mono.audio_encoder,
        decoder=decoder,
        chroma_length=chroma_length,
    )
    model = MusicgenMelodyForConditionalGeneration(config).eval()
    with torch.no_grad():  # a loud melody projection, so that the melody changes the codes
        model.audio_enc_to_dec_proj.weight.normal_(0.0, 2.0)
    model.save_pretrained(directory)
    from transformers import ByT5Tokenizer

    ByT5Tokenizer().save_pretrained(directory)
    extractor = MusicgenMelodyFeatureExtractor(**CHROMA)
    extractor.save_pretrained(directory)
    return model, ByT5Tokenizer(), extractor


def _melody_audio(seconds=0.3, rate=16000):
    from tests.helpers import sine

    half = int(seconds * rate / 2)
    a4, e5 = sine(440.0, seconds, rate)[0, :half], sine(659.25, seconds, rate)[0, :half]
    return torch.cat([a4, e5])  # [S]: A then E


def test_chroma_equals_transformers_feature_extractor():
    from transformers import MusicgenMelodyFeatureExtractor

    from music_gen.models.melody import ChromaSettings, chromagram

    extractor = MusicgenMelodyFeatureExtractor(**CHROMA)
    audio = _melody_audio()
    expected = extractor(audio[None], sampling_rate=16000, return_tensors="pt").input_features
    settings = ChromaSettings(sample_rate=16000, n_fft=1024, hop_length=320)
    assert torch.equal(chromagram(audio[None], settings), expected)  # [1, T, 12]


@pytest.mark.parametrize("guidance", [1.0, 3.0])
@pytest.mark.parametrize("with_melody", [True, False])
def test_melody_greedy_codes_equal_transformers(guidance, with_melody, tmp_path):
    hf, tokenizer, extractor = _transformers_melody(MELODY, tmp_path)
    ours = MusicGen.from_pretrained(tmp_path)
    assert ours.has_melody and not ours.lm.cfg.cross_attention
    prompts = ["upbeat jazz with saxophone", "slow piano"]
    audio = _melody_audio()  # 0.3 s: 16 chroma frames, looped to 24 by both
    extra = {}
    if with_melody:
        extra["input_features"] = extractor(
            torch.stack([audio, audio]), sampling_rate=16000, return_tensors="pt"
        ).input_features
    steps = 20
    expected = _transformers_codes(hf, tokenizer, prompts, guidance, steps, **extra)
    frames = steps + 1 - MELODY["codebooks"]
    codes = ours.generate_codes(
        prompts,
        duration=frames / ours.frame_rate,
        top_k=1,
        guidance_scale=guidance,
        melody=audio if with_melody else None,
        melody_sample_rate=16000,
    )
    assert torch.equal(codes, expected)
    if with_melody:  # the melody did steer the codes
        plain = ours.generate_codes(prompts, duration=frames / ours.frame_rate, top_k=1,
                                    guidance_scale=guidance)  # fmt: skip
        assert not torch.equal(codes, plain)


def test_imported_melody_model_saves_as_ours_and_reloads(tmp_path):
    _transformers_melody(MELODY, tmp_path / "hf")
    ours = MusicGen.from_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "ours")
    again = MusicGen.from_pretrained(tmp_path / "ours")
    assert again.has_melody and again.conditioner.melody == ours.conditioner.melody
    melody = {"melody": _melody_audio(), "melody_sample_rate": 16000}
    a = ours.generate_codes(["jazz"], duration=0.2, seed=3, **melody)
    assert torch.equal(a, again.generate_codes(["jazz"], duration=0.2, seed=3, **melody))


def test_stereo_melody_greedy_codes_equal_transformers(tmp_path):
    spec = {**MELODY, "codebooks": 8, "channels": 2}  # as facebook/musicgen-stereo-melody
    hf, tokenizer, extractor = _transformers_melody(spec, tmp_path)
    ours = MusicGen.from_pretrained(tmp_path)
    assert ours.lm.cfg.audio_channels == 2 and ours.has_melody
    audio = _melody_audio()
    features = extractor(audio[None], sampling_rate=16000, return_tensors="pt").input_features
    steps = 16
    expected = _transformers_codes(hf, tokenizer, ["duet"], 3.0, steps, input_features=features)
    frames = steps + 1 - 4
    codes = ours.generate_codes(
        ["duet"], duration=frames / ours.frame_rate, top_k=1, melody=audio, melody_sample_rate=16000
    )
    assert codes.shape == (1, 8, frames) and torch.equal(codes, expected)
