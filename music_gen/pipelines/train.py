"""Training: a Ray Train V2 ``TorchTrainer`` around a plain PyTorch loop.

Read top to bottom:

1. pieces of one step, plain PyTorch and unit-tested without Ray: the segment-length
   curriculum, the learning-rate schedule, random crops, the delay pattern with its
   padding mask, the per-codebook loss, condition dropout, EMA;
2. setup of a worker: the start model (preset from scratch, our checkpoint, a
   transformers MusicGen, or the run's own last checkpoint), DDP/FSDP, AdamW;
3. ``train_loop_per_worker``: setup, then one flat loop. Ray appears only at the lines
   marked ``# [ray]``: the data shard, the checkpoint to resume from, ``report``;
4. the driver (``train``): fail-fast checks, the Ray Data splits, the trainer, and the
   final model logged to MLflow.

One step on a batch of rows (one row = one tokenized segment)::

    codes [B, K, T]  (random crop to the current segment length, padded)
      -> delayed [B, K, S = T + K - 1] and mask [B, K, S] (the pattern's real codes, not padding)
      -> inputs = [start ; delayed[..., :-1]], logits = lm(inputs, memory) [B, K, S, card]
      -> loss = mean over codebooks of the cross-entropy on the masked positions

Checkpoints (``checkpoints.py``) are our model directory plus optimizer state, step and
data position; Ray keeps the best ``train.keep_checkpoints`` by validation loss and
always the latest, which a re-run with the same name and storage resumes from.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from music_gen.config import Config
from music_gen.errors import CheckpointError, ConfigError, MusicGenError
from music_gen.models.patterns import build_delay, valid_mask
from music_gen.pipelines import checkpoints, shards

# Shard columns a worker reads (``source`` only for the validation split).
COLUMNS = (
    "codes",
    "num_codebooks",
    "frames",
    "caption",
    "genre",
    "moods",
    "key",
    "bpm",
    "instrument",
)
ATTRIBUTES = ("genre", "moods", "key", "bpm", "instrument")
VAL_METRIC = "val_loss"
CRASH_ENV = "MUSIC_GEN_TEST_CRASH"
"""Test hook: ``RANK:STEP:MARKER`` makes worker RANK exit hard after STEP once (until MARKER exists)."""


# =============================================================================
# 1. Pieces of a step (plain PyTorch)
# =============================================================================


def segment_frames(
    curriculum: dict[int, float], step: int, frame_rate: float, max_frames: int
) -> int:
    """Frames per training segment at ``step``: the curriculum's entry for the last
    milestone at or before ``step`` (empty: the model's whole context), capped at the context.
    """
    seconds = None
    for milestone in sorted(curriculum):
        if milestone <= step:
            seconds = curriculum[milestone]
    if seconds is None:
        return max_frames
    return max(1, min(max_frames, round(seconds * frame_rate)))


def lr_factor(step: int, warmup: int, total: int, min_ratio: float) -> float:
    """Share of the peak learning rate at ``step``: linear warmup, then cosine to ``min_ratio``."""
    if step < warmup:
        return (step + 1) / warmup  # never exactly 0: the first step already moves
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def crop_codes(
    codes: Sequence[np.ndarray], frames: int, rng: np.random.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``[K, T_i]`` codes -> ``[B, K, T]`` (padded with 0) and lengths ``[B]``.

    Each row longer than ``frames`` is cut to a random window (``rng``) or its start
    (``rng`` None: validation). ``T`` is ``frames`` or the longest row if all are shorter.
    """
    lengths = [min(frames, c.shape[-1]) for c in codes]
    width = max(lengths)
    out = np.zeros((len(codes), codes[0].shape[0], width), dtype=np.int64)  # [B, K, T]
    for row, (c, length) in enumerate(zip(codes, lengths, strict=True)):
        start = 0 if rng is None else int(rng.integers(0, c.shape[-1] - length + 1))
        out[row, :, :length] = c[:, start : start + length]
    return torch.from_numpy(out), torch.tensor(lengths)


def delay_inputs(
    codes: torch.Tensor, lengths: torch.Tensor, special: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``codes [B, K, T]`` + ``lengths [B]`` -> ``(inputs, targets, mask)``, each ``[B, K, S]``.

    ``targets`` is the delayed sequence, ``mask`` its positions holding real codes (the
    pattern's valid slots within each row's length), and ``inputs`` the targets shifted
    right by one behind the start token: position s sees steps < s and predicts step s.
    """
    batch, num_codebooks, _ = codes.shape
    delayed = build_delay(codes, special)  # [B, K, S]
    steps = delayed.shape[-1]
    frame = torch.arange(steps)[None, :] - torch.arange(num_codebooks)[:, None]  # [K, S]
    in_row = frame[None] < lengths[:, None, None]  # [B, K, S]
    mask = valid_mask(num_codebooks, steps)[None] & in_row  # [B, K, S]
    targets = delayed.masked_fill(~mask, special)  # padding reads as "no code", as in generation
    start = targets.new_full((batch, num_codebooks, 1), special)
    inputs = torch.cat([start, targets[..., :-1]], dim=-1)  # [B, K, S]
    return inputs, targets, mask


def codebook_losses(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy per codebook over the masked positions, and their counts: ``[K]``, ``[K]``.

    Sums rather than means so that validation can add them up over batches and workers.
    """
    safe = targets.masked_fill(~mask, 0)  # the special token is no class of the heads
    ce = F.cross_entropy(logits.float().flatten(0, 2), safe.flatten(), reduction="none").view_as(
        targets
    )  # [B, K, S]
    weights = mask.to(ce.dtype)
    return (ce * weights).sum(dim=(0, 2)), weights.sum(dim=(0, 2))  # [K], [K]


def mean_loss(sums: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-codebook means ``[K]`` and their mean (the training loss)."""
    per_codebook = sums / counts.clamp_min(1)
    return per_codebook.mean(), per_codebook


def condition_dropout(batch: int, probability: float, generator: torch.Generator) -> torch.Tensor:
    """``[B]`` bool: rows trained on the null condition (classifier-free guidance)."""
    return torch.rand(batch, generator=generator) < probability


class EMA:
    """Exponential moving average of named parameters (kept in fp32)."""

    def __init__(self, named: dict[str, torch.Tensor], decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().float().clone() for k, v in named.items()}

    @torch.no_grad()
    def update(self, named: dict[str, torch.Tensor]) -> None:
        for key, value in named.items():
            self.shadow[key].lerp_(value.detach().float(), 1 - self.decay)

    def load(self, weights: dict[str, torch.Tensor]) -> None:
        for key, value in weights.items():
            if key in self.shadow:
                self.shadow[key].copy_(value)


class TrainModule(nn.Module):
    """The modules that train, as one module for DDP/FSDP: conditioner, then the LM."""

    def __init__(self, lm: nn.Module, conditioner: nn.Module):
        super().__init__()
        self.lm = lm
        self.conditioner = conditioner

    def forward(self, inputs, texts, attributes, drop):
        memory, memory_mask = self.conditioner(texts, attributes, drop)  # [B, L, D], [B, L]
        return self.lm(inputs, memory, memory_mask)  # [B, K, S, card]


def named_trainable(core: TrainModule) -> dict[str, torch.Tensor]:
    """Trainable parameters under ``MusicGen.state_dict`` names (``lm.*``, ``cond.*``)."""
    named = {f"lm.{k}": p for k, p in core.lm.named_parameters() if p.requires_grad}
    for key, param in core.conditioner.named_parameters():
        if param.requires_grad and not key.startswith("encoder."):
            named[f"cond.{key}"] = param
    return named


def build_optimizer(
    core: TrainModule, lr: float, weight_decay: float, betas
) -> torch.optim.Optimizer:
    """AdamW; matrices and embeddings decay, norms and biases do not (as in nanoGPT)."""
    params = [p for p in core.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))


# -- batches ---------------------------------------------------------------------------


@dataclass
class Batch:
    codes: torch.Tensor  # [B, K, T]
    lengths: torch.Tensor  # [B]
    texts: list[str]
    attributes: list[dict]


def _value(value):
    """A shard cell as plain Python (numpy scalars and arrays, NaN as missing)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return [str(v) for v in value]
    if isinstance(value, float | np.floating) and math.isnan(value):
        return None
    return value.item() if isinstance(value, np.generic) else value


def make_batch(rows, frames: int, rng: np.random.Generator | None) -> Batch:
    """A columnar batch of shard rows (a pyarrow table, or columns as numpy arrays or lists)
    -> cropped codes and conditions."""
    if hasattr(rows, "column_names"):  # pyarrow: Ray hands it over without conversion
        rows = {name: rows.column(name).to_pylist() for name in rows.column_names}
    codes, lengths = crop_codes(shards.batch_codes(rows), frames, rng)
    texts = [str(t) for t in rows["caption"]]
    attributes = [
        {name: _value(rows[name][i]) for name in ATTRIBUTES if name in rows}
        for i in range(len(texts))
    ]
    return Batch(codes, lengths, texts, attributes)


# =============================================================================
# 2. Setup of a worker
# =============================================================================


def resolve_codec_source(cfg: Config) -> str:
    """Directory of the codec the dataset was tokenized with.

    ``codec.source`` when given, else ``<data>/codec`` when it holds one, else the codec
    named in the dataset's metadata when that is a directory.
    """
    # Absolute paths: Ray Train workers do not run in the driver's working directory.
    if cfg.codec.source:
        source = Path(cfg.codec.source).expanduser()
        return str(source.resolve()) if source.exists() else cfg.codec.source
    data = cfg.data.output
    local = Path(data) / "codec"
    if (local / "codec.json").is_file():
        return str(local.resolve())
    name = shards.codec_info(data).get("codec", "")
    if name and Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    raise ConfigError(
        f"dataset {data} does not hold its codec (metadata says {name!r}): pass "
        "codec.source=DIR, the codec it was tokenized with"
    )


def load_start_model(cfg: Config, codec_source: str | None, resume_dir: str | None):
    """The model a worker starts from: the run's checkpoint, ``train.init``, or the preset."""
    from music_gen import MusicGen
    from music_gen.models.codec import load_codec

    if resume_dir is not None:
        model = MusicGen.from_pretrained(resume_dir)
    elif cfg.train.init:
        model = MusicGen.from_pretrained(cfg.train.init)
    else:
        torch.manual_seed(cfg.train.seed)  # every worker builds the same weights
        model = MusicGen.from_config(cfg.model, load_codec(codec_source))
    # Training switches that apply whatever the start point.
    model.lm.cfg = replace(model.lm.cfg, gradient_checkpointing=cfg.model.gradient_checkpointing)
    cond = model.conditioner
    cond.freeze = cfg.model.text.freeze
    cond.encoder.requires_grad_(not cond.freeze)
    return model


def check_model_codec(model, meta: dict) -> None:
    """The start model's codec must be the one the dataset was tokenized with."""
    codec = model.codec
    ours = (codec.num_codebooks, codec.cardinality, float(codec.frame_rate), codec.sample_rate)
    theirs = (
        meta["num_codebooks"],
        meta["cardinality"],
        float(meta["frame_rate"]),
        meta["sample_rate"],
    )
    if ours != theirs:
        raise ConfigError(
            "the start model's codec (K, cardinality, frame rate, sample rate) = "
            f"{ours} differs from the dataset's {theirs}: tokenize the data with the model's codec"
        )


def wrap_model(core: TrainModule, strategy: str, device: torch.device) -> nn.Module:
    """DDP (replicas) or FSDP2 (shards) across the process group; the module itself alone."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return core
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for block in core.lm.blocks:
            # LM.forward calls cross_attn.memory_kv outside the block's forward: its own
            # unit, with that method hooked, gathers the weights it needs.
            fully_shard(block.cross_attn)
            register_fsdp_forward_method(block.cross_attn, "memory_kv")
            fully_shard(block)
        frozen = {p for p in core.conditioner.encoder.parameters() if not p.requires_grad}
        return fully_shard(core, ignored_params=frozen or None)
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device] if device.type == "cuda" else None
    # The LM's buffers are constants (positions, offsets): no need to broadcast them each step.
    return DistributedDataParallel(core, device_ids=device_ids, forward_sync_buffers=False)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``wrap_model`` sharded the model (FSDP2 changes the module's class in place)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_weights(model: nn.Module, core: TrainModule) -> dict[str, torch.Tensor]:
    """All weights under ``MusicGen.state_dict`` names (under FSDP a collective, and only
    rank 0 gets them)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
    else:
        state = core.state_dict()
    weights = {}
    for key, value in state.items():
        if key.startswith("conditioner.encoder."):
            continue  # the text encoder is saved in its own format
        name = "cond." + key[len("conditioner.") :] if key.startswith("conditioner.") else key
        weights[name] = value.detach().cpu()
    return weights


def optimizer_state(model, core, optimizer) -> dict:
    """AdamW state keyed by parameter names with whole tensors, whatever the strategy, so a
    run may resume under another one (under FSDP a collective; rank 0 gets the state)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if is_sharded(model):
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=options)
    return get_optimizer_state_dict(core, optimizer)


def load_optimizer_state(model, core, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if is_sharded(model):
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, state, options=options)
    else:
        set_optimizer_state_dict(core, optimizer, state)


# =============================================================================
# 3. The loop
# =============================================================================


@dataclass
class Step:
    """What one optimizer step leaves behind."""

    loss: torch.Tensor  # scalar, detached
    per_codebook: torch.Tensor  # [K], detached
    tokens: int  # codes trained on (padding excluded)
    seconds: float
    data_seconds: float = 0.0  # of ``seconds``, waiting for and preparing the batch


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast on GPU; the CPU trains in fp32 (its bf16 matmuls are slow)."""
    if device.type != "cuda" or precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: Batch,
    drop: torch.Tensor,
    special: int,
    device: torch.device,
    precision: str,
    grad_clip: float,
    scaler=None,
) -> Step:
    """Forward, backward, clip and step on one batch."""
    started = time.perf_counter()
    inputs, targets, mask = delay_inputs(batch.codes, batch.lengths, special)  # [B, K, S] each
    inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
    with autocast(device, precision):
        logits = model(inputs, batch.texts, batch.attributes, drop.to(device))  # [B, K, S, card]
    loss, per_codebook = mean_loss(*codebook_losses(logits, targets, mask))
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
    tokens = int(batch.lengths.sum()) * batch.codes.shape[1]
    return Step(loss.detach(), per_codebook.detach(), tokens, time.perf_counter() - started)


def stream_batches(shard, batch_size: int, buffer: int, seed: int, epoch: int, skip: int):
    """Endless ``(epoch, batches_done_in_epoch, rows)`` over a worker's data shard.

    Resuming passes the saved position: the first ``skip`` batches of ``epoch`` are read
    and dropped, so the run continues with as many batches left in that epoch as it
    had. Ray Data hands blocks to workers as they ask and shuffles locally, so the rows
    skipped may differ from those the interrupted run trained on: the position is
    exact in count, approximate in content; later epochs are whole again.
    """
    while True:
        seen = 0
        for rows in shard.iter_batches(  # [ray] each call is one epoch of this worker's shard
            batch_size=batch_size,
            batch_format="pyarrow",  # the cheapest for Ray to hand over; make_batch converts
            drop_last=True,
            local_shuffle_buffer_size=buffer or None,
            local_shuffle_seed=seed + epoch if buffer else None,
        ):
            seen += 1
            if seen <= skip:
                continue
            yield epoch, seen, rows
        if seen == 0:
            raise MusicGenError(
                f"a worker's share of the training split holds no full batch of {batch_size}; "
                "lower train.batch_size or train.num_workers"
            )
        epoch, skip = epoch + 1, 0


def validate(
    model: nn.Module,
    core: TrainModule,
    val_data,
    frames: int,
    batch_size: int,
    max_batches: int | None,
    special: int,
    device: torch.device,
    precision: str,
    rank: int,
    world: int,
) -> tuple[torch.Tensor, list[str]]:
    """Validation loss per codebook ``[K]`` over the whole split (or ``max_batches`` per worker).

    ``val_data`` is the validation split as batches, the same on every worker; each
    scores every ``world``-th batch and sums and counts are added up across workers.
    Also returns the captions of the first batch (prompts for samples).
    """
    import torch.distributed as dist

    sharded = is_sharded(model)
    # Replicas score on the bare module: a DDP forward would expect the same count everywhere.
    scorer = model if sharded else core
    mine, first, count = [], None, 0
    for rows in val_data:
        if max_batches is not None and count >= max_batches * world:
            break
        first = rows if first is None else first
        if count % world == rank:
            mine.append((rows, 1.0))
        count += 1
    if first is None:
        raise MusicGenError("the validation split is empty; raise data.val_fraction")
    if sharded:  # FSDP forwards are collectives: every rank runs as many, some for nothing
        mine += [(first, 0.0)] * (math.ceil(count / world) - len(mine))
    sums = torch.zeros(core.lm.cfg.num_codebooks, dtype=torch.float64, device=device)
    counts = torch.zeros_like(sums)
    was_training = core.training
    core.eval()
    with torch.no_grad(), autocast(device, precision):
        for rows, weight in mine:
            batch = make_batch(rows, frames, rng=None)
            inputs, targets, mask = delay_inputs(batch.codes, batch.lengths, special)
            logits = scorer(inputs.to(device), batch.texts, batch.attributes, None)
            loss_sums, loss_counts = codebook_losses(logits, targets.to(device), mask.to(device))
            sums += weight * loss_sums.double()
            counts += weight * loss_counts.double()
    core.train(was_training)
    if sharded:  # FSDP keeps the root's weights gathered after a forward with no backward
        model.reshard()
    if dist.is_initialized() and world > 1:
        dist.all_reduce(sums)
        dist.all_reduce(counts)
    return (sums / counts.clamp_min(1)).float().cpu(), make_batch(first, frames, None).texts


def read_validation(shard, batch_size: int, max_batches: int | None, world: int) -> list[dict]:
    """The validation batches a run scores, in memory (codes are small: 400 B per second)."""
    batches = []
    for rows in shard.iter_batches(  # [ray]
        batch_size=batch_size, batch_format="pyarrow", drop_last=False
    ):
        batches.append(rows)
        if max_batches is not None and len(batches) >= max_batches * world:
            break
    return batches


def spectrogram_png(audio: torch.Tensor, path: Path, n_fft: int = 512) -> None:
    """Log-magnitude spectrogram of ``audio [C, S]`` as a PNG (low frequencies at the bottom)."""
    from matplotlib.image import imsave

    mono = audio.float().mean(dim=0)  # [S]
    if mono.numel() < n_fft:
        mono = F.pad(mono, (0, n_fft - mono.numel()))
    window = torch.hann_window(n_fft)
    spec = torch.stft(mono, n_fft, n_fft // 4, window=window, return_complex=True).abs()  # [F, N]
    db = 20 * torch.log10(spec + 1e-5)
    db = db.clamp_min(db.max() - 80)
    imsave(path, db.numpy(), cmap="magma", origin="lower")


def write_samples(model, prompts: list[str], seconds: float, seed: int, directory: Path) -> None:
    """Generate ``prompts`` and write ``NN.wav``, ``NN.png`` and ``prompts.txt``."""
    from music_gen.audio import write_audio

    directory.mkdir(parents=True, exist_ok=True)
    codes = model.generate_codes(prompts, duration=seconds, seed=seed)  # [B, K, T]
    audio = model.decode(codes)  # [B, C, S]
    for index, clip in enumerate(audio):
        write_audio(directory / f"{index:02d}.wav", clip, model.sample_rate)
        spectrogram_png(clip, directory / f"{index:02d}.png")
    lines = [f"{index:02d}: {prompt}" for index, prompt in enumerate(prompts)]
    (directory / "prompts.txt").write_text("\n".join(lines) + "\n")


def parse_crash(text: str | None) -> dict | None:
    """``RANK:STEP:MARKER`` (the test hook) -> dict."""
    if not text:
        return None
    rank, step, marker = text.split(":", 2)
    return {"rank": int(rank), "step": int(step), "marker": marker}


CRASH_DELAY_S = 5.0
"""The test hook waits this long before dying: Ray registers a checkpoint when it next
polls the workers (every 2 s), and with a tiny model the next steps take milliseconds,
whereas real checkpoints are minutes apart."""


def maybe_crash(crash: dict | None, rank: int, step: int) -> None:
    """Test hook: kill this worker process once, as a lost node would."""
    if crash and crash["rank"] == rank and crash["step"] == step:
        marker = Path(crash["marker"])
        if not marker.exists():
            marker.write_text(f"worker {rank} killed after step {step}\n")
            time.sleep(CRASH_DELAY_S)
            os._exit(1)


def train_loop_per_worker(config: dict) -> dict | None:
    """One Ray Train worker: setup, then the loop. Rank 0 logs, every rank steps."""
    import ray.train  # [ray]
    import ray.train.torch  # [ray]

    from music_gen import MusicGen
    from music_gen.platform.tracking import RunLogger

    cfg = Config.model_validate(config["cfg"])
    tc = cfg.train
    context = ray.train.get_context()  # [ray]
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if tc.use_gpu else torch.device("cpu")  # [ray]
    if tc.torch_threads:
        torch.set_num_threads(tc.torch_threads)

    # -- resume state -------------------------------------------------------------------
    resume = ray.train.get_checkpoint()  # [ray] the run's latest checkpoint, if any
    resume_dir = resume.to_directory() if resume is not None else None
    state = checkpoints.read_state(resume_dir) if resume_dir else {}
    start_step = int(state.get("step", 0))
    position = state.get("data_position") or {}
    epoch, skip = int(position.get("epoch", 0)), int(position.get("batch", 0))

    # -- model, optimizer ---------------------------------------------------------------
    mg = load_start_model(cfg, config["codec_source"], resume_dir)
    check_model_codec(mg, config["codec_meta"])
    core = TrainModule(mg.lm, mg.conditioner)
    if resume_dir and (raw := checkpoints.read_weights(resume_dir, checkpoints.RAW_WEIGHTS_FILE)):
        mg_weights_into(core, raw)  # model.safetensors held the EMA
    core.to(device).train()
    mg.codec.to(device)
    ema = EMA(named_trainable(core), tc.ema_decay) if tc.ema_decay else None
    if ema and resume_dir and (saved := checkpoints.read_weights(resume_dir, checkpoints.EMA_FILE)):
        ema.load(saved)
    model = wrap_model(core, tc.strategy, device)  # after EMA: its shadow holds whole tensors
    optimizer = build_optimizer(core, tc.lr, tc.weight_decay, tc.betas)
    if resume_dir:
        load_optimizer_state(model, core, optimizer, checkpoints.read_optimizer(resume_dir))
    scaler = (
        torch.amp.GradScaler("cuda") if device.type == "cuda" and tc.precision == "fp16" else None
    )
    if scaler is not None and state.get("grad_scaler"):
        scaler.load_state_dict(state["grad_scaler"])
    if resume_dir and resume_dir != resume.path:  # a local copy: everything is loaded now
        shutil.rmtree(resume_dir, ignore_errors=True)
    special = mg.lm.cfg.special_token
    sampler = MusicGen(mg.lm, mg.conditioner, mg.codec, mg.max_frames)  # shares the modules
    core.train()  # MusicGen() switched them to eval

    # -- data, logging --------------------------------------------------------------------
    train_shard = ray.train.get_dataset_shard("train")  # [ray]
    val_shard = ray.train.get_dataset_shard("val")  # [ray] unsplit (DataConfig)
    val_data = None  # read once, at the first evaluation: each Ray Data pass costs seconds
    batches = stream_batches(
        train_shard, tc.batch_size, tc.shuffle_buffer, tc.seed + rank, epoch, skip
    )
    log = RunLogger(config["tracking_uri"], config["run_id"], enabled=rank == 0)
    crash = config.get("crash")
    frame_rate = mg.frame_rate
    window = {"loss": 0.0, "per_codebook": 0.0, "tokens": 0, "seconds": 0.0, "data_seconds": 0.0}
    window["steps"] = 0
    totals = {"tokens": 0, "seconds": 0.0}
    last_val, prompts = None, list(tc.eval_prompts)
    if rank == 0:
        where = f"resuming at step {start_step}" if start_step else "from step 0"
        print(f"[train] {world} worker(s) on {device}, {where} of {tc.steps}", flush=True)

    for step in range(start_step, tc.steps):
        started = time.perf_counter()
        frames = segment_frames(tc.segment_curriculum, step, frame_rate, mg.max_frames)
        epoch, position, rows = next(batches)
        rng = np.random.default_rng([tc.seed, rank, step])  # resume-proof: a function of the step
        batch = make_batch(rows, frames, rng)
        fetched = time.perf_counter()
        generator = torch.Generator().manual_seed(int(rng.integers(2**31)))
        drop = condition_dropout(len(batch.texts), cfg.model.cond_dropout, generator)
        lr = tc.lr * lr_factor(step, tc.warmup_steps, tc.steps, tc.min_lr_ratio)
        set_lr(optimizer, lr)
        result = train_step(
            model, optimizer, batch, drop, special, device, tc.precision, tc.grad_clip, scaler
        )
        if ema is not None:
            ema.update(named_trainable(core))
        result.seconds = time.perf_counter() - started  # throughput counts the data wait too
        result.data_seconds = fetched - started
        done = step + 1
        accumulate(window, totals if step - start_step >= WARM_STEPS else None, result)
        if done % tc.log_every == 0 or done == tc.steps:
            metrics = window_metrics(window, lr, frames / frame_rate, world, device)
            log.metrics(metrics, done)
            if rank == 0:
                print(format_metrics(done, tc.steps, metrics), flush=True)
        maybe_crash(crash, rank, done)

        evaluate = done % tc.eval_every == 0 or done == tc.steps
        save = done % tc.checkpoint_every == 0 or done == tc.steps
        if evaluate or save:
            val_data = val_data or read_validation(val_shard, tc.batch_size, tc.val_batches, world)
            val, captions = validate(
                model, core, val_data, frames, tc.batch_size, tc.val_batches, special,
                device, tc.precision, rank, world,
            )  # fmt: skip
            last_val = float(val.mean())
            val_metrics = {VAL_METRIC: last_val} | {
                f"val_loss_cb{k}": float(v) for k, v in enumerate(val)
            }
            log.metrics(val_metrics, done)
            if rank == 0:
                print(f"[train] step {done} val_loss {last_val:.4f}", flush=True)
            prompts = prompts or captions[: tc.eval_samples]
            # Generation runs on rank 0 alone: sharded weights would need every rank.
            if evaluate and rank == 0 and tc.eval_samples and not is_sharded(model):
                log_samples(log, sampler, prompts[: tc.eval_samples], tc, done)
        if save:
            report_checkpoint(
                model, core, optimizer, ema, mg, cfg, rank, done,
                {"epoch": epoch, "batch": position}, val_metrics, scaler,
            )  # fmt: skip

    if rank != 0:
        return None
    return {
        "start_step": start_step,
        "end_step": tc.steps,
        "val_loss": last_val,
        "tokens_per_s": totals["tokens"] * world / totals["seconds"] if totals["seconds"] else None,
        "world_size": world,
    }


def mg_weights_into(core: TrainModule, weights: dict[str, torch.Tensor]) -> None:
    """Load ``MusicGen.state_dict``-named weights into the LM and conditioner."""
    lm = {k[3:]: v for k, v in weights.items() if k.startswith("lm.")}
    cond = {k[5:]: v for k, v in weights.items() if k.startswith("cond.")}
    core.lm.load_state_dict(lm)
    core.conditioner.load_state_dict(cond, strict=False)  # the encoder is not in the file


WARM_STEPS = 5
"""Steps left out of a run's overall throughput (first batches, allocator warm-up)."""


def accumulate(window: dict, totals: dict | None, result: Step) -> None:
    window["loss"] = window["loss"] + result.loss  # a tensor: no device sync per step
    window["per_codebook"] = window["per_codebook"] + result.per_codebook
    window["tokens"] += result.tokens
    window["seconds"] += result.seconds
    window["data_seconds"] += result.data_seconds
    window["steps"] += 1
    if totals is not None:
        totals["tokens"] += result.tokens
        totals["seconds"] += result.seconds


def window_metrics(window: dict, lr: float, seconds: float, world: int, device) -> dict:
    """Means over the steps since the last log (then the window is reset)."""
    steps = max(1, window["steps"])
    metrics = {
        "train_loss": float(window["loss"]) / steps,
        "lr": lr,
        # Every worker trains on as many tokens (equal shards, same batch size).
        "tokens_per_s": window["tokens"] * world / max(window["seconds"], 1e-9),
        # Share of the loop spent waiting for data: near 0 when Ray Data keeps up.
        "data_wait": window["data_seconds"] / max(window["seconds"], 1e-9),
        "segment_seconds": seconds,
    }
    per_codebook = window["per_codebook"]
    if isinstance(per_codebook, torch.Tensor):
        for k, value in enumerate((per_codebook / steps).tolist()):
            metrics[f"train_loss_cb{k}"] = value
    if device.type == "cuda":
        metrics["gpu_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    window.update(loss=0.0, per_codebook=0.0, tokens=0, seconds=0.0, data_seconds=0.0, steps=0)
    return metrics


def format_metrics(step: int, total: int, metrics: dict) -> str:
    return (
        f"[train] step {step}/{total} loss {metrics['train_loss']:.4f} lr {metrics['lr']:.2e} "
        f"tok/s {metrics['tokens_per_s']:.0f} data {metrics['data_wait']:.0%}"
    )


def log_samples(log, sampler, prompts: list[str], tc, step: int) -> None:
    """Rank 0: generated audio and spectrograms as artifacts ``samples/step_NNNNNNN``."""
    if not prompts or not log.enabled:
        return
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / f"step_{step:07d}"
        write_samples(sampler, prompts, tc.eval_sample_seconds, tc.seed + step, directory)
        log.artifacts(directory, f"samples/step_{step:07d}")
    sampler.lm.train()
    sampler.conditioner.train()


def report_checkpoint(
    model, core, optimizer, ema, mg, cfg, rank, step, position, metrics, scaler
) -> None:
    """Gather the state, let rank 0 write it, and hand it to Ray (every rank reports)."""
    import ray.train  # [ray]

    weights = full_weights(model, core)  # a collective under FSDP
    optim = optimizer_state(model, core, optimizer)
    ema_weights = dict(ema.shadow) if ema is not None else None
    metrics = {**metrics, "step": step}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)  # [ray] a barrier: every rank reports
        return
    state = {
        "step": step,
        # The schedule is a function of the step (warmup, cosine): this is its whole state.
        "scheduler": {"kind": "warmup_cosine", "step": step, "lr": optimizer.param_groups[0]["lr"]},
        "data_position": position,
        "metrics": metrics,
        "grad_scaler": scaler.state_dict() if scaler is not None else None,
        "config": cfg.model_dump(mode="json"),
    }
    with tempfile.TemporaryDirectory() as tmp:
        model_weights = {**weights, **ema_weights} if ema_weights else weights
        checkpoints.save_checkpoint(
            Path(tmp),
            mg,
            model_weights,
            state,
            optim,
            raw_weights=weights if ema_weights else None,
            ema_weights=ema_weights,
        )
        ray.train.report(  # [ray] persisted to <storage>/<name>/checkpoint_<step>
            metrics,
            checkpoint=ray.train.Checkpoint.from_directory(tmp),
            checkpoint_dir_name=f"checkpoint_{step:07d}",
        )


# =============================================================================
# 4. The driver
# =============================================================================


@dataclass
class Plan:
    """What the driver worked out before starting any worker."""

    data: str
    shard_paths: list[str]
    codec_source: str | None
    val_sources: list[str]
    train_rows: int
    val_rows: int
    storage: str
    code_bytes: int
    codec_meta: dict


def is_validation(source: str, fraction: float) -> bool:
    """Whole files go to one split, by a stable hash of their path (no leakage)."""
    return zlib.crc32(source.encode()) % 10_000 < fraction * 10_000


def choose_val_sources(sources: Sequence[str], fraction: float) -> set[str]:
    """The validation files; at least one when ``fraction`` > 0 and there are two files or more."""
    unique = sorted(set(sources))
    chosen = {s for s in unique if is_validation(s, fraction)}
    if not chosen and fraction > 0 and len(unique) > 1:
        chosen = {min(unique, key=lambda s: zlib.crc32(s.encode()))}
    if len(chosen) == len(unique):
        chosen.discard(max(unique, key=lambda s: zlib.crc32(s.encode())))
    return chosen


def start_shape(init: str) -> tuple[int, int] | None:
    """``(num_codebooks, cardinality)`` of a start checkpoint without loading it (None: unknown)."""
    import json

    if init.startswith(("models:/", "runs:/")):
        from music_gen.platform.registry import download_model

        init = str(download_model(init))
    path = Path(init).expanduser()
    try:
        if (path / "music_gen.json").is_file():
            lm = json.loads((path / "music_gen.json").read_text())["lm"]
            return int(lm["num_codebooks"]), int(lm["cardinality"])
        if (path / "config.json").is_file():
            decoder = json.loads((path / "config.json").read_text()).get("decoder", {})
            return int(decoder["num_codebooks"]), int(decoder["vocab_size"])
    except (KeyError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"train.init={init}: unreadable model config ({exc})") from None
    if path.exists():
        raise ConfigError(f"train.init={init}: not a music-gen or transformers MusicGen checkpoint")
    if init.count("/") == 1 and not init.startswith((".", "/", "~")):
        return None  # a hub id: checked by the workers once loaded
    raise ConfigError(f"train.init={init}: checkpoint not found")


def _storage(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def plan_run(cfg: Config) -> Plan:
    """Every check that can fail before a worker starts: data, codec/model match, init, splits."""
    import pyarrow.parquet as pq

    tc, data = cfg.train, cfg.data.output
    if not data:
        raise ConfigError("train needs a tokenized dataset: --data DIR (or data.output=DIR)")
    try:
        meta = shards.codec_info(data)
    except MusicGenError:
        raise ConfigError(
            f"no tokenized dataset at {data} (no dataset.json): run `music-gen data tokenize` first"
        ) from None
    paths = shards.shard_paths(data)
    if not paths:
        raise ConfigError(f"dataset {data} has no shards yet: run `music-gen data tokenize`")
    codec_source = None
    if tc.init:
        shape = start_shape(tc.init)
        num_codebooks, cardinality = (
            shape if shape else (meta["num_codebooks"], meta["cardinality"])
        )
        what = f"train.init={tc.init}"
    else:
        codec_source = resolve_codec_source(cfg)
        num_codebooks = cfg.model.num_codebooks or meta["num_codebooks"]
        cardinality = cfg.model.cardinality or meta["cardinality"]
        what = "the model config"
    if num_codebooks != meta["num_codebooks"] or cardinality < meta["cardinality"]:
        raise ConfigError(
            f"dataset {data} has {meta['num_codebooks']} codebooks of {meta['cardinality']} codes "
            f"but {what} expects {num_codebooks} of {cardinality}: set model.num_codebooks / "
            "model.cardinality to match (or leave them unset), or tokenize with the model's codec"
        )
    if tc.strategy == "fsdp" and not cfg.model.text.freeze:
        raise ConfigError(
            "train.strategy=fsdp needs a frozen text encoder (model.text.freeze=true)"
        )
    if tc.strategy == "fsdp" and tc.ema_decay:
        raise ConfigError("train.ema_decay is not supported with train.strategy=fsdp yet")
    table = pq.ParquetDataset(paths).read(columns=["source", "frames", "num_codebooks"])
    sources = table.column("source").to_pylist()
    code_bytes = 2 * sum(
        f * k
        for f, k in zip(
            table["frames"].to_pylist(), table["num_codebooks"].to_pylist(), strict=True
        )
    )
    val_sources = choose_val_sources(sources, cfg.data.val_fraction)
    val_rows = sum(s in val_sources for s in sources)
    train_rows = len(sources) - val_rows
    if val_rows == 0:
        raise ConfigError(
            f"the validation split of {data} is empty ({len(set(sources))} files, "
            f"data.val_fraction={cfg.data.val_fraction}): raise data.val_fraction"
        )
    needed = tc.batch_size * tc.num_workers
    if train_rows < needed:
        raise ConfigError(
            f"the training split holds {train_rows} segments, fewer than train.batch_size x "
            f"train.num_workers = {needed}"
        )
    return Plan(
        data, paths, codec_source, sorted(val_sources), train_rows, val_rows,
        _storage(tc.storage), code_bytes, meta,
    )  # fmt: skip


def _split(batch, val_sources: set[str], validation: bool):
    """Ray Data map: the rows of one split (pyarrow batch)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keep = pc.is_in(batch["source"], value_set=pa.array(sorted(val_sources), pa.string()))
    if not validation:
        keep = pc.invert(keep)
    return batch.filter(keep).drop_columns(["source"])


MATERIALIZE_BYTES = 64 * 1024**2
"""Datasets whose codes take less than this are read once and kept in the object store:
an epoch of a few rows would otherwise cost a new read of the shards every few steps."""


def build_datasets(plan: Plan) -> dict:
    """Train and validation Ray Datasets streaming from the shards (small ones materialized)."""
    import ray.data

    ds = ray.data.read_parquet(plan.shard_paths, columns=[*COLUMNS, "source"], num_cpus=0.25)
    val_sources = set(plan.val_sources)

    def split(validation: bool):
        return ds.map_batches(
            _split,
            batch_format="pyarrow",
            fn_kwargs={"val_sources": val_sources, "validation": validation},
            num_cpus=0.25,
        )

    datasets = {"train": split(False), "val": split(True)}
    if plan.code_bytes < MATERIALIZE_BYTES:
        datasets = {name: ds.materialize() for name, ds in datasets.items()}
    return datasets


def check_resources(cfg: Config) -> None:
    """On a local cluster, a request it can never meet would wait forever: fail instead."""
    import ray

    if os.environ.get("RAY_ADDRESS"):
        return  # a real cluster may autoscale
    total = ray.cluster_resources()
    tc = cfg.train
    if tc.use_gpu and total.get("GPU", 0) < tc.gpus_per_worker * tc.num_workers:
        raise ConfigError(
            f"train.use_gpu needs {tc.gpus_per_worker * tc.num_workers:g} GPUs, the cluster has "
            f"{total.get('GPU', 0):g}: set train.use_gpu=false"
        )
    if total.get("CPU", 0) < tc.cpus_per_worker * tc.num_workers:
        raise ConfigError(
            f"{tc.num_workers} workers x train.cpus_per_worker={tc.cpus_per_worker:g} exceed the "
            f"cluster's {total.get('CPU', 0):g} CPUs: lower train.cpus_per_worker (fractions work)"
        )


def build_trainer(cfg: Config, plan: Plan, run_id: str | None, crash: dict | None):
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    resources = {"CPU": tc.cpus_per_worker}
    if tc.use_gpu:
        resources["GPU"] = tc.gpus_per_worker
    config = cfg.model_copy(deep=True)
    config.data.output = plan.data
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "cfg": config.model_dump(mode="json"),
            "codec_source": plan.codec_source,
            "codec_meta": plan.codec_meta,
            "run_id": run_id,
            "tracking_uri": _tracking_uri(cfg),
            "crash": crash,
        },
        scaling_config=ScalingConfig(
            num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources
        ),
        run_config=RunConfig(
            name=tc.name,
            storage_path=plan.storage,
            checkpoint_config=CheckpointConfig(
                num_to_keep=tc.keep_checkpoints,
                checkpoint_score_attribute=VAL_METRIC,
                checkpoint_score_order="min",
            ),
            failure_config=FailureConfig(max_failures=tc.max_failures),
        ),
        datasets=build_datasets(plan),
        # Workers share the training split; each reads the validation split whole.
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def _tracking_uri(cfg: Config) -> str:
    from music_gen.platform.tracking import tracking_uri

    return tracking_uri(cfg.train.tracking_uri)


def worker_error(exc: Exception) -> MusicGenError:
    """Ray's ``TrainingFailedError`` -> one clear line naming the root cause."""
    failures = getattr(exc, "worker_failures", None) or {}
    rank, error = min(failures.items()) if failures else (None, None)
    error = error or getattr(exc, "controller_failure", None) or exc
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, MusicGenError):
            try:
                return type(error)(*error.args)
            except TypeError:
                return MusicGenError(str(error))
        nested = getattr(error, "cause", None) or error.__cause__
        if not isinstance(nested, BaseException):
            break
        error = nested
    where = f"worker {rank}" if rank is not None else "the trainer"
    lines = [line for line in str(error).splitlines() if line.strip()]
    detail = lines[-1] if lines else type(error).__name__
    return MusicGenError(f"training failed on {where}: {type(error).__name__}: {detail}")


def with_absolute_paths(cfg: Config) -> Config:
    """Local relative paths made absolute: Ray workers do not share the driver's cwd."""

    def absolute(path: str | None) -> str | None:
        if not path or "://" in path or not Path(path).expanduser().exists():
            return path  # remote URIs, hub ids and models:/ stay as they are
        return str(Path(path).expanduser().resolve())

    data = cfg.data.model_copy(update={"output": absolute(cfg.data.output)})
    train = cfg.train.model_copy(update={"init": absolute(cfg.train.init)})
    codec = cfg.codec.model_copy(update={"source": absolute(cfg.codec.source)})
    return cfg.model_copy(update={"data": data, "train": train, "codec": codec})


def train(cfg: Config, *, crash: dict | None = None) -> dict:
    """Run (or resume) the training run ``cfg.train.name``; returns a summary.

    Summary keys: ``start_step``, ``end_step``, ``val_loss``, ``tokens_per_s``,
    ``checkpoint`` (the last), ``best_checkpoint``, ``run_id``, ``model_uri``,
    ``run_uri`` and, with ``train.register_as``, ``registered``.
    """
    from ray.train import TrainingFailedError

    from music_gen.pipelines.tokenize import ensure_ray
    from music_gen.platform import tracking

    cfg = with_absolute_paths(cfg)
    plan = plan_run(cfg)
    crash = crash or parse_crash(os.environ.get(CRASH_ENV))
    ensure_ray()
    import ray.data

    # Ray Data's progress bars would interleave with the training log.
    ray.data.DataContext.get_current().enable_progress_bars = False
    check_resources(cfg)
    uri = _tracking_uri(cfg)
    run_id = tracking.start_run(cfg, plan.storage)
    trainer = build_trainer(cfg, plan, run_id, crash)
    try:
        result = trainer.fit()
    except TrainingFailedError as exc:
        tracking.end_run(uri, run_id, "FAILED")
        raise worker_error(exc) from None
    except BaseException:
        tracking.end_run(uri, run_id, "KILLED")
        raise
    summary = dict(result.return_value or {})
    if result.checkpoint is None:
        tracking.end_run(uri, run_id, "FAILED")
        raise MusicGenError("training finished without a checkpoint")
    best = result.get_best_checkpoint(VAL_METRIC, "min") if result.best_checkpoints else None
    with result.checkpoint.as_directory() as ckpt, tempfile.TemporaryDirectory() as tmp:
        model_dir = checkpoints.export_model(Path(ckpt), Path(tmp) / "model")
        logged = tracking.log_model(uri, run_id, model_dir, cfg.train.register_as)
    tracking.end_run(uri, run_id, "FINISHED")
    summary.update(
        checkpoint=result.checkpoint.path,
        best_checkpoint=best.path if best is not None else result.checkpoint.path,
        run_id=run_id,
        tracking_uri=uri,
        **logged,
    )
    return summary


def iter_local_batches(paths: Sequence[str], batch_size: int, seed: int = 0) -> Iterator[dict]:
    """Endless shuffled columnar batches read straight from the shards (no Ray): the
    plain-PyTorch side of ``benchmarks/train.py`` and quick experiments."""
    import pyarrow.parquet as pq

    table = pq.ParquetDataset(list(paths)).read(columns=list(COLUMNS))
    columns = {name: table.column(name).to_pylist() for name in COLUMNS}
    rng = np.random.default_rng(seed)
    rows = len(columns["codes"])
    while True:
        order = rng.permutation(rows)
        for start in range(0, rows - batch_size + 1, batch_size):
            pick = order[start : start + batch_size]
            yield {name: [values[i] for i in pick] for name, values in columns.items()}
