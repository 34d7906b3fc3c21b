"""Tokenization throughput: the Ray Data pipeline against a plain single-process loop.

Both encode the same synthetic files (44.1 kHz, resampled to the codec's 16 kHz) with
the same calibrated tiny codec and the same segmenting, and report audio seconds
encoded per wall second. The pipeline's time is the whole ``tokenize()`` call on a
running cluster (listing, actor start-up, decode tasks, codec actors, shard writes),
once per actor-pool size to show how it scales; it is also reported from its first
codes on (start-up excluded: mostly the actor processes importing torch). The plain
loop runs over one copy of each clip, with torch's default threads and with one thread;
the faster is timed again after the pipeline (the machine may be shared) and the ratio
is against its best rate.
Prints one JSON line::

    python benchmarks/tokenize.py --clips 24 --copies 4 --seconds 30 --actors 1,2
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder comes first on sys.path and its name would
# shadow the standard library's `tokenize` (which `inspect` needs): drop the folder.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


def make_inputs(directory: Path, clips: int, copies: int, seconds: float, sample_rate: int) -> Path:
    """``clips`` distinct synthetic clips, each linked ``copies`` times under other names
    (every file is still decoded on its own; synthesis is just not worth the wait)."""
    from music_gen.models.codebooks import tiny_calibrated_codec
    from music_gen.pipelines.synth import write_synth_dataset

    base = write_synth_dataset(directory / "base", clips, seconds, seed=0, sample_rate=sample_rate)
    (directory / "audio").mkdir()
    for copy in range(copies):
        for path in base:
            os.link(path, directory / "audio" / f"{copy:03d}-{path.name}")
    tiny_calibrated_codec().save(directory / "codec")
    return directory


def plain_loop(files: list[str], codec_dir: str, segment_seconds: float, batch_size: int) -> float:
    """Decode, resample, normalise, cut and encode file by file; returns audio seconds encoded."""
    import torch

    from music_gen.audio import peak_normalize, read_audio
    from music_gen.models.codec import load_codec
    from music_gen.pipelines.tokenize import segment_bounds

    codec = load_codec(codec_dir)
    length = round(segment_seconds * codec.sample_rate)
    encoded, pending = 0.0, []

    def flush() -> float:
        by_length: dict[int, list[torch.Tensor]] = {}
        for piece in pending:
            by_length.setdefault(piece.shape[-1], []).append(piece)
        for pieces in by_length.values():
            codec.encode(torch.stack(pieces))  # [B, C, S] -> [B, K, T]
        pending.clear()
        return sum(p.shape[-1] for ps in by_length.values() for p in ps) / codec.sample_rate

    for path in files:
        audio, _ = read_audio(path, codec.sample_rate, codec.channels)  # [C, S]
        audio = peak_normalize(audio)
        for start, stop in segment_bounds(audio.shape[-1], length, length, codec.sample_rate):
            pending.append(audio[:, start:stop])
            if len(pending) == batch_size:
                encoded += flush()
    return encoded + flush()


def pipeline(
    inputs: Path,
    out: Path,
    actors: int,
    segment_seconds: float,
    batch_size: int,
    audio: str = "audio",
) -> dict:
    from music_gen.config import CodecConfig, Config, DataConfig
    from music_gen.pipelines.tokenize import tokenize

    # The codec actors and the decode tasks share the cores: one CPU for decoding, the
    # rest split between the actors (fractions when there are more actors than cores).
    cpus = os.cpu_count() or 2
    data = DataConfig(
        input=str(inputs / audio),
        output=str(out),
        segment_seconds=segment_seconds,
        batch_size=batch_size,
        num_actors=actors,
        encode_num_cpus=min(1.0, max(cpus - 1, 1) / actors),
        decode_num_cpus=1.0,
        files_per_shard=16,
    )
    cfg = Config(codec=CodecConfig(source=str(inputs / "codec")), data=data)
    started = time.perf_counter()
    summary = tokenize(cfg, overwrite=True, progress=False)
    wall = time.perf_counter() - started
    return {
        "seconds": summary["seconds_encoded_this_run"],
        "wall": wall,
        "startup": summary["startup_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=24, help="distinct synthetic clips")
    parser.add_argument("--copies", type=int, default=4, help="files per clip")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--sample-rate", type=int, default=44100)
    parser.add_argument("--segment-seconds", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--actors", default="1,2", help="actor-pool sizes to run")
    args = parser.parse_args()

    import ray
    import torch

    default_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as tmp:
        inputs = make_inputs(Path(tmp), args.clips, args.copies, args.seconds, args.sample_rate)
        files = sorted(str(p) for p in (inputs / "audio").glob("*.wav"))

        def time_plain(threads: int) -> tuple[float, float]:
            torch.set_num_threads(threads)
            started = time.perf_counter()
            # Over one copy of each clip: a plain loop's rate does not depend on the count.
            seconds = plain_loop(
                files[: args.clips], str(inputs / "codec"), args.segment_seconds, args.batch_size
            )
            return seconds, seconds / (time.perf_counter() - started)

        plain_seconds, plain_default = time_plain(default_threads)
        audio_seconds = plain_seconds * args.copies
        plain_single = time_plain(1)[1]

        from music_gen.platform.cluster import ensure_ray

        ensure_ray()  # a local cluster of its own (never another one on the machine)
        # A first tiny run starts the worker processes (imports of torch and the codec)
        # so that every timed run below starts from the same warm cluster.
        warm = inputs / "warm"
        warm.mkdir()
        for path in files[:2]:
            os.link(path, warm / Path(path).name)
        started = time.perf_counter()
        pipeline(inputs, Path(tmp) / "warm_out", 1, args.segment_seconds, args.batch_size, "warm")
        cold_start = time.perf_counter() - started
        runs, steady, startup = {}, {}, {}
        for actors in (int(a) for a in args.actors.split(",")):
            out = Path(tmp) / f"out{actors}"
            result = pipeline(inputs, out, actors, args.segment_seconds, args.batch_size)
            assert abs(result["seconds"] - audio_seconds) < 1e-6 * audio_seconds + 1e-3, result
            runs[actors] = round(result["seconds"] / result["wall"], 1)
            after_start = result["wall"] - result["startup"]
            steady[actors] = round(result["seconds"] / after_start, 1)
            startup[actors] = round(result["startup"], 1)
        ray.shutdown()

        # Timed again after the pipeline: on a shared machine the better of two is fairer.
        if plain_default >= plain_single:
            plain_default = max(plain_default, time_plain(default_threads)[1])
        else:
            plain_single = max(plain_single, time_plain(1)[1])

    best_plain = max(plain_default, plain_single)
    print(
        json.dumps(
            {
                "benchmark": "tokenize",
                "unit": "audio seconds encoded per wall second",
                "audio_seconds": round(audio_seconds, 1),
                "plain_loop_audio_seconds": round(plain_seconds, 1),
                "files": len(files),
                "cpus": os.cpu_count(),
                "plain_loop": round(plain_default, 1),
                "plain_loop_torch_threads": default_threads,
                "plain_loop_1_thread": round(plain_single, 1),
                "pipeline_by_actors": runs,
                "pipeline_after_startup_by_actors": steady,
                "startup_seconds_by_actors": startup,
                "first_run_seconds_2_files": round(cold_start, 1),
                "pipeline_vs_best_plain": round(max(runs.values()) / best_plain, 2),
            }
        )
    )


if __name__ == "__main__":
    main()
