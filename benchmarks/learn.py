"""Learning proof: the whole path (synth audio -> calibrated codec -> Ray Data tokenize ->
Ray Train -> checkpoint) must learn to follow prompts it never saw.

Four synth classes that differ in timbre and register (sine pad, sawtooth bass, bell,
drums), captions from the training phrasings only. A small model (dim 128, 4 layers,
a frozen random byte-level T5) trains on 2 s crops with ``music-gen train``'s code path;
then ``evaluate.prompt_adherence`` generates from the held-out phrasings
(``synth.heldout_captions``) and classifies the generated codes against per-class
code statistics of the data. Chance is 25 %. Prints one JSON line::

    python benchmarks/learn.py                      # about 10 minutes on 2 cores
    python benchmarks/learn.py --steps 300 --clips 80   # a quicker, weaker run

``train_minutes`` is the ``train()`` call alone (workers, data streaming, checkpoints);
``prep_minutes`` the synthesis, codec calibration and tokenization before it.
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

CLASSES = ("sine_pad", "saw_bass", "bell", "noise_drums")
MODEL = [
    "model.dim=128", "model.num_layers=4", "model.num_heads=4", "model.max_frames=200",
    "model.text.dim=256", "model.text.num_layers=2", "model.text.num_heads=4",
]  # fmt: skip


def prepare(root: Path, clips: int, seconds: float, cardinality: int, codec: str | None) -> str:
    """Synth WAVs, a codec calibrated on them (or ``codec``, a trained one), and the
    tokenized dataset (Ray Data)."""
    from music_gen.config import load_config
    from music_gen.pipelines.calibrate import calibrate
    from music_gen.pipelines.synth import write_synth_dataset
    from music_gen.pipelines.tokenize import tokenize

    write_synth_dataset(root / "audio", clips, seconds, seed=0, classes=CLASSES)
    cfg = load_config(
        overrides=[
            "codec.num_codebooks=4", f"codec.cardinality={cardinality}",
            f"data.segment_seconds={seconds}", "data.files_per_shard=40",
            "data.encode_num_cpus=0.5", "data.decode_num_cpus=0.5", "data.batch_size=16",
        ]
    )  # fmt: skip
    if codec is None:
        codec = str(root / "codec")
        calibrate(str(root / "audio"), codec, cfg.codec, max_seconds=200.0, seed=0)
    cfg.codec.source = codec
    cfg.data.input, cfg.data.output = str(root / "audio"), str(root / "data")
    tokenize(cfg, progress=False)
    return str(root / "data")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=400, help="synth clips (4 classes cycle)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    parser.add_argument("--cardinality", type=int, default=128, help="codes per codebook")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--per-class", type=int, default=8, help="generations per class")
    parser.add_argument("--workdir", help="keep data and runs here (default: a temp dir)")
    parser.add_argument(
        "--codec",
        help="a trained codec directory (benchmarks/codec.py --workdir W leaves one in "
        "W/trained) in place of one calibrated by k-means; --cardinality is then its own",
    )
    args = parser.parse_args()

    from music_gen import MusicGen
    from music_gen.config import load_config
    from music_gen.pipelines.evaluate import prompt_adherence
    from music_gen.pipelines.train import train
    from music_gen.platform.cluster import ensure_ray

    ensure_ray(num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        os.environ.setdefault("MUSIC_GEN_WORK_DIR", str(root / "work"))
        started = time.perf_counter()
        data = prepare(root, args.clips, args.seconds, args.cardinality, args.codec)
        prep_minutes = (time.perf_counter() - started) / 60

        cfg = load_config(
            overrides=[
                *MODEL, f"train.steps={args.steps}", f"train.batch_size={args.batch_size}",
                f"train.lr={args.lr}", "train.warmup_steps=50", "train.min_lr_ratio=0.1",
                "train.segment_curriculum={0: 2.0}", "train.num_workers=1",
                "train.cpus_per_worker=1.5", "train.torch_threads=2", "train.log_every=100",
                f"train.checkpoint_every={args.steps // 4}", f"train.eval_every={args.steps // 4}",
                "train.eval_samples=2", "train.keep_checkpoints=1", "data.val_fraction=0.1",
            ]
        )  # fmt: skip
        cfg.data.output = data
        cfg.train.name = f"learn-{int(time.time())}"
        cfg.train.storage = str(root / "runs")
        started = time.perf_counter()
        summary = train(cfg)
        train_minutes = (time.perf_counter() - started) / 60

        model = MusicGen.from_pretrained(summary["checkpoint"])
        started = time.perf_counter()
        # Judged on codes, then the same generations decoded and judged on audio.
        report = prompt_adherence(model, data, per_class=args.per_class, duration=2.0, by_ear=True)
        eval_minutes = (time.perf_counter() - started) / 60
    result = {
        "benchmark": "learn",
        "adherence": round(report["accuracy"], 4),
        "audio_adherence": round(report["audio"]["accuracy"], 4),
        "audio_confusion": report["audio"]["confusion"],
        "chance": report["chance"],
        "labels": report["labels"],
        "confusion": report["confusion"],
        "val_loss": round(summary["val_loss"], 4),
        "steps": args.steps,
        "train_minutes": round(train_minutes, 2),
        "prep_minutes": round(prep_minutes, 2),
        "eval_minutes": round(eval_minutes, 2),
        "tokens_per_s": round(summary["tokens_per_s"] or 0.0),
        "clips": args.clips,
        "cardinality": model.lm.cfg.cardinality,
        "codec": "trained" if args.codec else "k-means calibrated",
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
