"""Typed configs for every part of the platform, YAML loading and dotted overrides.

A run's config is one ``Config`` tree. Presets under ``configs/`` are small YAML
deltas over the defaults written here; the command line adds dotted overrides::

    music-gen train --config configs/train/debug.yaml train.lr=3e-4 model.dim=512

Unknown keys and wrong types are rejected with the key's dotted name.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from music_gen.errors import ConfigError


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are checked."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class TextEncoderConfig(Strict):
    source: str | None = None
    """Local directory or hub id of a T5 encoder (e.g. ``t5-base``). ``None`` builds a
    small random T5 from the fields below with the byte-level ByT5 tokenizer (offline)."""
    dim: int = Field(64, gt=0)
    """Width of the random T5 (used only when ``source`` is None)."""
    num_layers: int = Field(2, gt=0)
    """Layers of the random T5 (used only when ``source`` is None)."""
    num_heads: int = Field(4, gt=0)
    """Heads of the random T5 (used only when ``source`` is None)."""
    max_length: int = Field(64, gt=0)
    """Prompts are cut to this many tokens."""
    freeze: bool = True
    """Keep the text encoder frozen while training (MusicGen does)."""


class ModelConfig(Strict):
    preset: Literal["debug", "small", "medium", "large"] = "debug"
    """Size preset (see ``music_gen.models.lm.PRESETS``); the fields below override it."""
    dim: int | None = Field(None, gt=0)
    """Transformer width; ``None`` takes the preset's."""
    num_layers: int | None = Field(None, gt=0)
    """Decoder layers; ``None`` takes the preset's."""
    num_heads: int | None = Field(None, gt=0)
    """Attention heads; ``None`` takes the preset's."""
    ffn_dim: int | None = Field(None, gt=0)
    """Feed-forward width; ``None`` is 4 x dim."""
    num_codebooks: int | None = Field(None, gt=0)
    """Parallel codebooks K; ``None`` takes the codec's, a number must equal it."""
    cardinality: int | None = Field(None, gt=1)
    """Codes per codebook (the special token is one more); ``None`` takes the codec's."""
    max_frames: int = Field(1500, gt=0)
    """Context length in codec frames (MusicGen: 1500 = 30 s at 50 Hz)."""
    attributes: list[Literal["genre", "mood", "key", "bpm", "instrument"]] = []
    """Attribute conditions appended as learned tokens to the cross-attention memory."""
    cond_dropout: float = Field(0.3, ge=0.0, le=1.0)
    """Probability of dropping all conditions while training (classifier-free guidance)."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    text: TextEncoderConfig = TextEncoderConfig()


class CodecConfig(Strict):
    backend: Literal["transformers", "encodec"] = "transformers"
    """``transformers``: ``EncodecModel`` (MusicGen's 32 kHz codec); ``encodec``: the encodec package."""
    source: str | None = None
    """A codec directory (ours or transformers'), a hub id, or ``None`` for random weights."""
    preset: Literal["tiny", "musicgen"] = "tiny"
    """Architecture for random weights (``source`` None): ``tiny`` is the small offline codec."""
    num_codebooks: int = Field(4, gt=0)
    """Codebooks of a random ``tiny`` codec."""
    cardinality: int = Field(256, gt=1)
    """Codebook size of a random ``tiny`` codec."""
    sample_rate: int = Field(24000, gt=0)
    """encodec package only: 24000 (mono) or 48000 (stereo)."""
    bandwidth: float = Field(6.0, gt=0)
    """encodec package only: target bandwidth in kbps (1.5, 3, 6, 12, 24)."""


class DataConfig(Strict):
    input: str | None = None
    """Directory of audio files (with optional sidecar JSON) or a JSONL/CSV manifest
    (local path or any URI pyarrow opens: ``s3://``, ``gs://``)."""
    output: str | None = None
    """Directory of the tokenized dataset (Parquet shards, errors, progress markers)."""
    segment_seconds: float = Field(30.0, gt=0)
    """Length of each training segment."""
    stride_seconds: float | None = Field(None, gt=0)
    """Hop between segment starts; ``None`` is the segment length (no overlap)."""
    min_seconds: float = Field(1.0, ge=0)
    """Files shorter than this are errors ("too short"); shorter tails are dropped."""
    pad_tail: bool = False
    """Pad the last short segment with silence to the full length (else it is kept shorter)."""
    channels: Literal[1, 2] = 1
    """Mix to mono (1) or keep stereo (2); must match the codec."""
    normalize: Literal["peak", "loudness", "none"] = "peak"
    """Level normalisation of each file before it is cut and encoded."""
    silence_db: float = -60.0
    """Files whose RMS level is below this (dBFS) are errors ("silent")."""
    files_per_shard: int = Field(64, gt=0)
    """Input files per output shard; a shard is the unit of resume."""
    batch_size: int = Field(8, gt=0)
    """Segments per codec batch."""
    num_actors: int = Field(1, gt=0)
    """Codec actors in the pool."""
    encode_num_cpus: float = Field(1.0, gt=0)
    """CPUs reserved per codec actor (fractions allowed, e.g. 0.5 on a 2-core machine)."""
    encode_num_gpus: float | None = Field(None, ge=0)
    """GPUs per codec actor; ``None`` is 1 when the cluster has GPUs, else 0."""
    decode_num_cpus: float = Field(1.0, gt=0)
    """CPUs reserved per decode task (read, resample, segment)."""
    max_error_fraction: float = Field(0.1, ge=0.0, le=1.0)
    """Fail the run when more than this share of files is bad."""
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    """Share of segments held out for validation while training."""


class TrainConfig(Strict):
    name: str = "music-gen"
    """Run name; re-running with the same name and storage resumes from its last checkpoint."""
    storage: str = "work/runs"
    """Where checkpoints live (local path or s3://, gs://): ``<storage>/<name>/checkpoint_*``."""
    init: str | None = None
    """Start point: ``None`` (the model preset from scratch), our checkpoint dir, a
    transformers MusicGen dir or hub id, or ``models:/NAME@ALIAS``."""
    steps: int = Field(1000, gt=0)
    """Optimizer steps in all (a resumed run continues up to this number)."""
    batch_size: int = Field(8, gt=0)
    """Per-worker batch size (segments)."""
    lr: float = Field(1e-4, gt=0)
    """Peak learning rate of AdamW."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW weight decay (matrices only; norms, biases and embeddings get none)."""
    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW betas."""
    warmup_steps: int = Field(100, ge=0)
    """Linear warmup from 0 to ``lr``; a cosine decay to ``min_lr_ratio * lr`` follows."""
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    """Where the cosine decay ends, as a share of ``lr``."""
    grad_clip: float = Field(1.0, gt=0)
    """Clip the global gradient norm to this value."""
    precision: Literal["fp32", "bf16", "fp16"] = "bf16"
    """Autocast dtype on GPU (fp16 adds a gradient scaler); the CPU always runs fp32."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """Data parallelism: ``ddp`` replicates the model, ``fsdp`` shards it (FSDP2, per block)."""
    segment_curriculum: dict[int, float] = {}
    """Step -> segment seconds, e.g. ``{0: 10, 2000: 20, 4000: 30}``; empty uses the data's length."""
    ema_decay: float | None = Field(None, gt=0, lt=1)
    """Keep an exponential moving average of the weights (e.g. 0.999); it is what checkpoints
    and the final model hold for generation."""
    num_workers: int = Field(1, gt=0)
    """Ray Train workers (one process each, DDP between them)."""
    use_gpu: bool = False
    """One GPU per worker (``gpus_per_worker``)."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs reserved per worker; fractions let two workers share a 2-core machine with Ray Data."""
    gpus_per_worker: float = Field(1.0, gt=0)
    """GPUs reserved per worker when ``use_gpu``."""
    torch_threads: int | None = Field(None, gt=0)
    """Intra-op threads per worker; ``None`` keeps Ray's (the reserved CPUs, at least 1)."""
    log_every: int = Field(10, gt=0)
    """Log train loss, learning rate and throughput every this many steps (rank 0)."""
    checkpoint_every: int = Field(200, gt=0)
    """Save a checkpoint (and compute the validation loss) every this many steps and at the end."""
    eval_every: int = Field(200, gt=0)
    """Validation loss plus generated samples (audio, spectrogram) every this many steps."""
    val_batches: int | None = Field(None, gt=0)
    """Validation batches per worker at each evaluation; ``None`` is the whole split."""
    eval_samples: int = Field(2, ge=0)
    """Audio samples generated at each evaluation (0: none)."""
    eval_sample_seconds: float = Field(2.0, gt=0)
    """Length of each generated sample."""
    eval_prompts: list[str] = []
    """Prompts of the samples; empty takes captions from the validation split."""
    keep_checkpoints: int = Field(2, gt=0)
    """Checkpoints kept: the best by validation loss (the latest is always kept too)."""
    max_failures: int = Field(2, ge=-1)
    """Restarts of the worker group from the last checkpoint after a failure (-1: no limit)."""
    shuffle_buffer: int = Field(256, ge=0)
    """Rows in each worker's local shuffle buffer (0: stream order)."""
    seed: int = 0
    """Seeds weights, crops and condition dropout."""
    tracking_uri: str | None = None
    """MLflow tracking URI; ``None`` uses $MLFLOW_TRACKING_URI, else ``sqlite:///<work dir>/mlflow.db``."""
    experiment: str = "music-gen"
    """MLflow experiment of the run."""
    register_as: str | None = None
    """Register the final model under this name in the MLflow registry (``None``: only log it)."""


class TuneConfig(Strict):
    num_samples: int = Field(4, gt=0)
    metric: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    search_space: dict[str, Any] = {}
    """Dotted key -> ``{"loguniform": [lo, hi]}``, ``{"choice": [...]}`` or ``{"uniform": [lo, hi]}``."""
    max_concurrent: int = Field(1, gt=0)
    grace_period: int = Field(50, gt=0)
    """ASHA: steps before a trial may be stopped."""


class ServeConfig(Strict):
    model: str | None = None
    """What replicas load: a checkpoint dir, a transformers dir, a hub id or ``models:/NAME@ALIAS``."""
    host: str = "127.0.0.1"
    port: int = Field(8000, gt=0, lt=65536)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, gt=0)
    target_ongoing_requests: float = Field(2.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)
    num_cpus: float = Field(1.0, gt=0)
    max_batch_size: int = Field(8, gt=0)
    batch_wait_timeout_s: float = Field(0.05, ge=0)
    max_duration: float = Field(30.0, gt=0)


class Config(Strict):
    model: ModelConfig = ModelConfig()
    codec: CodecConfig = CodecConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    tune: TuneConfig = TuneConfig()
    serve: ServeConfig = ServeConfig()


def _format_error(err: ValidationError) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"]) or "<root>"
    if first["type"] == "extra_forbidden":
        return f"unknown config key '{key}'"
    return f"bad value for '{key}': {first['msg']} (got {first.get('input')!r})"


def _merge(base: dict, delta: dict) -> dict:
    """Deep-merge ``delta`` into a copy of ``base`` (dicts merge, anything else replaces)."""
    merged = dict(base)
    for key, value in delta.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def parse_override(text: str) -> dict:
    """``"train.lr=3e-4"`` -> ``{"train": {"lr": 0.0003}}`` (values parsed as YAML)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    nested: Any = value
    for part in reversed(key.split(".")):
        nested = {part: nested}
    return nested


def build_config(tree: dict) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def load_config(files: Iterable[str | Path] = (), overrides: Iterable[str] = ()) -> Config:
    """Defaults, then each YAML file in order, then dotted overrides."""
    tree: dict = {}
    for path in files:
        tree = _merge(tree, read_yaml(path))
    for text in overrides:
        tree = _merge(tree, parse_override(text))
    return build_config(tree)


def apply_overrides(config: Config, overrides: Iterable[str]) -> Config:
    tree = config.model_dump()
    for text in overrides:
        tree = _merge(tree, parse_override(text))
    return build_config(tree)
