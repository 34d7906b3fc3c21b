"""Generation speed: our ``generate_codes`` against transformers' MusicGen ``generate``.

Both run on the same weights (a transformers MusicGen with a dim-512, 8-layer,
8-head, 4-codebook decoder, saved and loaded back through ``MusicGen.from_pretrained``),
with sampling (top-k 250), guidance 3.0 and 250 decoding steps, at batch 1 and 8.
Neither side decodes audio (transformers' codec call is swapped for a no-op), so the
figure is the language model's decoding loop. Runs alternate and the median counts.

    python benchmarks/generation.py [--steps 250] [--repeats 3] [--dtype float32|bfloat16]

Prints one JSON line.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder is sys.path[0]; it holds tokenize.py, which would shadow
# the standard library's tokenize. Put the repository root there instead.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import statistics
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def build_transformers_model(directory: Path):
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
        d_model=256,
        d_kv=32,
        d_ff=512,
        num_layers=2,
        num_heads=8,
        feed_forward_proj="gated-gelu",
    )
    # 32 kHz, hop 640 -> 50 Hz, 4 codebooks of 2048 at 2.2 kbps: MusicGen's codec layout
    codec = EncodecConfig(
        sampling_rate=32000,
        audio_channels=1,
        num_filters=8,
        hidden_size=32,
        upsampling_ratios=[8, 5, 4, 4],
        codebook_size=2048,
        codebook_dim=32,
        target_bandwidths=[2.2],
        num_lstm_layers=1,
    )
    decoder = MusicgenDecoderConfig(
        vocab_size=2048,
        hidden_size=512,
        num_hidden_layers=8,
        num_attention_heads=8,
        ffn_dim=2048,
        num_codebooks=4,
        max_position_embeddings=2048,
    )
    model = MusicgenForConditionalGeneration(
        MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder)
    ).eval()
    model.save_pretrained(directory)
    tokenizer = ByT5Tokenizer()
    tokenizer.save_pretrained(directory)
    # Time the decoding loop only: skip the codec at the end of transformers' generate.
    model.audio_encoder.decode = lambda *a, **k: types.SimpleNamespace(audio_values=None)
    return model, tokenizer


def time_transformers(model, tokenizer, prompts, steps: int) -> float:
    inputs = tokenizer(prompts, padding=True, return_tensors="pt")
    start = time.perf_counter()
    model.generate(
        **inputs,
        do_sample=True,
        top_k=250,
        guidance_scale=3.0,
        max_new_tokens=steps,
        min_new_tokens=steps,
    )
    return time.perf_counter() - start


def time_ours(model, prompts, steps: int) -> float:
    frames = steps - model.num_codebooks + 1  # steps = frames + K - 1
    start = time.perf_counter()
    codes = model.generate_codes(
        prompts, duration=frames / model.frame_rate, top_k=250, guidance_scale=3.0, seed=0
    )
    elapsed = time.perf_counter() - start
    assert codes.shape[-1] == frames
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="our model's dtype (transformers stays float32)",
    )
    args = parser.parse_args()

    from music_gen import MusicGen

    with tempfile.TemporaryDirectory() as tmp:
        hf, tokenizer = build_transformers_model(Path(tmp))
        ours = MusicGen.from_pretrained(tmp).to(dtype=getattr(torch, args.dtype))

    result = {
        "benchmark": "generation",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "model": "dim512-L8-H8-K4",
        "steps": args.steps,
        "guidance_scale": 3.0,
        "ours_dtype": args.dtype,
    }
    for batch in args.batches:
        prompts = [f"upbeat jazz with saxophone, take {i}" for i in range(batch)]
        time_ours(ours, prompts, 8)  # warm-up
        time_transformers(hf, tokenizer, prompts, 8)
        theirs, mine = [], []
        for _ in range(args.repeats):  # alternate so machine noise hits both alike
            theirs.append(time_transformers(hf, tokenizer, prompts, args.steps))
            mine.append(time_ours(ours, prompts, args.steps))
        t_theirs, t_mine = statistics.median(theirs), statistics.median(mine)
        result[f"batch_{batch}"] = {
            "ours_steps_per_s": round(args.steps / t_mine, 2),
            "transformers_steps_per_s": round(args.steps / t_theirs, 2),
            "ratio": round(t_theirs / t_mine, 3),
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
