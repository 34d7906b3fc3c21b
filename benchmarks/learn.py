"""Learning proof: the whole path (synth audio -> a codec trained on it -> Ray Data
tokenize -> Ray Train -> checkpoint) must learn to follow prompts it never saw.

Four synth classes that differ in timbre and register (sine pad, sawtooth bass, bell,
drums), captions from the training phrasings only. A small model (dim 128, 4 layers,
a frozen random byte-level T5) trains on 2 s crops with ``music-gen train``'s code path;
then ``evaluate.prompt_adherence`` generates from the held-out phrasings
(``synth.heldout_captions``) and judges the generations twice: their codes against
per-class code statistics of the data (``adherence``), and their audio, decoded by the
codec, by the log-mel classifier fitted on real clips (``audio_adherence``). Chance is
25 %. The codec is trained first (configs/codec/offline.yaml, as ``codec train``) unless
``--codec`` names one; ``--codec kmeans`` is the old baseline, whose random decoder
makes audio adherence meaningless. Prints one JSON line::

    python benchmarks/learn.py                      # about 15 minutes on 2 cores
    python benchmarks/learn.py --workdir W          # keeps W/codec-trained for next time
    python benchmarks/learn.py --codec kmeans --steps 300 --clips 80   # a quick look

With ``--melody`` the run asks another question: does a melody model follow the tune it
is given? The data is one pitched class (sawtooth bass, whose line follows the chord
roots) and every caption is the same keyless sentence, so the pitch can come from the
melody alone. The model trains with ``model.melody=true`` (MusicGen-Melody's conditioner,
fed the chroma column tokenize writes; melody dropout 0.2), then each held-out clip is
the melody of a generation, scored by the chroma cosine of melody and output
(``evaluate.melody_adherence``) beside the same outputs against another clip's melody
(what ignoring the melody scores, about 1/12), at guidance 1 and 3. Pitch survives only
a trained codec, so ``--melody`` refuses ``--codec kmeans``; its data and codec live in
``W/melody``::

    python benchmarks/learn.py --melody --clips 400 --steps 1000   # about 11 minutes

``train_minutes`` is the ``train()`` call alone (workers, data streaming, checkpoints);
``codec_minutes`` making the codec; ``prep_minutes`` the synthesis and tokenization;
``pipeline_minutes`` all of it with the evaluation.
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
VAL_FRACTION = 0.1
MELODY_CLASS, MELODY_CAPTION = "saw_bass", "a sawtooth bass line"
"""``--melody``: the one class and the caption of every clip (no key: the tune alone)."""
CODEC_CONFIG = Path(__file__).parents[1] / "configs" / "codec" / "offline.yaml"
MODEL = [
    "model.dim=128", "model.num_layers=4", "model.num_heads=4", "model.max_frames=200",
    "model.text.dim=256", "model.text.num_layers=2", "model.text.num_heads=4",
]  # fmt: skip


def make_codec(root: Path, choice: str, cardinality: int) -> tuple[str, float]:
    """The codec directory and the minutes spent making it. ``train``: trained with
    ``codec train`` (configs/codec/offline.yaml, Ray Train) on the benchmark's audio and
    kept in ``root/codec-trained``, which a later run with the same ``--workdir`` reuses;
    ``kmeans``: random weights with codebooks fitted by k-means; else a codec directory."""
    from music_gen.config import load_config
    from music_gen.models.codec import CODEC_JSON

    started = time.perf_counter()
    if choice == "kmeans":
        from music_gen.pipelines.calibrate import calibrate

        cfg = load_config(overrides=["codec.num_codebooks=4", f"codec.cardinality={cardinality}"])
        calibrate(str(root / "audio"), str(root / "codec"), cfg.codec, max_seconds=200.0, seed=0)
        return str(root / "codec"), (time.perf_counter() - started) / 60
    if choice != "train":
        return choice, 0.0
    out = root / "codec-trained"
    if not (out / CODEC_JSON).is_file():
        from music_gen.pipelines.codec.driver import train_codec

        storage = f"codec.train.storage={root / 'codec-runs'}"
        train_codec(load_config([CODEC_CONFIG], [storage]), str(root / "audio"), str(out))
    return str(out), (time.perf_counter() - started) / 60


def tokenize_with(root: Path, codec: str, seconds: float) -> str:
    """The synth audio tokenized by ``codec`` with Ray Data (with each segment's chroma)."""
    from music_gen.config import load_config
    from music_gen.pipelines.tokenize import tokenize

    cfg = load_config(
        overrides=[
            f"data.segment_seconds={seconds}", "data.files_per_shard=40",
            "data.encode_num_cpus=0.5", "data.decode_num_cpus=0.5", "data.batch_size=16",
        ]
    )  # fmt: skip
    cfg.codec.source = codec
    cfg.data.input, cfg.data.output = str(root / "audio"), str(root / "data")
    tokenize(cfg, progress=False)
    return str(root / "data")


def follows_melodies(model, data: str, clips: int, val_fraction: float) -> dict:
    """Melody adherence on the clips training held out, at guidance 1 and 3."""
    from music_gen.pipelines.evaluate import melody_adherence, read_rows, split_rows

    _, held = split_rows(read_rows(data), val_fraction)  # the files training held out
    return {
        f"guidance_{scale:g}": melody_adherence(
            model, held[:clips], 2.0, seed=0, guidance_scale=scale, batch_size=8
        )
        for scale in (1.0, 3.0)
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=800, help="synth clips (4 classes cycle)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    parser.add_argument(
        "--cardinality", type=int, default=128, help="codes per codebook (--codec kmeans)"
    )
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--per-class", type=int, default=8, help="generations per class")
    parser.add_argument("--workdir", help="keep data and runs here (default: a temp dir)")
    parser.add_argument(
        "--codec", default="train", metavar="train|kmeans|DIR",
        help="train (default): a codec trained on the benchmark's audio with "
        "configs/codec/offline.yaml, kept in the --workdir for the next run; kmeans: random "
        "weights with k-means codebooks (--cardinality codes); or a codec directory",
    )  # fmt: skip
    parser.add_argument(
        "--melody", action="store_true",
        help="train with melody conditioning and score how generations follow held-out "
        "melodies (needs a trained codec, not --codec kmeans)",
    )  # fmt: skip
    parser.add_argument("--melody-clips", type=int, default=16, help="held-out melodies")
    args = parser.parse_args()
    if args.melody and args.codec == "kmeans":
        parser.error(
            "--melody needs a trained codec: a k-means codec's random decoder plays no pitch"
        )

    from music_gen import MusicGen
    from music_gen.config import load_config
    from music_gen.pipelines.evaluate import prompt_adherence
    from music_gen.pipelines.train import train
    from music_gen.platform.cluster import ensure_ray

    ensure_ray(num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp) / ("melody" if args.melody else "")
        os.environ.setdefault("MUSIC_GEN_WORK_DIR", str(root / "work"))
        from music_gen.pipelines.synth import write_synth_dataset

        started = time.perf_counter()
        classes, caption = ((MELODY_CLASS,), MELODY_CAPTION) if args.melody else (CLASSES, None)
        write_synth_dataset(
            root / "audio", args.clips, args.seconds, seed=0, classes=classes, caption=caption
        )
        codec, codec_minutes = make_codec(root, args.codec, args.cardinality)
        data = tokenize_with(root, codec, args.seconds)
        prep_minutes = (time.perf_counter() - started) / 60 - codec_minutes

        cfg = load_config(
            overrides=[
                *MODEL, f"train.steps={args.steps}", f"train.batch_size={args.batch_size}",
                f"train.lr={args.lr}", "train.warmup_steps=50", "train.min_lr_ratio=0.1",
                "train.segment_curriculum={0: 2.0}", "train.num_workers=1",
                "train.cpus_per_worker=1.5", "train.torch_threads=2", "train.log_every=100",
                f"train.checkpoint_every={args.steps // 4}", f"train.eval_every={args.steps // 4}",
                "train.eval_samples=2", "train.keep_checkpoints=1", f"data.val_fraction={VAL_FRACTION}",
                *(["model.melody=true", "model.melody_dropout=0.2"] if args.melody else []),
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
        if args.melody:  # one class: prompt adherence would be 100% by construction
            report = {"melody": follows_melodies(model, data, args.melody_clips, VAL_FRACTION)}
        else:  # judged on codes, then the same generations decoded and judged on audio
            report = prompt_adherence(
                model, data, per_class=args.per_class, duration=2.0, by_ear=True
            )
        eval_minutes = (time.perf_counter() - started) / 60
    if args.melody:
        result = {"benchmark": "learn", "melody": {
            scale: {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()}
            for scale, scores in report["melody"].items()
        }, "class": MELODY_CLASS, "caption": MELODY_CAPTION}  # fmt: skip
    else:
        result = {
            "benchmark": "learn",
            "adherence": round(report["accuracy"], 4),
            "audio_adherence": round(report["audio"]["accuracy"], 4),
            "audio_confusion": report["audio"]["confusion"],
            "chance": report["chance"],
            "labels": report["labels"],
            "confusion": report["confusion"],
        }
    result |= {
        "val_loss": round(summary["val_loss"], 4),
        "steps": args.steps,
        "train_minutes": round(train_minutes, 2),
        "prep_minutes": round(prep_minutes, 2),
        "eval_minutes": round(eval_minutes, 2),
        "tokens_per_s": round(summary["tokens_per_s"] or 0.0),
        "clips": args.clips,
        "cardinality": model.lm.cfg.cardinality,
        "codec_minutes": round(codec_minutes, 2),
        "pipeline_minutes": round(codec_minutes + prep_minutes + train_minutes + eval_minutes, 2),
        "codec": {"train": "trained (offline.yaml)", "kmeans": "k-means calibrated"}.get(
            args.codec, args.codec
        ),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
