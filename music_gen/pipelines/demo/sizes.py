"""The demo's names and how big each stage is (``--quick`` picks ``QUICK``)."""

from __future__ import annotations

from dataclasses import dataclass

MODEL_NAME = "music-gen"
"""The registered model (as ``configs/serve/local.yaml`` serves it)."""
APP_NAME = "music-gen-demo"
EXPERIMENT = "music-gen-demo"
STAGES = ("synth", "codec", "tokenize", "train", "tune", "evaluate", "registry", "serve")
THREADS = 1
"""Torch threads of every worker and of the demo's own process. On a busy 2-core machine
two threads contend for the cores: measured here under load, a step of the quick model
took 1.7 s with two threads and 0.03 s with one; a codec step 8.9 s and 0.48 s."""
WORKER_CPUS = 1.5
"""CPUs a training worker reserves: one worker (two DDP workers on 2 busy cores waited for
data 40% of the time and stepped slower than one), half a core left to Ray Data."""
CLASSES = ("sine_pad", "saw_bass", "bell", "noise_drums")
"""Four synth classes far apart in timbre and register (as ``benchmarks/learn.py``)."""


@dataclass(frozen=True)
class Sizes:
    """How big each stage is. ``DEFAULT`` fits about 10 minutes on 2 cores."""

    name: str
    clips: int
    """Synth clips (the classes cycle)."""
    seconds: float
    """Length of each clip (and of each tokenized segment)."""
    codec: str
    """``calibrate`` (k-means codebooks, random decoder: seconds, but what plays is
    noise-like) or ``train`` (configs/codec/offline.yaml's recipe on 2 Ray Train workers).
    The default sizes train: 700 steps took 3.9 of a 7.5-minute first run on 2 cores, and
    the models' generations were heard as their prompt's class 62-69% of the time (chance
    25%; with 300 steps on one worker, 31-44%). ``--quick`` calibrates (the tests' size)."""
    codec_steps: int
    """Steps of ``--codec train``."""
    codec_batch: int
    cardinality: int
    """Codes per codebook (4 codebooks)."""
    model: tuple[str, ...]
    """Dotted overrides of the language model's size."""
    train_steps: int
    train_batch: int
    train_lr: float
    train_samples: int
    """Audio samples generated and logged to MLflow at the end of training."""
    tune_steps: int
    """Fine-tuning steps of each of the sweep's 2 trials."""
    eval_per_class: int
    """Generations per class for prompt adherence."""
    eval_seconds: float
    fad_clips: int
    serve_seconds: float
    """Length of each clip asked of the server."""
    serve_per_class: int
    """Prompts sent per class."""


SYNTH_MODEL = (
    "model.dim=128", "model.num_layers=4", "model.num_heads=4", "model.max_frames=200",
    "model.text.dim=256", "model.text.num_layers=2", "model.text.num_heads=4",
)  # fmt: skip
"""configs/model/synth.yaml: the model that learns the synth classes (benchmarks/learn.py)."""

DEFAULT = Sizes(
    name="default", clips=160, seconds=4.0, codec="train", codec_steps=700, codec_batch=8,
    cardinality=128, model=SYNTH_MODEL, train_steps=400, train_batch=16, train_lr=2e-3,
    train_samples=2, tune_steps=20, eval_per_class=4, eval_seconds=2.0, fad_clips=16,
    serve_seconds=3.0, serve_per_class=1,
)  # fmt: skip
QUICK = Sizes(
    name="quick", clips=24, seconds=2.0, codec="calibrate", codec_steps=30, codec_batch=8,
    cardinality=64,
    model=(
        "model.dim=64", "model.num_layers=2", "model.num_heads=4", "model.max_frames=100",
        "model.text.dim=64", "model.text.num_layers=1", "model.text.num_heads=4",
    ),
    train_steps=40, train_batch=8, train_lr=3e-3, train_samples=0, tune_steps=4,
    eval_per_class=2, eval_seconds=1.0, fad_clips=8, serve_seconds=1.0, serve_per_class=1,
)  # fmt: skip
SIZES = {"default": DEFAULT, "quick": QUICK}
