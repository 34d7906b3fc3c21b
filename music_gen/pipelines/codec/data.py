"""The audio a codec trains on: listed and decoded the way ``data tokenize`` does it.

Inputs are listed by ``sources.list_sources`` (directory trees with sidecars, JSONL/CSV
manifests, local or remote) and decoded by the tokenizer's own ``decode_segments`` in
Ray Data tasks (read, mix, resample, check, normalise, cut into segments). Bad files
become error rows, counted and reported as the tokenizer reports them; whole files go
to one split (``shards.choose_val_sources``, as for the LM), so held-out scores are on
files the codec never saw.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

from music_gen.config import Config
from music_gen.errors import MusicGenError, UsageError
from music_gen.pipelines import shards, sources

COLUMNS = ("source_id", "samples", "channels", "audio")
"""Columns of a decoded segment row that training needs."""


def decode_settings(cfg: Config) -> dict:
    """``decode_segments`` settings for the codec's rate, channels and segment length."""
    tc = cfg.codec.train
    return {
        "sample_rate": tc.sample_rate,
        "channels": tc.channels,
        "segment_seconds": tc.segment_seconds,
        "stride_seconds": tc.stride_seconds,
        # Only whole segments: a file shorter than one is "too short".
        "min_seconds": tc.segment_seconds,
        "pad_tail": False,
        "normalize": cfg.data.normalize,
        "silence_db": cfg.data.silence_db,
    }


def list_audio(input: str) -> tuple[list[dict], list[dict]]:
    """``(records to decode, broken records)`` of an input; no audio at all is an error."""
    records = sources.list_sources(input)
    usable = [r for r in records if not r["stage"]]
    if not usable:
        raise UsageError(f"no audio files found in {input}")
    for order, record in enumerate(usable):
        record.update(group=0, order=order)  # the tokenizer's row layout wants both
    return usable, [r for r in records if r["stage"]]


@dataclass
class Audio:
    """Decoded segments, split by file."""

    train: object  # ray.data.Dataset of COLUMNS
    val: object
    train_segments: int
    val_segments: int
    files: int
    errors: dict[str, int]  # reason -> files


def _keep(batch, val_sources: list[str], validation: bool):
    import pyarrow as pa
    import pyarrow.compute as pc

    held_out = pc.is_in(batch["path"], value_set=pa.array(val_sources, pa.string()))
    keep = pc.and_(pc.equal(batch["stage"], ""), held_out if validation else pc.invert(held_out))
    return batch.filter(keep).select(list(COLUMNS))


def decode_audio(cfg: Config, input: str, num_cpus: float = 0.5) -> Audio:
    """Decode every file of ``input`` into segments (materialized: a codec's training audio
    is small next to an LM's, and each epoch would otherwise decode it again)."""
    import ray.data

    from music_gen.pipelines.tokenize import decode_segments

    records, broken = list_audio(input)
    ds = ray.data.from_items(records, override_num_blocks=min(len(records), 200))
    decoded = ds.flat_map(
        decode_segments, fn_kwargs={"settings": decode_settings(cfg)}, num_cpus=num_cpus
    ).materialize()
    summary = decoded.select_columns(["path", "stage", "reason"]).take_all()
    errors = Counter(r["reason"] for r in broken)
    errors.update(r["reason"] for r in summary if r["stage"])
    good = sorted({r["path"] for r in summary if not r["stage"]})  # split by path, as the LM
    if not good:
        why = ", ".join(f"{n} {reason}" for reason, n in errors.most_common()) or "none decoded"
        raise MusicGenError(f"no usable audio in {input} ({why})")
    val_sources = sorted(shards.choose_val_sources(good, cfg.codec.train.val_fraction))
    counts = Counter(r["path"] in val_sources for r in summary if not r["stage"])

    def split(validation: bool):
        return decoded.map_batches(
            _keep,
            batch_format="pyarrow",
            fn_kwargs={"val_sources": val_sources, "validation": validation},
            num_cpus=0.25,
        ).materialize()

    return Audio(split(False), split(True), counts[False], counts[True], len(good), dict(errors))


def to_tensor(rows) -> torch.Tensor:
    """A batch of segment rows (pyarrow or dict of numpy) -> float audio ``[B, C, S]``."""
    import torch

    get = rows.column if hasattr(rows, "column") else rows.__getitem__
    audio, channels = get("audio"), get("channels")
    if hasattr(audio, "to_pylist"):
        audio, channels = audio.to_pylist(), channels.to_pylist()
    clips = [
        np.frombuffer(blob, dtype=np.float32).reshape(int(c), -1)
        for blob, c in zip(audio, channels, strict=True)
    ]
    return torch.from_numpy(np.stack(clips))  # [B, C, S]
