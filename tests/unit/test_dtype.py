"""Precision: what ``auto`` picks, and how far bf16 generation strays from fp32.

Tolerances (bf16 against fp32 on the same tiny random model, CPU):
- logits: max |difference| <= 2% of the largest fp32 |logit|, mean |difference| <= 0.5%.
  bf16 keeps 8 significant bits (a rounding error of at most 2^-9, about 0.2%), and the
  weights, activations and the residual stream are each rounded at every layer: measured
  0.7-0.8% (max) and 0.1% (mean) of the largest logit here. 2% leaves room for other
  CPUs' kernels, while a real bug (a missed cast, a norm run in the wrong precision)
  is off by tens of percent.
- greedy codes: at least 90% of positions equal the fp32 ones (measured 95-98%, with
  and without guidance). Near-ties between the top two logits flip under rounding, and a
  flipped code feeds every later step, so exact equality is not expected; it is in fp32,
  which is why the Python API stays fp32 by default (greedy parity with transformers).
"""

import argparse
import copy

import pytest
import torch

from music_gen.cli import build_parser
from music_gen.errors import UsageError
from music_gen.models import generator
from music_gen.models.generator import pick_dtype
from tests.helpers import tiny_musicgen

pytestmark = pytest.mark.unit

PROMPTS = ["jazz", "rock", "calm piano", "drums"]


@pytest.fixture(scope="module")
def models():
    full = tiny_musicgen(dim=64, num_heads=4, num_layers=4)
    return full, copy.deepcopy(full).to(dtype=torch.bfloat16)


# -- what auto picks ---------------------------------------------------------------------


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_on_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(generator, "cpu_has_native_bf16", lambda: native)
    assert pick_dtype("auto", torch.device("cpu")) == expected
    assert pick_dtype("auto", "cpu") == expected


def test_auto_is_bf16_on_cuda_and_fp32_on_mps(monkeypatch):
    monkeypatch.setattr(generator, "cpu_has_native_bf16", lambda: True)
    assert pick_dtype("auto", "cuda:0") == torch.bfloat16
    assert pick_dtype("auto", "mps") == torch.float32


def test_named_dtypes_are_kept_whatever_the_cpu(monkeypatch):
    monkeypatch.setattr(generator, "cpu_has_native_bf16", lambda: True)
    assert pick_dtype("float32", "cpu") == torch.float32
    assert pick_dtype("bfloat16", "cpu") == torch.bfloat16
    assert pick_dtype("float16", "cuda") == torch.float16
    with pytest.raises(UsageError, match="unknown dtype 'int4'"):
        pick_dtype("int4", "cpu")


@pytest.mark.parametrize(
    "avx512_bf16, amx, expected", [(True, False, True), (False, True, True), (False, False, False)]
)
def test_native_bf16_is_avx512_bf16_or_amx(monkeypatch, avx512_bf16, amx, expected):
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert generator.cpu_has_native_bf16() is expected


@pytest.mark.parametrize("command", ["generate", "interactive"])
def test_commands_default_to_auto_and_keep_float32(command):
    parser = build_parser()
    base = [command, "--model", "x"] if command == "interactive" else [command, "x"]
    assert parser.parse_args(base).dtype == "auto"
    assert parser.parse_args([*base, "--dtype", "float32"]).dtype == "float32"


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_generate_loads_the_auto_dtype(monkeypatch, tmp_path, native, expected):
    from music_gen.cli.generate import _load_model

    monkeypatch.setattr(generator, "cpu_has_native_bf16", lambda: native)
    checkpoint = tiny_musicgen().save_pretrained(tmp_path / "model")
    args = argparse.Namespace(
        device="cpu", dtype="auto", random_init=False, model=str(checkpoint), overrides=[]
    )
    args.config = []
    model = _load_model(args)
    assert model.lm.head.weight.dtype == expected
    args.dtype = "float32"
    assert _load_model(args).lm.head.weight.dtype == torch.float32


def test_python_api_stays_float32(monkeypatch, tmp_path):
    from music_gen import MusicGen

    monkeypatch.setattr(generator, "cpu_has_native_bf16", lambda: True)
    checkpoint = tiny_musicgen().save_pretrained(tmp_path / "model")
    assert MusicGen.from_pretrained(checkpoint).lm.head.weight.dtype == torch.float32


# -- bf16 against fp32 ---------------------------------------------------------------------


def test_bf16_logits_are_within_tolerance_of_fp32(models):
    full, half = models
    codes = torch.randint(0, 64, (4, 4, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = full.lm(codes, *full.conditioner(PROMPTS))  # [B, K, S, card]
        low = half.lm(codes, *half.conditioner(PROMPTS))
    assert low.dtype == torch.bfloat16
    difference = (reference - low.float()).abs()
    scale = float(reference.abs().max())
    assert float(difference.max()) <= 0.02 * scale
    assert float(difference.mean()) <= 0.005 * scale


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_bf16_greedy_codes_mostly_agree_with_fp32(models, guidance):
    full, half = models
    a = full.generate_codes(PROMPTS, duration=1.0, top_k=1, guidance_scale=guidance)
    b = half.generate_codes(PROMPTS, duration=1.0, top_k=1, guidance_scale=guidance)
    assert a.shape == b.shape == (4, 4, 50)
    assert float((a == b).float().mean()) >= 0.9


def test_bf16_seeded_sampling_reproduces(models):
    _, half = models
    a = half.generate_codes(PROMPTS[:2], duration=0.6, seed=3)
    b = half.generate_codes(PROMPTS[:2], duration=0.6, seed=3)
    c = half.generate_codes(PROMPTS[:2], duration=0.6, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_bf16_seeded_row_does_not_depend_on_the_batch_size(models):
    # Serve batches unrelated requests, and its auto dtype is bf16 on such a CPU. Rows
    # whose prompts are no longer than this one's leave it unchanged. A longer prompt pads
    # this row's text: attention over the padded keys rounds differently (sdpa differs by
    # ~4e-7 in fp32 too, but a bf16 rounding turns that into one bf16 step), and sampling
    # then diverges; exact batch independence for any neighbours needs float32.
    _, half = models
    alone = half.generate_codes(["a seeded tune"], duration=0.6, seed=[1234])
    batched = half.generate_codes(
        ["other 1", "b seeded tune", "a seeded tune"], duration=0.6, seed=[0, 1, 1234]
    )
    assert torch.equal(batched[-1], alone[0])
