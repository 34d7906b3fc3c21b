"""Our greedy codes equal transformers' own MusicGen ``generate(do_sample=False)``."""

import pytest
import torch

from music_gen import MusicGen

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
}


def _transformers_musicgen(spec, directory):
    from transformers import (
        ByT5Tokenizer,
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    torch.manual_seed(0)
    text = T5Config(
        vocab_size=384,
        d_model=spec["text_dim"],
        d_kv=8,
        d_ff=2 * spec["text_dim"],
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
    )
    # 16 kHz, hop 320 -> 50 Hz; at K * 0.5 kbps the codec has K quantizers of 9-10 bits
    bits = spec["codebooks"] * 0.5
    codec = EncodecConfig(
        sampling_rate=16000,
        audio_channels=1,
        num_filters=4,
        hidden_size=16,
        upsampling_ratios=[8, 5, 4, 2],
        codebook_size=spec["card"],
        codebook_dim=16,
        target_bandwidths=[bits],
        num_lstm_layers=1,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=spec["card"],
        hidden_size=spec["dim"],
        num_hidden_layers=spec["layers"],
        num_attention_heads=spec["heads"],
        ffn_dim=2 * spec["dim"],
        num_codebooks=spec["codebooks"],
        max_position_embeddings=256,
        pad_token_id=spec["card"],
        bos_token_id=spec["card"],
    )
    config = MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder)
    model = MusicgenForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    ByT5Tokenizer().save_pretrained(directory)
    return model, ByT5Tokenizer()


def _transformers_codes(model, tokenizer, prompts, guidance, steps):
    """Run transformers' generate and catch the codes it hands to the codec."""
    captured = {}
    decode = type(model.audio_encoder).decode.__get__(model.audio_encoder)

    def spy(audio_codes, *args, **kwargs):
        captured["codes"] = audio_codes
        return decode(audio_codes, *args, **kwargs)

    model.audio_encoder.decode = spy
    inputs = tokenizer(prompts, padding=True, return_tensors="pt")
    model.generate(**inputs, do_sample=False, guidance_scale=guidance, max_new_tokens=steps)
    return captured["codes"][0]  # [B, K, T]


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_greedy_codes_equal_transformers(name, guidance, tmp_path):
    spec = CONFIGS[name]
    hf, tokenizer = _transformers_musicgen(spec, tmp_path)
    ours = MusicGen.from_pretrained(tmp_path)
    prompts = ["upbeat jazz with saxophone", "slow piano"]
    steps = 24
    expected = _transformers_codes(hf, tokenizer, prompts, guidance, steps)
    frames = steps + 1 - spec["codebooks"]
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
