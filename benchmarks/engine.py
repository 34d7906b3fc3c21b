"""Continuous batching: the slot engine against batch-at-once ``generate_codes``.

A mixed workload: requests of 1-8 s of audio (50 Hz frames, a dim-256, 4-layer
random model with guidance 3.0 and top-k 250) arrive over time. Batch-at-once takes
whatever has arrived (up to ``--slots``) and generates it as one batch to the longest
request's length; requests that arrive meanwhile wait for the whole batch. The engine
admits each request into a free slot between decode steps and returns each at its own
length. Both serve the same arrivals in the same process, one after the other.

    python benchmarks/engine.py [--requests 8] [--slots 8] [--arrival-s 0.25] [--quick]

``--quick`` (a smoke run, figures not comparable): 3 requests of 0.1-0.5 s in 2 slots.
On a GPU (``--device cuda --dtype bfloat16 --preset small``) it also times the engine's
decode step eager against replayed as a CUDA graph, at batch 1 and 16.

Prints one JSON line: audio seconds per wall second, p50/p95 latency and time to first
step for each, and the engine's throughput as a ratio of batch-at-once.
"""

from __future__ import annotations

import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import json
import random
import statistics
import time

import torch


def build_model(seed: int = 0, preset: str | None = None):
    from music_gen import MusicGen
    from music_gen.config import CodecConfig, ModelConfig, TextEncoderConfig
    from music_gen.models.codec import build_codec

    torch.manual_seed(seed)
    cardinality = 2048 if preset else 1024
    codec = build_codec(CodecConfig(num_codebooks=4, cardinality=cardinality))
    text = TextEncoderConfig(dim=64, num_layers=1, num_heads=4)
    if preset:  # e.g. small: dim 1024, 24 layers, 16 heads (MusicGen small's LM)
        cfg = ModelConfig(preset=preset, max_frames=500, text=text)
    else:
        cfg = ModelConfig(dim=256, num_layers=4, num_heads=8, max_frames=500, text=text)
    return MusicGen.from_config(cfg, codec)


def decode_steps_per_s(model, batch: int, steps: int, graphs: bool) -> float:
    """Delayed steps per second of ``batch`` slots decoding together (guidance 3, top-k 250)."""
    from music_gen.models.engine import Engine, Request

    engine = Engine(model, slots=batch, graphs=graphs)
    requests = [Request(f"prompt {i}", frames=steps, seed=i) for i in range(batch)]
    engine.run(requests[:1])  # admission, capture and warm-up outside the timing
    for request in requests:
        engine.submit(request)
    engine.step()  # the admission step
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    sync()
    started, count = time.perf_counter(), 0
    while engine.busy:
        engine.step()
        count += 1
    sync()
    return round(count / (time.perf_counter() - started), 1)


def workload(count: int, spacing: float, frame_rate: float, seed: int, lengths=(1.0, 8.0)):
    rng = random.Random(seed)
    arrivals, at = [], 0.0
    for i in range(count):
        at += rng.expovariate(1 / spacing)
        seconds = rng.uniform(*lengths)
        arrivals.append((at, f"prompt {i}", max(1, round(seconds * frame_rate))))
    return arrivals


def percentile(values, share):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def summarize(latencies, firsts, frames, wall, frame_rate):
    return {
        "audio_s_per_s": round(sum(frames) / frame_rate / wall, 3),
        "p50_latency_s": round(percentile(latencies, 0.5), 3),
        "p95_latency_s": round(percentile(latencies, 0.95), 3),
        "p50_first_step_s": round(statistics.median(firsts), 3),
        "wall_s": round(wall, 2),
    }


def batch_at_once(model, arrivals, slots):
    start = time.perf_counter()
    pending, latencies, firsts, done = list(arrivals), [], [], []
    while pending:
        now = time.perf_counter() - start
        if pending[0][0] > now:
            time.sleep(pending[0][0] - now)
            now = pending[0][0]
        batch = [r for r in pending if r[0] <= now][:slots]
        pending = pending[len(batch) :]
        began = time.perf_counter() - start
        longest = max(frames for _, _, frames in batch)
        model.generate_codes([p for _, p, _ in batch], duration=longest / model.frame_rate)
        ended = time.perf_counter() - start
        for at, _, frames in batch:
            latencies.append(ended - at)
            firsts.append(began - at)
            done.append(frames)
    return summarize(latencies, firsts, done, time.perf_counter() - start, model.frame_rate)


def engine_run(model, arrivals, slots):
    from music_gen.models.engine import Engine, Request

    engine = Engine(model, slots=slots)
    start = time.perf_counter()
    pending, latencies, firsts, done = list(arrivals), [], [], []
    while pending or engine.busy:
        now = time.perf_counter() - start
        while pending and pending[0][0] <= now:
            at, prompt, frames = pending.pop(0)
            engine.submit(Request(prompt, frames=frames, submitted=start + at))
        if not engine.busy:
            time.sleep(max(0.0, pending[0][0] - now))
            continue
        for finished in engine.step():
            latencies.append(finished.total_s)
            firsts.append(finished.first_step_s)
            done.append(finished.request.frames)
    return summarize(latencies, firsts, done, time.perf_counter() - start, model.frame_rate)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--slots", type=int, default=8)
    parser.add_argument("--arrival-s", type=float, default=0.25, help="mean gap between arrivals")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="3 short requests in 2 slots (a smoke run)"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--preset", choices=["small", "medium"], default=None)
    parser.add_argument(
        "--decode-steps", type=int, default=250,
        help="on cuda: also time eager vs CUDA-graph decoding, batch 1 and 16, this many steps",
    )  # fmt: skip
    args = parser.parse_args()
    lengths = (1.0, 8.0)
    if args.quick:
        args.requests, args.slots, lengths = 3, 2, (0.1, 0.5)
    torch.set_num_threads(args.threads)
    model = build_model(args.seed, args.preset).to(args.device, getattr(torch, args.dtype))
    arrivals = workload(args.requests, args.arrival_s, model.frame_rate, args.seed, lengths)
    steps = {}
    with torch.inference_mode():
        model.generate_codes(["warm up"], duration=0.2)
        baseline = batch_at_once(model, arrivals, args.slots)
        engine = engine_run(model, arrivals, args.slots)
        if model.device.type == "cuda":  # the CUDA graph against the same step run eagerly
            for batch in (1, 16):
                for graphs in (False, True):
                    name = f"{'graph' if graphs else 'eager'}_b{batch}"
                    steps[name] = decode_steps_per_s(model, batch, args.decode_steps, graphs)
            steps["graph_vs_eager_b1"] = round(steps["graph_b1"] / steps["eager_b1"], 2)
    cfg = model.lm.cfg
    print(
        json.dumps(
            {
                "benchmark": "engine",
                "device": str(model.device),
                "dtype": args.dtype,
                "threads": args.threads,
                "model": f"dim{cfg.dim}-L{cfg.num_layers}-H{cfg.num_heads}-K4x{cfg.cardinality}",
                "requests": args.requests,
                "slots": args.slots,
                "quick": args.quick,
                "audio_seconds": round(sum(f for _, _, f in arrivals) / model.frame_rate, 1),
                "batch_at_once": baseline,
                "engine": engine,
                "throughput_ratio": round(engine["audio_s_per_s"] / baseline["audio_s_per_s"], 3),
                "p95_latency_ratio": round(engine["p95_latency_s"] / baseline["p95_latency_s"], 3),
                **({"decode_steps_per_s": steps} if steps else {}),
            }
        )
    )


if __name__ == "__main__":
    main()
