"""The offline codec: trained (``music-gen codec train``) against k-means calibration.

Both codecs have the same architecture and codebooks (configs/codec/offline.yaml: 16 kHz,
50 Hz, 4 x 256) and see the same synthetic music (four classes). The baseline is today's
offline codec: random weights with codebooks fitted by k-means (``codec calibrate``);
the trained one runs ``codec train`` (Ray Train, 2 workers) for ``--steps``. Both are
scored by ``codec evaluate`` on held-out clips rendered with another seed: SI-SNR and
mel distance of the reconstructions, and whether the reconstructions still sound like
their class (the log-mel classifier of ``evaluate``'s audio adherence, fitted on real
clips). Prints one JSON line::

    python benchmarks/codec.py                 # about 5 minutes on 2 cores
    python benchmarks/codec.py --steps 100 --clips 32   # a quick look
    python benchmarks/codec.py --adversarial --set codec.train.adversarial_start_step=50
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

CLASSES = ("sine_pad", "saw_bass", "bell", "noise_drums")
CONFIG = Path(__file__).parents[1] / "configs" / "codec" / "offline.yaml"


def by_ear(codec_dir: str, seconds: float, per_class: int) -> tuple[float, dict[str, float]]:
    """Share of reconstructed held-out clips the log-mel classifier puts in their class,
    and the SI-SNR (dB) of each class's reconstructions."""
    import torch

    from music_gen.models.codec import load_codec
    from music_gen.models.codec_training import si_snr
    from music_gen.pipelines import adherence

    codec = load_codec(codec_dir)
    classifier = adherence.fit_synth_classifier(CLASSES, codec.sample_rate)
    audio, targets = adherence.synth_clips(CLASSES, per_class, seconds, codec.sample_rate, 7)
    with torch.inference_mode():
        rebuilt = codec.decode(codec.encode(audio))[..., : audio.shape[-1]]
    predicted = classifier.predict(rebuilt)
    snr = si_snr(rebuilt, audio)  # [N]
    labels = torch.tensor(targets)
    per_class = {c: round(float(snr[labels == k].mean()), 2) for k, c in enumerate(CLASSES)}
    return float((predicted == labels.numpy()).mean()), per_class


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=96, help="training clips (4 classes)")
    parser.add_argument("--heldout", type=int, default=16, help="held-out clips")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each clip")
    parser.add_argument("--steps", type=int, default=None, help="default: the config's")
    parser.add_argument("--workdir", help="keep audio, codecs and runs here (default: temp)")
    parser.add_argument(
        "--adversarial", action="store_true", help="train with the STFT discriminator"
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="more config overrides"
    )
    args = parser.parse_args()

    from music_gen.config import load_config
    from music_gen.pipelines.calibrate import calibrate
    from music_gen.pipelines.codec.driver import train_codec
    from music_gen.pipelines.codec.evaluate import evaluate_codec
    from music_gen.pipelines.synth import write_synth_dataset
    from music_gen.platform.cluster import ensure_ray

    ensure_ray(num_cpus=2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.workdir or tmp)
        os.environ.setdefault("MUSIC_GEN_WORK_DIR", str(root / "work"))
        write_synth_dataset(root / "audio", args.clips, args.seconds, seed=0, classes=CLASSES)
        write_synth_dataset(root / "heldout", args.heldout, args.seconds, seed=1, classes=CLASSES)
        overrides = [f"codec.train.storage={root / 'runs'}", f"codec.train.name=b{time.time():.0f}"]
        if args.steps:
            overrides.append(f"codec.train.steps={args.steps}")
        if args.adversarial:
            overrides.append("codec.train.adversarial=true")
        overrides += args.set
        cfg = load_config([CONFIG], overrides)

        started = time.perf_counter()
        calibrate(str(root / "audio"), str(root / "kmeans"), cfg.codec, max_seconds=200.0)
        kmeans_minutes = (time.perf_counter() - started) / 60
        started = time.perf_counter()
        summary = train_codec(cfg, str(root / "audio"), str(root / "trained"))
        train_minutes = (time.perf_counter() - started) / 60

        scores = {}
        for name in ("kmeans", "trained"):
            result = evaluate_codec(str(root / name), str(root / "heldout"))
            accuracy, per_class = by_ear(str(root / name), 2.0, 6)
            scores[name] = {
                "si_snr_db": round(result["si_snr_db"], 2),
                "mel_distance": round(result["mel_distance"], 4),
                "by_ear_accuracy": round(accuracy, 3),
                "si_snr_db_by_class": per_class,
            }
    print(
        json.dumps(
            {
                "benchmark": "codec",
                "codec": f"{cfg.codec.num_codebooks} x {cfg.codec.cardinality} at 50 Hz, 16 kHz",
                "steps": summary["end_step"],
                "adversarial": cfg.codec.train.adversarial,
                "overrides": args.set,
                "workers": cfg.codec.train.num_workers,
                "train_minutes": round(train_minutes, 2),
                "kmeans_minutes": round(kmeans_minutes, 2),
                "kmeans": scores["kmeans"],
                "trained": scores["trained"],
                "si_snr_gain_db": round(
                    scores["trained"]["si_snr_db"] - scores["kmeans"]["si_snr_db"], 2
                ),
                "mel_distance_ratio": round(
                    scores["trained"]["mel_distance"] / scores["kmeans"]["mel_distance"], 3
                ),
                "clips": args.clips,
                "heldout_clips": args.heldout,
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
