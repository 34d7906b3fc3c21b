"""Generation speed: our ``generate_codes`` against transformers' MusicGen ``generate``.

Both run on the same weights (a transformers MusicGen with a dim-512, 8-layer,
8-head, 4-codebook decoder, saved and loaded back through ``MusicGen.from_pretrained``),
with sampling (top-k 250), guidance 3.0 and 250 decoding steps, at batch 1 and 8.
Neither side decodes audio (transformers' codec call is swapped for a no-op), so the
figure is the language model's decoding loop. Runs alternate and the median counts.

Variants (``--variants``): ``mono`` (the top-level ``batch_N`` rows), ``stereo`` (the
same decoder with 2 x 4 interleaved codebooks) and ``melody`` (a MusicGen-Melody
decoder of the same size, conditioned on a 10 s melody: both sides compute its chroma
inside the timed call, 235 chroma frames prefixed to the text).

    python benchmarks/generation.py [--steps 250] [--repeats 3]
                                    [--dtype auto|float32|bfloat16 ...]
                                    [--variants mono stereo melody]

``--dtype`` is our model's (transformers stays fp32); ``auto`` (the default) is what
``music-gen generate`` picks (``pick_dtype``: bf16 on a CPU with native bf16, else fp32).
Several dtypes are timed in the same run against the same transformers timings: the
first gives ``ours_steps_per_s`` and ``ratio``, each further one adds
``ours_steps_per_s_DTYPE`` and ``ratio_DTYPE`` (e.g. ``--dtype auto float32``).

Prints one JSON line.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder is sys.path[0]; it holds tokenize.py, which would shadow
# the standard library's tokenize. Put the repository root there instead.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import copy
import json
import statistics
import tempfile
import time
import types
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402


def build_transformers_model(directory: Path, variant: str = "mono"):
    from transformers import (
        ByT5Tokenizer,
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        MusicgenMelodyConfig,
        MusicgenMelodyDecoderConfig,
        MusicgenMelodyFeatureExtractor,
        MusicgenMelodyForConditionalGeneration,
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
    sizes = {
        "vocab_size": 2048,
        "hidden_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "ffn_dim": 2048,
        "max_position_embeddings": 2048,
    }
    if variant == "melody":
        decoder = MusicgenMelodyDecoderConfig(**sizes, num_codebooks=4)
        config = MusicgenMelodyConfig(text_encoder=text, audio_encoder=codec, decoder=decoder)
        model = MusicgenMelodyForConditionalGeneration(config).eval()
        MusicgenMelodyFeatureExtractor().save_pretrained(directory)  # 32 kHz, hop 4096
    else:
        channels = 2 if variant == "stereo" else 1
        decoder = MusicgenDecoderConfig(
            **sizes, num_codebooks=4 * channels, audio_channels=channels
        )
        config = MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder)
        model = MusicgenForConditionalGeneration(config).eval()
    model.save_pretrained(directory)
    tokenizer = ByT5Tokenizer()
    tokenizer.save_pretrained(directory)
    # Time the decoding loop only: skip the codec at the end of transformers' generate.
    model.audio_encoder.decode = lambda *a, **k: types.SimpleNamespace(
        audio_values=torch.zeros(1, 1, 1)
    )
    return model, tokenizer


MELODY_SECONDS = 10.0


def melody_audio(rate: int = 32000) -> torch.Tensor:
    """A 10 s tune (a rising arpeggio, one note a second) ``[S]``."""
    t = torch.arange(int(rate)) / rate
    notes = [261.63, 329.63, 392.0, 523.25, 392.0, 329.63, 261.63, 196.0, 261.63, 329.63]
    return torch.cat([0.5 * torch.sin(2 * torch.pi * f * t) for f in notes])


def time_transformers(model, tokenizer, prompts, steps: int, melody=None) -> float:
    inputs = tokenizer(prompts, padding=True, return_tensors="pt")
    start = time.perf_counter()
    if melody is not None:  # the chroma is part of the call, as on our side
        extractor = melody["extractor"]
        audio = melody["audio"].expand(len(prompts), -1)
        inputs["input_features"] = extractor(
            audio, sampling_rate=32000, return_tensors="pt"
        ).input_features
    model.generate(
        **inputs,
        do_sample=True,
        top_k=250,
        guidance_scale=3.0,
        max_new_tokens=steps,
        min_new_tokens=steps,
    )
    return time.perf_counter() - start


def time_ours(model, prompts, steps: int, melody=None) -> float:
    frames = steps - model.lm.cfg.num_levels + 1  # steps = frames + K / channels - 1
    extra = {} if melody is None else {"melody": melody["audio"], "melody_sample_rate": 32000}
    start = time.perf_counter()
    codes = model.generate_codes(
        prompts, duration=frames / model.frame_rate, top_k=250, guidance_scale=3.0, seed=0, **extra
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
        nargs="+",
        choices=["auto", "float32", "bfloat16"],
        default=["auto"],
        help="our model's dtype(s) (transformers stays float32); the first one gives 'ratio'",
    )
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    args = parser.parse_args()
    from music_gen.models.generator import pick_dtype

    # resolved names, in order, each once: "auto" becomes what it picks on this machine
    dtypes = {str(pick_dtype(name, "cpu")).removeprefix("torch."): None for name in args.dtype}
    args.dtypes = list(dtypes)
    result = {
        "benchmark": "generation",
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "model": "dim512-L8-H8-K4",
        "steps": args.steps,
        "guidance_scale": 3.0,
        "ours_dtype": args.dtypes[0],
        "ours_dtype_requested": args.dtype[0],
        "other_dtypes": args.dtypes[1:],
    }
    for variant in args.variants:
        rows = run_variant(variant, args)
        if variant == "mono":
            result.update(rows)  # the original rows, where earlier runs have them
        else:
            result[variant] = {"model": VARIANTS[variant], **rows}
    print(json.dumps(result))


VARIANTS = {
    "mono": "dim512-L8-H8-K4",
    "stereo": "dim512-L8-H8-K8 (2 x 4 interleaved)",
    "melody": "dim512-L8-H8-K4 melody (235 chroma frames)",
}


def run_variant(variant: str, args) -> dict:
    from transformers import MusicgenMelodyFeatureExtractor

    from music_gen import MusicGen

    with tempfile.TemporaryDirectory() as tmp:
        hf, tokenizer = build_transformers_model(Path(tmp), variant)
        loaded = MusicGen.from_pretrained(tmp)
        ours = {name: copy.deepcopy(loaded).to(dtype=getattr(torch, name)) for name in args.dtypes}
    melody = None
    if variant == "melody":
        melody = {"audio": melody_audio(), "extractor": MusicgenMelodyFeatureExtractor()}
    rows = {}
    for batch in args.batches:
        prompts = [f"upbeat jazz with saxophone, take {i}" for i in range(batch)]
        for model in ours.values():  # warm-up
            time_ours(model, prompts, 8, melody)
        time_transformers(hf, tokenizer, prompts, 8, melody)
        theirs: list[float] = []
        mine: dict[str, list[float]] = {name: [] for name in ours}
        for _ in range(args.repeats):  # alternate so machine noise hits all alike
            theirs.append(time_transformers(hf, tokenizer, prompts, args.steps, melody))
            for name, model in ours.items():
                mine[name].append(time_ours(model, prompts, args.steps, melody))
        t_theirs = statistics.median(theirs)
        row = {"transformers_steps_per_s": round(args.steps / t_theirs, 2)}
        for i, (name, times) in enumerate(mine.items()):
            suffix = "" if i == 0 else f"_{name}"
            t_mine = statistics.median(times)
            row[f"ours_steps_per_s{suffix}"] = round(args.steps / t_mine, 2)
            row[f"ratio{suffix}"] = round(t_theirs / t_mine, 3)
        rows[f"batch_{batch}"] = row
    return rows


if __name__ == "__main__":
    main()
