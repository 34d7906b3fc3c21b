"""Sweep wall time: 8 trials with ASHA (``music-gen tune``) against the same 8 configs
trained to completion one after another (``train()`` in a loop).

The model is the debug one (dim 32, 2 layers), the data synthetic clips encoded with the
offline codec, the 8 configs a grid of learning rates. The sweep runs as many trials at
once as the cluster holds (``tune.max_concurrent_trials`` derived from its CPUs) and
ASHA stops the lagging ones after ``--grace`` steps; the baseline runs each config for
``--steps``. Both pick their best by validation loss (the sweep: best reported; the
baseline: final). Prints one JSON line::

    python benchmarks/tune.py --steps 24

``--quick`` (a smoke run, figures not comparable): 2 of the 8 learning rates.
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
# As in benchmarks/train.py: this folder's tokenize.py would shadow the standard library's.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")

LRS = [1e-6, 1e-5, 1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 5e-3]
MODEL = [
    "model.dim=32", "model.num_layers=2", "model.num_heads=2", "model.max_frames=100",
    "model.text.dim=16", "model.text.num_layers=1", "model.text.num_heads=2",
]  # fmt: skip


def make_dataset(root: Path, clips: int) -> str:
    """The synth dataset writer of ``benchmarks/train.py`` (one place for it)."""
    spec = importlib.util.spec_from_file_location("bench_train", os.path.join(_HERE, "train.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.make_dataset(root, clips)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--every", type=int, default=4, help="checkpoint (and report) interval")
    parser.add_argument("--grace", type=int, default=4, help="ASHA grace period in steps")
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--quick", action="store_true", help="2 trials, not 8 (a smoke run)")
    args = parser.parse_args()
    lrs = [LRS[2], LRS[6]] if args.quick else LRS

    import ray

    from music_gen.config import load_config
    from music_gen.pipelines.train import train
    from music_gen.tune.sweep import concurrency, sweep

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["MUSIC_GEN_WORK_DIR"] = str(root / "work")
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        data = make_dataset(root / "data", args.clips)
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)  # fmt: skip
        base = [
            *MODEL, "train.num_workers=1", "train.cpus_per_worker=0.5", "train.batch_size=4",
            "train.warmup_steps=2", "train.precision=fp32", f"train.steps={args.steps}",
            f"train.checkpoint_every={args.every}", f"train.eval_every={args.steps}",
            "train.eval_samples=0", "train.keep_checkpoints=1", "train.shuffle_buffer=0",
            "train.segment_curriculum={0: 1.0}", "data.val_fraction=0.2",
            f"train.log_every={args.every}",
        ]  # fmt: skip
        cfg = load_config(overrides=[
            *base, "tune.search=grid", "tune.num_samples=1", f"tune.grace_period={args.grace}",
            "tune.reduction_factor=2", "tune.name=bench",
            f"tune.search_space={{train.lr: {{grid: {json.dumps(lrs)}}}}}",
        ])  # fmt: skip
        cfg.data.output = data
        cfg.tune.storage = str(root / "tune")

        start = time.perf_counter()
        swept = sweep(cfg)
        sweep_s = time.perf_counter() - start
        stopped = sum(row["stopped_early"] for row in swept["rows"])
        sweep_best = swept["best"]["train.lr"]

        start = time.perf_counter()
        finals = {}
        for i, lr in enumerate(lrs):
            one = load_config(overrides=[*base, f"train.lr={lr}"])
            one.data.output = data
            one.train.name = f"sequential-{i}"
            one.train.storage = str(root / "runs")
            finals[lr] = train(one)["val_loss"]
        sequential_s = time.perf_counter() - start
        sequential_best = min(finals, key=finals.get)
        concurrent = concurrency(cfg, ray.cluster_resources())

    print(json.dumps({
        "benchmark": "tune", "trials": len(lrs), "steps": args.steps, "grace": args.grace,
        "cpus": args.cpus, "concurrent_trials": concurrent, "stopped_early": stopped,
        "sweep_s": round(sweep_s, 1), "sequential_s": round(sequential_s, 1),
        "speedup": round(sequential_s / sweep_s, 2), "quick": args.quick,
        "sweep_best_lr": sweep_best, "sequential_best_lr": sequential_best,
        "same_best": sweep_best == sequential_best,
        "sweep_best_val_loss": round(swept["best"]["best_metric"], 4),
        "sequential_best_val_loss": round(finals[sequential_best], 4),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
