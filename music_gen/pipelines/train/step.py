"""One training step in plain PyTorch (no Ray): unit-tested on its own.

The segment-length curriculum, the learning-rate schedule, condition dropout, EMA, the
modules that train (``TrainModule``), AdamW, ``train_step`` and the validation pass.
The batch and the loss come from ``pipelines/losses.py``, which evaluation shares::

    rows -> make_batch (crop, pad) -> delay_inputs -> TrainModule -> codebook_losses -> mean_loss
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from music_gen.errors import MusicGenError
from music_gen.models import formats
from music_gen.models.melody import chroma_at_rate
from music_gen.pipelines.losses import (
    BATCH_COLUMNS,
    MELODY_COLUMNS,
    Batch,
    LossTotals,
    batch_loss,
    codebook_losses,
    delay_inputs,
    make_batch,
    mean_loss,
)
from music_gen.pipelines.train.parallel import is_sharded

COLUMNS = BATCH_COLUMNS
"""Shard columns a worker reads (the driver adds ``source`` to split train/validation)."""


def columns_for(melody: bool) -> list[str]:
    """The shard columns a run reads: ``COLUMNS``, and the chroma for a melody model."""
    return list(MELODY_COLUMNS if melody else COLUMNS)


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
    """The modules that train, as one module for DDP/FSDP: conditioner, then the LM.

    Melody models take ``chroma``, the pitch class of each code frame ``[B, T]`` at the
    codec's ``frame_rate`` (the target's own, cropped as its codes), and ``melody_drop``
    ``[B]``: rows that hear no melody (``drop`` drops text and melody together)."""

    def __init__(self, lm: nn.Module, conditioner: nn.Module, frame_rate: float | None = None):
        super().__init__()
        self.lm = lm
        self.conditioner = conditioner
        self.frame_rate = frame_rate

    def forward(self, inputs, texts, attributes, drop=None, chroma=None, melody_drop=None):
        melody = self.melody(chroma)
        memory, memory_mask = self.conditioner(
            texts, attributes, drop, melody=melody, melody_drop=melody_drop
        )  # [B, L, D], [B, L]
        return self.lm(inputs, memory, memory_mask)  # [B, K, S, card]

    def melody(self, chroma: torch.Tensor | None) -> torch.Tensor | None:
        """Pitch classes ``[B, T]`` -> the conditioner's one-hot chroma ``[B, T', 12]``."""
        settings = self.conditioner.melody
        if chroma is None or settings is None:
            return None
        return chroma_at_rate(chroma.to(self.conditioner.device), self.frame_rate, settings)


def named_trainable(core: TrainModule) -> dict[str, torch.Tensor]:
    """Trainable parameters under ``MusicGen.state_dict`` names (``lm.*``, ``cond.*``)."""
    return formats.join_weights(
        {
            "lm": {k: p for k, p in core.lm.named_parameters() if p.requires_grad},
            "cond": {k: p for k, p in core.conditioner.named_parameters() if p.requires_grad},
        }
    )


def mg_weights_into(core: TrainModule, weights: dict[str, torch.Tensor]) -> None:
    """Load ``MusicGen.state_dict``-named weights into the LM and conditioner."""
    parts = formats.split_weights(weights)
    core.lm.load_state_dict(parts["lm"])
    core.conditioner.load_state_dict(parts["cond"], strict=False)  # the encoder is not in it


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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def autocast(device: torch.device, precision: str):
    """bf16/fp16 autocast on GPU; the CPU trains in fp32 (its bf16 matmuls are slow)."""
    if device.type != "cuda" or precision == "fp32":
        return torch.autocast(device.type, enabled=False)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast("cuda", dtype=dtype)


@dataclass
class Step:
    """What one optimizer step leaves behind."""

    loss: torch.Tensor  # scalar, detached
    per_codebook: torch.Tensor  # [K], detached
    tokens: int  # codes trained on (padding excluded)
    seconds: float


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
    channels: int = 1,
    melody_drop: torch.Tensor | None = None,
) -> Step:
    """Forward, backward, clip and step on one batch (``channels``: the model's delay
    pattern, 2 for stereo; a batch with chroma conditions a melody model on it, but for
    the rows of ``melody_drop``)."""
    started = time.perf_counter()
    inputs, targets, mask = delay_inputs(batch.codes, batch.lengths, special, channels)
    inputs, targets, mask = inputs.to(device), targets.to(device), mask.to(device)
    melody = {}
    if batch.chroma is not None:
        melody = {"chroma": batch.chroma, "melody_drop": melody_drop}
    with autocast(device, precision):
        logits = model(
            inputs, batch.texts, batch.attributes, drop.to(device), **melody
        )  # [B, K, S, card]
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


def validate(
    model: nn.Module,
    core: TrainModule,
    val_data: Sequence,
    *,
    frames: int,
    max_batches: int | None,
    special: int,
    device: torch.device,
    precision: str,
    rank: int = 0,
    world: int = 1,
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
    totals = LossTotals(core.lm.cfg.num_codebooks, device)
    was_training = core.training
    core.eval()
    with torch.no_grad(), autocast(device, precision):
        for rows, weight in mine:
            batch = make_batch(rows, frames, rng=None)
            loss_terms = batch_loss(scorer, batch, special, device, core.lm.cfg.audio_channels)
            totals.add(*loss_terms, weight=weight)
    core.train(was_training)
    if sharded:  # FSDP keeps the root's weights gathered after a forward with no backward
        model.reshard()
    if dist.is_initialized() and world > 1:
        dist.all_reduce(totals.sums)
        dist.all_reduce(totals.counts)
    return totals.per_codebook().float().cpu(), make_batch(first, frames, None).texts


def iter_local_batches(
    paths: Sequence[str], batch_size: int, seed: int = 0, melody: bool = False
) -> Iterator[dict]:
    """Endless shuffled columnar batches read straight from the shards (no Ray): the
    plain-PyTorch side of ``benchmarks/train.py`` and quick experiments (``melody``: with
    the chroma column)."""
    import pyarrow.parquet as pq

    names = columns_for(melody)
    table = pq.ParquetDataset(list(paths)).read(columns=names)
    columns = {name: table.column(name).to_pylist() for name in names}
    rng = np.random.default_rng(seed)
    rows = len(columns["codes"])
    while True:
        order = rng.permutation(rows)
        for start in range(0, rows - batch_size + 1, batch_size):
            pick = order[start : start + batch_size]
            yield {name: [values[i] for i in pick] for name, values in columns.items()}
