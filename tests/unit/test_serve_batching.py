"""generate_batch and the streaming helpers, in process (no Ray)."""

from __future__ import annotations

import pytest
import torch

from music_gen.audio import read_audio
from music_gen.serve import batching
from music_gen.serve.batching import (
    decode_frames,
    generate_batch,
    pcm16,
    stream_chunks,
    wav_stream_header,
)
from tests.helpers import tiny_model_config

pytestmark = pytest.mark.unit
DEFAULTS = {"temperature": 1.0, "top_k": 250, "top_p": 0.0, "guidance_scale": 3.0}


@pytest.fixture(scope="module")
def model():
    from music_gen import MusicGen
    from music_gen.models.codebooks import tiny_calibrated_codec

    torch.manual_seed(0)
    return MusicGen.from_config(tiny_model_config(), tiny_calibrated_codec(cardinality=64))


def request(prompt: str, duration: float = 0.4, **fields) -> dict:
    return {**DEFAULTS, "prompt": prompt, "duration": duration, **fields}


def test_rows_are_cut_to_their_own_duration(model):
    results = generate_batch(model, [request("a", 0.2), request("b", 0.5), request("c", 0.3)])
    assert [r.audio.shape[-1] for r in results] == [3200, 8000, 4800]
    assert [r.batch_size for r in results] == [3, 3, 3]
    assert all(r.seed >= 0 and r.error is None for r in results)


def test_seed_is_exact_alone_and_in_a_batch_with_other_settings(model):
    ours = request("ours", 0.4, seed=7, top_k=20, temperature=0.8, guidance_scale=2.0)
    alone = generate_batch(model, [ours])[0].audio
    mates = [request("x", 0.4, seed=1, top_k=5), request("y", 0.4, seed=2, top_p=0.9)]
    batched = generate_batch(model, [*mates, request("z", 0.4, seed=3, top_k=20), ours])
    assert torch.equal(batched[-1].audio, alone)
    assert batched[-1].batch_size == 4  # one call: neighbours' settings cannot change a row


def test_seed_is_exact_across_durations_in_the_engine(model):
    ours = request("ours", 0.3, seed=11)
    alone = generate_batch(model, [ours])[0].audio
    batched = generate_batch(model, [request("long", 0.6, seed=1), ours])
    assert batched[-1].batch_size == 2 and torch.equal(batched[-1].audio, alone)


def test_seed_is_exact_across_durations_when_not_mixed(model, monkeypatch):
    # The generate_codes fallback (models the engine does not drive, clips past the context)
    monkeypatch.setattr(batching, "_engine_fits", lambda *a: False)
    ours = request("ours", 0.3, seed=11)
    alone = generate_batch(model, [ours])[0].audio
    batched = generate_batch(model, [request("long", 0.6, seed=1), ours], mixed_durations=False)
    assert torch.equal(batched[-1].audio, alone)


def test_a_bad_row_fails_alone(model):
    results = generate_batch(model, [request("fine", 0.2), request("too long", 10_000)])
    assert results[0].error is None and results[0].audio.shape[-1] == 3200
    assert "duration" in results[1].error and results[1].audio is None


def test_stream_chunks_join_to_the_duration(model):
    chunks = list(stream_chunks(model, request("s", 1.0, seed=3), 0.3, 8))
    assert len(chunks) == 4  # new codes at 15, 30, 45, 50 frames; the last 8 wait a step
    assert sum(c.shape[-1] for c, _ in chunks) == 16000
    assert {seed for _, seed in chunks} == {3}


def test_overlap_makes_window_joins_match_one_decode(model):
    codes = model.generate_codes(["join"], duration=1.0, seed=0)  # [1, K, 50]
    whole = model.decode(codes)[0]  # [C, 50 * hop]

    def joined(overlap: int) -> torch.Tensor:
        edges = [0, 12, 25, 37, 50]
        parts = [
            decode_frames(model, codes, a, b, overlap)
            for a, b in zip(edges[:-1], edges[1:], strict=True)
        ]
        return torch.cat(parts, dim=-1)

    assert joined(8).shape == whole.shape
    error_with = (joined(8) - whole).abs().max()
    error_without = (joined(0) - whole).abs().max()
    assert error_with < 0.25 * error_without, (error_with, error_without)


def test_wav_stream_reads_back(model):
    audio = torch.linspace(-1, 1, 1600)[None]  # [1, S]
    data = wav_stream_header(16000, 1) + pcm16(audio[:, :800]) + pcm16(audio[:, 800:])
    decoded, rate = read_audio(data)
    assert rate == 16000 and decoded.shape == (1, 1600)
    assert torch.allclose(decoded, audio, atol=1e-4)


# --- melody uploads ------------------------------------------------------------------------


def _melody_b64(seconds: float, rate: int = 22_050, fmt: str = "flac") -> str:
    import base64

    from music_gen.audio import encode_audio
    from tests.helpers import sine

    return base64.b64encode(encode_audio(sine(392.0, seconds, rate), rate, fmt)).decode()


def test_a_melody_upload_conditions_its_row_and_others_run_without(tmp_path_factory):
    from music_gen import MusicGen
    from tests.unit.test_hf_parity import MELODY, _transformers_melody

    root = tmp_path_factory.mktemp("melody")
    _transformers_melody(MELODY, root / "hf")
    melody_model = MusicGen.from_pretrained(root / "hf")
    tune = _melody_b64(0.5)
    rows = [request("jazz", 0.3, seed=4, melody=tune), request("pop", 0.3, seed=5)]
    with_melody, without = generate_batch(melody_model, rows)
    assert with_melody.error is None and without.error is None
    assert with_melody.audio.shape == without.audio.shape
    # The upload is what the row was conditioned on: the same as the Python API's call.
    audio, _ = read_audio(__import__("base64").b64decode(tune), melody_model.sample_rate)
    direct = melody_model.generate_codes(
        ["jazz"], duration=0.3, seed=4, melody=audio, melody_sample_rate=melody_model.sample_rate
    )
    assert torch.equal(with_melody.audio, melody_model.decode(direct)[0].cpu())
    # Too long, or not audio: that row alone fails, with the reason.
    long, junk, fine = generate_batch(
        melody_model,
        [
            request("a", 0.3, melody=_melody_b64(3.0)),
            request("b", 0.3, melody="bm90IGF1ZGlv"),  # b"not audio"
            request("c", 0.3, seed=5),
        ],
        max_melody_seconds=2.0,
    )
    assert "melody: at most 2 s" in long.error and junk.error.startswith("melody: ")
    assert fine.error is None and torch.equal(fine.audio, without.audio)


def test_a_melody_for_a_model_without_the_conditioner_fails_its_row(model):
    bad, good = generate_batch(model, [request("a", melody=_melody_b64(0.3)), request("b")])
    assert "no melody conditioner" in bad.error and good.error is None


def test_the_schema_takes_base64_melodies_only():
    from pydantic import ValidationError

    from music_gen.serve.schemas import GenerateRequest

    assert GenerateRequest(prompt="x", melody=_melody_b64(0.1)).melody
    with pytest.raises(ValidationError, match="melody is not base64"):
        GenerateRequest(prompt="x", melody="not base64 at all!")
