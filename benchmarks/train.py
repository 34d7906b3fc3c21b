"""Training throughput: the Ray Train loop against a plain PyTorch loop, same model and batches.

Both run the same step (``train.train_step``: delay pattern, conditioning, loss,
backward, clipping, AdamW) on the same model (the learning proof's: dim 128, 4 layers)
and the same batch shape (16 synth segments cropped to 2 s, codec K=4 at 50 Hz). The
plain loop reads the shards with pyarrow into memory; the Ray loop is ``train()``
itself: a ``TorchTrainer`` worker streaming its shard from Ray Data, with MLflow logging
and one checkpoint at the end. Tokens per second count codes trained on (frames x K)
per wall second of the loop, data wait included, leaving out the first 5 steps;
setup, validation and checkpointing are outside. On 2 cores: 1 worker gets both threads;
2 workers one each. The plain loop runs before, between and after the Ray runs; each
Ray rate is compared with the mean of the plain runs on either side of it (the load
of a shared machine drifts). Prints one JSON line::

    python benchmarks/train.py --steps 60
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder comes first on sys.path and its tokenize.py would shadow
# the standard library's `tokenize` (which `inspect` needs): drop the folder.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MODEL = [
    "model.dim=128", "model.num_layers=4", "model.num_heads=4", "model.max_frames=200",
    "model.text.dim=64", "model.text.num_layers=2", "model.text.num_heads=4",
]  # fmt: skip
SEGMENT = "train.segment_curriculum={0: 2.0}"
WARM = 5  # as train.WARM_STEPS (the first steps: allocator warm-up)


def make_dataset(root: Path, clips: int) -> str:
    """Synth clips of 4 s encoded with the offline codec, one shard, codec in ``root/codec``."""
    from music_gen.models.codebooks import tiny_calibrated_codec
    from music_gen.testing import make_synth_dataset

    codec = tiny_calibrated_codec(num_codebooks=4, cardinality=128)
    return make_synth_dataset(root, codec, num_clips=clips, seconds=4.0)


def plain_loop(data: str, steps: int, batch_size: int, threads: int) -> float:
    """The same steps in one process, batches from memory; tokens per second."""
    import numpy as np
    import torch

    from music_gen import MusicGen
    from music_gen.config import load_config
    from music_gen.models.codec import load_codec
    from music_gen.pipelines import shards
    from music_gen.pipelines import train as T

    torch.set_num_threads(threads)
    cfg = load_config(overrides=[*MODEL, SEGMENT, f"train.batch_size={batch_size}"])
    tc = cfg.train
    torch.manual_seed(tc.seed)
    model = MusicGen.from_config(cfg.model, load_codec(f"{data}/codec"))
    core = T.TrainModule(model.lm, model.conditioner).train()
    optimizer = T.build_optimizer(core, tc.lr, tc.weight_decay, tc.betas)
    batches = T.iter_local_batches(shards.shard_paths(data), batch_size, seed=tc.seed)
    special, device = model.lm.cfg.special_token, torch.device("cpu")
    tokens, seconds = 0, 0.0
    for step in range(steps):
        started = time.perf_counter()
        frames = T.segment_frames(tc.segment_curriculum, step, model.frame_rate, model.max_frames)
        rng = np.random.default_rng([tc.seed, 0, step])
        batch = T.make_batch(next(batches), frames, rng)
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        drop = T.condition_dropout(len(batch.texts), cfg.model.cond_dropout, generator)
        T.set_lr(optimizer, tc.lr * T.lr_factor(step, tc.warmup_steps, steps, tc.min_lr_ratio))
        result = T.train_step(core, optimizer, batch, drop, special, device, "fp32", tc.grad_clip)
        if step >= WARM:
            tokens += result.tokens
            seconds += time.perf_counter() - started
    return tokens / seconds


def ray_loop(data: str, root: Path, steps: int, batch_size: int, workers: int) -> float:
    from music_gen.config import load_config
    from music_gen.pipelines.train import train

    cpus, threads = (1.5, 2) if workers == 1 else (0.75, 1)
    cfg = load_config(
        overrides=[
            *MODEL, SEGMENT, f"train.batch_size={batch_size}", f"train.steps={steps}",
            f"train.num_workers={workers}", f"train.cpus_per_worker={cpus}",
            f"train.torch_threads={threads}", "train.log_every=20", "train.eval_samples=0",
            f"train.checkpoint_every={steps}", f"train.eval_every={steps}",
            "train.val_batches=1", "train.keep_checkpoints=1", "data.val_fraction=0.1",
        ]
    )  # fmt: skip
    cfg.data.output = data
    cfg.train.name = f"bench-{workers}w-{int(time.time())}"
    cfg.train.storage = str(root / "runs")
    return train(cfg)["tokens_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--clips", type=int, default=96)
    args = parser.parse_args()

    from music_gen.platform.cluster import ensure_ray

    ensure_ray(num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ.setdefault("MUSIC_GEN_WORK_DIR", str(root / "work"))
        data = make_dataset(root / "data", args.clips)
        # Plain runs around each Ray run: the load of a shared machine drifts.
        plain = [plain_loop(data, args.steps, args.batch_size, threads=2)]
        one = ray_loop(data, root, args.steps, args.batch_size, workers=1)
        plain.append(plain_loop(data, args.steps, args.batch_size, threads=2))
        two = ray_loop(data, root, args.steps, args.batch_size, workers=2)
        plain.append(plain_loop(data, args.steps, args.batch_size, threads=2))
    around_one, around_two = (plain[0] + plain[1]) / 2, (plain[1] + plain[2]) / 2
    print(
        json.dumps(
            {
                "benchmark": "train",
                "plain_tokens_per_s": round(sum(plain) / len(plain)),
                "plain_runs": [round(p) for p in plain],
                "ray_1_worker_tokens_per_s": round(one),
                "ray_1_worker_vs_plain": round(one / around_one, 3),
                "ray_2_workers_tokens_per_s": round(two),
                "ray_2_workers_vs_plain": round(two / around_two, 3),
                "steps": args.steps,
                "batch_size": args.batch_size,
                "segment_seconds": 2.0,
                "model": "dim 128, 4 layers, K=4 x 128",
                "cpus": 2,
            }
        )
    )


if __name__ == "__main__":
    main()
