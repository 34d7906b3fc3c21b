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
from music_gen.models.attributes import AttributeName


class Strict(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are checked.

    The docstring under each field is its description (``use_attribute_docstrings``):
    ``music-gen config reference`` renders them into docs/configuration.md.
    """

    model_config = ConfigDict(
        extra="forbid",
        validate_assignment=True,
        protected_namespaces=(),
        use_attribute_docstrings=True,
    )


class TextEncoderConfig(Strict):
    """The T5 text encoder whose features the decoder cross-attends to."""

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
    """The language model: a transformer decoder over codec tokens, conditioned on text."""

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
    attributes: list[AttributeName] = []
    """Attribute conditions appended as learned tokens to the cross-attention memory."""
    cond_dropout: float = Field(0.3, ge=0.0, le=1.0)
    """Probability of dropping all conditions while training (classifier-free guidance)."""
    melody: bool = False
    """Build a melody conditioner (MusicGen-Melody: a chromagram of a tune leads the
    sequence as a prefix, no cross-attention). Training conditions it on each segment's
    own chroma (the dataset's ``chroma`` column); a ``train.init`` model brings its own
    conditioner, and ``true`` with one that has none is an error."""
    melody_dropout: float = Field(0.5, ge=0.0, le=1.0)
    """Melody models: probability of dropping the melody alone while training, drawn
    independently of ``cond_dropout`` (audiocraft's 0.5), so that the model also learns
    to follow text without a tune and guidance works with or without one."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass to save memory."""
    text: TextEncoderConfig = TextEncoderConfig()
    """The text encoder (T5)."""


class CodecTrainConfig(Strict):
    """`music-gen codec train`: the EnCodec architecture to train and how.

    The trained codec has ``codec.num_codebooks`` codebooks of ``codec.cardinality``
    codes; the fields here give the rest of its size and the run's settings.
    """

    sample_rate: int = Field(16000, ge=1000)
    """Sample rate of the codec (audio is resampled to it as it is read)."""
    channels: Literal[1, 2] = 1
    """Audio channels the codec encodes (audio is mixed to them as it is read)."""
    ratios: list[int] = [8, 5, 4, 2]
    """Down-sampling ratios of the encoder (the decoder up-samples in reverse); their
    product is the hop, which must divide ``sample_rate`` (16000 / 320 = 50 Hz)."""
    num_filters: int = Field(8, gt=0)
    """Channels of the first convolution (doubled at each down-sampling)."""
    latent_dim: int = Field(32, gt=0)
    """Width of the latents the residual quantizer sees (the codebook vectors)."""
    lstm_layers: int = Field(1, ge=1)
    """LSTM layers at the bottleneck of encoder and decoder (transformers' Encodec needs one
    or more)."""
    pad_mode: Literal["reflect", "constant"] = "reflect"
    """How the convolutions pad their input: ``reflect`` (EnCodec's) or ``constant``
    (zeros: a seventh less time per CPU step, where reflection padding and its backward
    took a tenth of the step). Saved in the codec's config, so decoding pads the same way."""
    name: str = "codec"
    """Run name; re-running with the same name and storage resumes from its last checkpoint."""
    storage: str = "work/codec-runs"
    """Where checkpoints live: ``<storage>/<name>/checkpoint_*``."""
    steps: int = Field(2000, gt=0)
    """Optimizer steps in all (a resumed run continues up to this number)."""
    batch_size: int = Field(16, gt=0)
    """Segments per worker and step."""
    segment_seconds: float = Field(0.5, gt=0)
    """Length of the training segments audio is cut into."""
    stride_seconds: float | None = Field(0.25, gt=0)
    """Hop between segment starts (overlapping segments are cheap augmentation);
    ``None`` is the segment length."""
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    """Share of the files held out: validation SI-SNR and mel distance are measured on them."""
    max_val_segments: int = Field(32, gt=0)
    """Held-out segments scored at each checkpoint."""
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate of Adam (warmup, then cosine as the LM's schedule)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Adam betas. EnCodec's (0.5, 0.9) suit training against a discriminator; without
    one they left the reconstructions uncorrelated with their input for hundreds of steps
    (benchmarks/codec.py)."""
    warmup_steps: int = Field(50, ge=0)
    """Linear warmup from 0 to ``lr``; a cosine decay to ``min_lr_ratio * lr`` follows."""
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)
    """Where the cosine decay ends, as a share of ``lr``."""
    grad_clip: float = Field(1.0, gt=0)
    """Clip the global gradient norm to this value."""
    l1_weight: float = Field(1.0, ge=0)
    """Weight of the waveform L1 loss."""
    mel_weight: float = Field(1.0, ge=0)
    """Weight of the multi-scale log-mel L1 loss."""
    si_snr_weight: float = Field(0.0, ge=0)
    """Weight of a negative SI-SNR loss (in tens of dB); 0: off."""
    waveform_weight: float = Field(1.0, ge=0)
    """Weight of the waveform loss: each clip's squared error relative to its energy (the
    loss that makes reconstructions follow the waveform, so SI-SNR rises)."""
    unquantized_steps: int = Field(200, ge=0)
    """Steps the encoder and decoder train as a plain autoencoder before the quantizer
    comes in; the codebooks are then fitted by k-means on the latents it has learned.
    During the warm-up only the (unweighted) waveform loss counts; the other losses join
    with the quantizer. An autoencoder learns the waveform in a few hundred steps, where
    one trained through the quantizer from the start can stay uncorrelated with its input
    for longer."""
    commitment_weight: float = Field(1.0, ge=0)
    """Weight of the commitment loss (encoder output towards its codebook entries)."""
    codebook_ema: float = Field(0.99, gt=0, lt=1)
    """Decay of the codebooks' exponential moving average (EnCodec: 0.99)."""
    dead_code_threshold: float = Field(2.0, ge=0)
    """A codebook entry whose average use falls below this is restarted on a batch vector."""
    kmeans_batches: int = Field(8, gt=0)
    """Batches whose latents initialise the codebooks by k-means."""
    adversarial: bool = False
    """Train against a multi-scale STFT discriminator (EnCodec's: hinge and
    feature-matching losses). The discriminator is training-only: it lives in the
    checkpoints' train state, never in the saved codec. Segments must be at least 2048
    samples long (its largest FFT)."""
    adversarial_weight: float = Field(3.0, ge=0)
    """Weight of the generator's hinge loss against the discriminator (EnCodec: 3)."""
    feature_weight: float = Field(3.0, ge=0)
    """Weight of the feature-matching loss: L1 between the discriminator's feature maps of
    real and reconstructed audio (EnCodec: 3)."""
    discriminator_lr: float = Field(3e-4, gt=0)
    """Learning rate of the discriminator's Adam (constant, ``betas`` as the codec's)."""
    discriminator_filters: int = Field(16, gt=0)
    """Channels of each scale's convolutions (audiocraft: 32; smaller is cheaper on CPU)."""
    adversarial_start_step: int = Field(100, ge=0)
    """Steps of reconstruction losses alone before the discriminator trains and its losses
    count (a random codec is too easy to tell apart to learn from)."""
    num_workers: int = Field(1, gt=0)
    """Ray Train workers (one process each, DDP between them)."""
    use_gpu: bool = False
    """One GPU per worker."""
    cpus_per_worker: float = Field(1.0, gt=0)
    """CPUs reserved per worker (fractions allowed)."""
    torch_threads: int | None = Field(None, gt=0)
    """Intra-op threads per worker; ``None`` keeps Ray's."""
    log_every: int = Field(25, gt=0)
    """Log the training losses every this many steps (rank 0)."""
    checkpoint_every: int = Field(250, gt=0)
    """Checkpoint (and score the held-out segments) every this many steps and at the end."""
    keep_checkpoints: int = Field(2, gt=0)
    """Checkpoints kept (the latest always among them)."""
    max_failures: int = Field(2, ge=-1)
    """Restarts of the worker group from the last checkpoint after a crash (-1: no limit)."""
    seed: int = 0
    """Seeds the weights, the k-means and the batches."""
    tracking_uri: str | None = None
    """MLflow tracking URI; ``None`` as for training (``$MLFLOW_TRACKING_URI`` or the work dir)."""
    experiment: str = "music-gen-codec"
    """MLflow experiment of the run."""


class CodecConfig(Strict):
    """The audio codec (EnCodec) that turns audio into codes and back."""

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
    channels: Literal[1, 2] = 1
    """2: stereo as MusicGen's stereo models have it, the mono codec run on the left and
    right channels with their codes interleaved (twice ``num_codebooks`` codes per frame).
    Not for a codec that is stereo itself (encodec's 48 kHz model)."""
    train: CodecTrainConfig = CodecTrainConfig()
    """How ``music-gen codec train`` builds and trains a codec (ignored elsewhere)."""


class DataConfig(Strict):
    """Tokenization with Ray Data (``music-gen data tokenize``) and the dataset training reads."""

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
    chroma: bool = True
    """Store each segment's chroma (dominant pitch class per code frame) in the shards:
    what training a melody model (``model.melody``) conditions on."""
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
    """Share of the source files held out for validation (whole files, picked by a hash of each
    file's name and folder, so the same files wherever the dataset lives)."""


class LoraConfig(Strict):
    """LoRA: fine-tune ``train.init`` through small low-rank adapters, the base frozen
    (``train.lora.rank=16``). The run saves the adapter alone, a few MB."""

    rank: int = Field(0, ge=0)
    """Rank of each adapter; 0 trains every weight (a full fine-tune, no LoRA)."""
    alpha: int = Field(16, gt=0)
    """Scale of the adapters' update: ``alpha / rank`` times ``B @ A``."""
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """Dropout on the adapters' input while training."""
    targets: list[Literal["self_attn", "cross_attn", "ffn"]] = Field(
        ["self_attn", "cross_attn"], min_length=1
    )
    """The LM's layers that get adapters: ``self_attn`` (qkv, out), ``cross_attn``
    (q, kv, out), ``ffn`` (fc1, fc2), in every block."""


class TrainConfig(Strict):
    """Training with Ray Train (``music-gen train``; each trial of ``music-gen tune``)."""

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
    lora: LoraConfig = LoraConfig()
    """LoRA adapters instead of a full fine-tune (``train.lora.rank > 0``; needs ``train.init``)."""
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
    """A Ray Tune sweep over the training of ``train`` (``music-gen tune``)."""

    name: str = "sweep"
    """Sweep name; re-running with the same name and storage resumes it (finished trials
    are not re-run). Trials are training runs named ``<name>-<trial id>``."""
    storage: str = "work/tune"
    """Where the sweep's state and its trials' checkpoints live: ``<storage>/<name>/``."""
    search_space: dict[str, Any] = {}
    """Dotted config key -> a distribution: ``{"loguniform": [lo, hi]}``,
    ``{"uniform": [lo, hi]}``, ``{"randint": [lo, hi]}`` (hi excluded), ``{"choice": [...]}``
    or ``{"grid": [...]}`` (every value, crossed with the other grid keys). Keys are
    checked against the config schema (``train.lr``, ``model.num_layers``, ``model.dim``,
    ``model.cond_dropout``, ``train.batch_size``, ...) before anything starts."""
    search: Literal["random", "grid"] = "random"
    """``random``: ``num_samples`` draws from the distributions; ``grid``: every value of
    each ``choice``/``grid`` key crossed, ``num_samples`` times."""
    metric: str = "val_loss"
    """What trials are compared and stopped on; one that training reports (``val_loss`` or
    ``val_loss_cb<k>``, at every checkpoint)."""
    mode: Literal["min", "max"] = "min"
    """Whether a lower or a higher ``metric`` is better."""
    num_samples: int = Field(4, gt=0)
    """Trials to run (with ``search: grid``: repeats of the whole grid)."""
    max_concurrent_trials: int | None = Field(None, gt=0)
    """Trials running at once; ``None`` derives it from the cluster's CPUs (and GPUs) and
    each trial's needs: ``train.num_workers x train.cpus_per_worker`` (plus
    ``train.gpus_per_worker`` with ``train.use_gpu``) and ``trial_cpus``."""
    trial_cpus: float = Field(0.05, gt=0)
    """CPUs reserved for each trial's own process (it only drives its trainer; the
    trainer's workers reserve their own)."""
    data_cpus: float = Field(0.5, ge=0)
    """CPUs left free for Ray Data (each trial reads its shards) when deriving
    ``max_concurrent_trials``."""
    grace_period: int = Field(20, gt=0)
    """ASHA: training steps before a trial may be stopped early."""
    reduction_factor: float = Field(2.0, gt=1)
    """ASHA: at each rung only the best 1/reduction_factor of the trials go on."""
    max_t: int | None = Field(None, gt=0)
    """ASHA: the last rung in steps; ``None`` is ``train.steps``."""
    seed: int | None = 0
    """Seeds the random search (``None``: a new draw every sweep)."""


class AutoscalingSettings(Strict):
    """Ray Serve's ``autoscaling_config`` of the model deployment (same names as Ray's)."""

    min_replicas: int = Field(1, ge=0)
    """Fewest replicas kept running (0 lets an idle app scale to nothing)."""
    max_replicas: int = Field(1, gt=0)
    """Most replicas; each one reserves ``num_cpus``/``num_gpus``."""
    initial_replicas: int | None = Field(None, ge=0)
    """Replicas at start-up; ``None`` is ``min_replicas``."""
    target_ongoing_requests: float = Field(4.0, gt=0)
    """Ongoing requests per replica the autoscaler aims at (about the batch size)."""
    upscale_delay_s: float = Field(10.0, ge=0)
    """How long the load must stay above target before a replica is added."""
    downscale_delay_s: float = Field(60.0, ge=0)
    """How long the load must stay below target before a replica is removed."""
    metrics_interval_s: float = Field(2.0, gt=0)
    """How often replicas report their load to the autoscaler."""
    look_back_period_s: float = Field(10.0, gt=0)
    """Window over which the reported load is averaged."""


class ServeConfig(Strict):
    """The HTTP app on Ray Serve (``music-gen serve``, ``serve run`` / ``serve deploy``)."""

    model: str | None = None
    """What replicas load by default: a checkpoint dir, a transformers dir, a hub id,
    ``runs:/...``, ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``."""
    models: list[str] = []
    """Registered models a request may name in its ``model`` field (``NAME@ALIAS`` or
    ``NAME/VERSION``), loaded on demand by Ray Serve's model multiplexing."""
    max_models_per_replica: int = Field(2, gt=0)
    """Multiplexed models kept loaded per replica (least recently used evicted)."""
    host: str = "127.0.0.1"
    """Address the HTTP proxy binds (``music-gen serve``)."""
    port: int = Field(8000, gt=0, lt=65536)
    """Port of the HTTP proxy (``music-gen serve``)."""
    app_name: str = "music-gen"
    """Ray Serve application name."""
    route_prefix: str = "/"
    """URL prefix of the application."""
    num_replicas: int = Field(1, gt=0)
    """Fixed replica count of the model deployment when ``autoscaling_config`` is None."""
    autoscaling_config: AutoscalingSettings | None = None
    """Autoscale the model deployment between min and max replicas (``None``: fixed)."""
    num_cpus: float = Field(1.0, ge=0)
    """CPUs reserved per model replica (fractions allowed)."""
    num_gpus: float = Field(0.0, ge=0)
    """GPUs per model replica (fractions allowed); above 0 the replica runs on CUDA in bf16."""
    ingress_num_cpus: float = Field(0.1, ge=0)
    """CPUs reserved by the HTTP ingress replica (it only validates and forwards)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Language-model precision: ``auto`` is bf16 on a GPU replica and fp32 on a CPU one (a
    seeded request then draws the same codes alone or batched; in bf16 one batched with
    longer prompts, its text padded, may draw others)."""
    max_batch_size: int = Field(8, gt=0)
    """Requests generated together in one batch on a replica (1: no batching)."""
    batch_wait_timeout_s: float = Field(0.05, ge=0)
    """How long a batch waits to fill up after its first request."""
    batch_mixed_durations: bool = True
    """Rows of different durations share a generation (run to the longest, each cut to its
    own). The last K - 1 frames of a row cut from a longer batch may then differ from a run
    alone with its seed; ``False`` batches only equal durations, so seeds reproduce exactly."""
    max_ongoing_requests: int | None = Field(None, gt=0)
    """Requests a model replica holds at once; ``None`` is twice the batch size."""
    max_queued_requests: int = Field(64, ge=-1)
    """Requests waiting for a replica before new ones get 503 + Retry-After (-1: no limit)."""
    retry_after_s: int = Field(2, ge=0)
    """``Retry-After`` seconds sent with a 503."""
    request_timeout_s: float = Field(300.0, gt=0)
    """Deadline of a request (a request may ask for less with ``timeout_s``); past it: 504."""
    max_body_bytes: int = Field(4_194_304, gt=0)
    """Largest request body accepted (a melody upload counts, base64); larger bodies get 413."""
    max_duration: float = Field(30.0, gt=0)
    """Longest clip a request may ask for, in seconds."""
    max_melody_seconds: float = Field(60.0, gt=0)
    """Longest melody upload (melody models), in seconds; longer ones get 422."""
    stream_chunk_seconds: float = Field(1.0, gt=0)
    """New audio per chunk on ``/generate/stream``."""
    stream_overlap_frames: int = Field(8, ge=0)
    """Codec frames decoded again before each stream chunk, so that joins are seamless."""
    api_keys_env: str = "MUSIC_GEN_API_KEYS"
    """Environment variable holding comma-separated API keys (unset/empty: no keys)."""
    api_keys_file: str | None = None
    """File with one API key per line (added to the environment's). Keys are never logged."""
    cors_origins: list[str] = []
    """Origins allowed to call the API from a browser (``["*"]``: any)."""
    follow_alias_s: float | None = Field(None, gt=0)
    """Poll the registry every this many seconds and reload when the served alias moved
    (``None``: only on ``POST /admin/reload`` or a redeploy)."""
    env_vars: dict[str, str] = {}
    """Environment of the app's replicas (e.g. ``MLFLOW_TRACKING_URI``, ``MUSIC_GEN_WORK_DIR``)."""
    heartbeat_s: float = Field(2.0, gt=0)
    """How often replicas report what they serve (``GET /models``) and look for reloads."""


class Config(Strict):
    """A run's whole config: one section per part of the platform."""

    model: ModelConfig = ModelConfig()
    """The language model's size and conditioning."""
    codec: CodecConfig = CodecConfig()
    """The audio codec, and how ``codec train`` trains one."""
    data: DataConfig = DataConfig()
    """Tokenizing audio into a dataset of codes."""
    train: TrainConfig = TrainConfig()
    """Training the language model."""
    tune: TuneConfig = TuneConfig()
    """Sweeps over the training settings."""
    serve: ServeConfig = ServeConfig()
    """Serving over HTTP."""


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
