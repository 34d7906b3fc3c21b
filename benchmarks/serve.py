"""Serving throughput and latency: the Ray Serve app over HTTP, batching on and off.

One run measures, on a small random model (dim 128, 4 layers, 4 codebooks, tiny codec):
- requests/s, audio seconds per wall second, p50/p95 latency at concurrency 1, 4 and 8,
  with batching (max batch 8) and without (max batch 1);
- time to the first audio byte on ``/generate/stream`` for a 10 s clip, against the
  full latency of the same clip on ``/generate``;
- the app's throughput at concurrency 8 against ``generate_codes`` + ``decode`` called
  in-process at batch 8 (what HTTP + Serve cost).

    python benchmarks/serve.py [--duration 2] [--rounds 2] [--num-cpus 2] [--device cpu]

Prints one JSON line.
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder is sys.path[0]; it holds tokenize.py, which would shadow
# the standard library's tokenize. Put the repository root there instead.
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

import argparse
import concurrent.futures as cf
import json
import logging
import socket
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

CONCURRENCY = (1, 4, 8)


def build_model(directory: Path) -> Path:
    import torch

    from music_gen import MusicGen
    from music_gen.config import CodecConfig, ModelConfig, TextEncoderConfig
    from music_gen.models.codec import build_codec

    torch.manual_seed(0)
    cfg = ModelConfig(
        dim=128,
        num_layers=4,
        num_heads=4,
        num_codebooks=4,
        cardinality=256,
        max_frames=600,
        text=TextEncoderConfig(dim=32, num_layers=1, num_heads=2),
    )
    codec = build_codec(CodecConfig(num_codebooks=4, cardinality=256))
    return MusicGen.from_config(cfg, codec).save_pretrained(directory)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def load(url: str, concurrency: int, requests_total: int, duration: float) -> dict:
    import requests

    body = {"prompt": "benchmark groove", "duration": duration, "seed": 0}

    def one(index: int) -> float:
        start = time.perf_counter()
        response = requests.post(f"{url}/generate", json={**body, "seed": index}, timeout=600)
        response.raise_for_status()
        return time.perf_counter() - start

    start = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        latencies = list(pool.map(one, range(requests_total)))
    wall = time.perf_counter() - start
    return {
        "rps": round(requests_total / wall, 3),
        "audio_s_per_s": round(requests_total * duration / wall, 3),
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(percentile(latencies, 0.95), 3),
    }


def first_byte(url: str, duration: float) -> dict:
    import requests

    body = {"prompt": "benchmark stream", "duration": duration, "seed": 1}
    start = time.perf_counter()
    with requests.post(f"{url}/generate/stream", json=body, stream=True, timeout=600) as r:
        r.raise_for_status()
        received, first = 0, None
        for chunk in r.iter_content(chunk_size=None):
            received += len(chunk)
            if first is None and received > 44:  # past the WAV header: audio
                first = time.perf_counter() - start
        stream_total = time.perf_counter() - start
    start = time.perf_counter()
    requests.post(f"{url}/generate", json=body, timeout=600).raise_for_status()
    full = time.perf_counter() - start
    return {
        "stream_first_audio_s": round(first, 3),
        "stream_total_s": round(stream_total, 3),
        "full_clip_latency_s": round(full, 3),
        "first_audio_share": round(first / full, 3),
    }


def in_process(checkpoint: Path, batch: int, duration: float, rounds: int, device: str) -> float:
    """Audio seconds per wall second of generate_codes + decode at ``batch`` in this process."""
    import torch

    from music_gen import MusicGen

    torch.set_num_threads(1)  # what a replica on one CPU gets
    model = MusicGen.from_pretrained(checkpoint, device=device)
    prompts = ["benchmark groove"] * batch
    model.decode(model.generate_codes(prompts, duration=duration, seed=list(range(batch))))
    start = time.perf_counter()
    for _ in range(rounds):
        model.decode(model.generate_codes(prompts, duration=duration, seed=list(range(batch))))
    return rounds * batch * duration / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per request")
    parser.add_argument("--rounds", type=int, default=2, help="requests per level = rounds x 8")
    parser.add_argument("--num-cpus", type=float, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (in-process baseline)")
    args = parser.parse_args()

    import ray
    from ray import serve

    from music_gen.config import ServeConfig
    from music_gen.serve.app import build
    from music_gen.serve.board import drop_board

    gpus = 1 if args.device.startswith("cuda") else 0
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = build_model(Path(tmp) / "ckpt")
        ray.init(
            address="local",
            num_cpus=args.num_cpus,
            num_gpus=gpus,
            include_dashboard=False,
            logging_level=logging.ERROR,
            log_to_driver=False,
        )
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        result: dict = {"benchmark": "serve", "duration_s": args.duration, "device": args.device}
        for label, batch in (("batched", 8), ("unbatched", 1)):
            cfg = ServeConfig(
                model=str(checkpoint),
                app_name=label,
                num_cpus=1,
                num_gpus=gpus,
                ingress_num_cpus=0,
                max_batch_size=batch,
                batch_wait_timeout_s=0.05 if batch > 1 else 0.0,
                max_ongoing_requests=16,
                max_duration=30,
            )
            serve.run(build(cfg), name=label, route_prefix=f"/{label}", blocking=False)
            url = f"http://127.0.0.1:{port}/{label}"
            load(url, 2, 2, args.duration)  # warm-up
            for concurrency in CONCURRENCY:
                total = max(concurrency, args.rounds * 8)
                result[f"{label}_c{concurrency}"] = load(url, concurrency, total, args.duration)
            if batch > 1:
                result.update(first_byte(url, 10.0))
            serve.delete(label)
            drop_board(label)
        serve.shutdown()
        ray.shutdown()
        inproc = in_process(checkpoint, 8, args.duration, args.rounds, args.device)

    batched, unbatched = result["batched_c8"], result["unbatched_c8"]
    result["batching_speedup_c8"] = round(batched["rps"] / unbatched["rps"], 3)
    result["in_process_audio_s_per_s_b8"] = round(inproc, 3)
    result["serve_overhead_c8"] = round(1 - batched["audio_s_per_s"] / inproc, 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
