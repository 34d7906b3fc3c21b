"""The loss: one definition for training, validation and ``music-gen evaluate``.

One batch of shard rows (one row = one tokenized segment)::

    codes [B, K, T]  (each row cut to the segment length: a random window in training,
                      its start in validation; padded with 0, lengths [B] kept)
    chroma [B, T]    (melody models: each frame's pitch class, cut by the same window)
      -> delayed [B, K, S = T + K - 1] and mask [B, K, S] (the pattern's real codes, not padding)
      -> inputs = [start ; delayed[..., :-1]], logits = model(inputs, conditions) [B, K, S, card]
      -> loss = mean over codebooks of each codebook's cross-entropy on its masked positions

Validation and evaluation add up per-codebook sums and counts over batches (and
workers) before dividing (``LossTotals``): the loss of a split is the same whatever
its batching. No Ray and no MLflow here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from music_gen.errors import MusicGenError
from music_gen.models.attributes import SHARD_COLUMNS, row_attributes
from music_gen.models.patterns import build_delay, valid_mask
from music_gen.pipelines import shards

BATCH_COLUMNS = ("codes", "num_codebooks", "frames", "caption", *SHARD_COLUMNS.values())
"""The shard columns ``make_batch`` reads: codes and conditions."""
MELODY_COLUMNS = (*BATCH_COLUMNS, shards.CHROMA)
"""What it reads for a melody model: the chroma of each segment too."""


@dataclass
class Batch:
    codes: torch.Tensor  # [B, K, T]
    lengths: torch.Tensor  # [B]
    texts: list[str]
    attributes: list[dict]
    chroma: torch.Tensor | None = None  # [B, T] pitch classes (rows with a chroma column)


def crop_starts(
    totals: Sequence[int], frames: int, rng: np.random.Generator | None
) -> tuple[list[int], list[int]]:
    """``(starts, lengths)`` of each row's window: rows of ``totals`` frames longer than
    ``frames`` are cut to a random window (``rng``) or their start (``rng`` None)."""
    lengths = [min(frames, total) for total in totals]
    starts = [
        0 if rng is None else int(rng.integers(0, total - length + 1))
        for total, length in zip(totals, lengths, strict=True)
    ]
    return starts, lengths


def crop_codes(
    codes: Sequence[np.ndarray], frames: int, rng: np.random.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``[K, T_i]`` codes -> ``[B, K, T]`` (padded with 0) and lengths ``[B]``.

    Each row longer than ``frames`` is cut to a random window (``rng``) or its start
    (``rng`` None: validation). ``T`` is ``frames`` or the longest row if all are shorter.
    """
    starts, lengths = crop_starts([c.shape[-1] for c in codes], frames, rng)
    return crop_rows(codes, starts, lengths), torch.tensor(lengths)


def crop_rows(rows: Sequence[np.ndarray], starts: list[int], lengths: list[int]) -> torch.Tensor:
    """Rows ``[..., T_i]`` cut to their windows, padded with 0: ``[B, ..., max(lengths)]``."""
    out = np.zeros((len(rows), *rows[0].shape[:-1], max(lengths)), dtype=np.int64)
    for row, (values, start, length) in enumerate(zip(rows, starts, lengths, strict=True)):
        out[row, ..., :length] = values[..., start : start + length]
    return torch.from_numpy(out)


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
    """A columnar batch of shard rows (a pyarrow table, columns as numpy arrays or lists,
    or a list of row dicts) -> cropped codes and conditions."""
    if isinstance(rows, list):  # row dicts (evaluation reads them with pyarrow)
        rows = {name: [row.get(name) for row in rows] for name in rows[0]} if rows else {}
    elif hasattr(rows, "column_names"):  # pyarrow: Ray hands it over without conversion
        rows = {name: rows.column(name).to_pylist() for name in rows.column_names}
    codes = shards.batch_codes(rows)
    starts, lengths = crop_starts([c.shape[-1] for c in codes], frames, rng)
    chroma = None
    if shards.CHROMA in rows:  # the same window of each row as its codes
        chroma = crop_rows(batch_chroma(rows, codes), starts, lengths)  # [B, T]
    texts = [str(t or "") for t in rows["caption"]]
    columns = [column for column in SHARD_COLUMNS.values() if column in rows]
    attributes = [
        row_attributes({column: _value(rows[column][i]) for column in columns})
        for i in range(len(texts))
    ]
    return Batch(
        crop_rows(codes, starts, lengths), torch.tensor(lengths), texts, attributes, chroma
    )


def batch_chroma(rows: dict, codes: list[np.ndarray]) -> list[np.ndarray]:
    """Each row's pitch classes ``[T_i]``, as many as its code frames, else an error."""
    chroma = []
    for data, row_codes in zip(rows[shards.CHROMA], codes, strict=True):
        classes = shards.read_chroma(data or b"")
        if classes.shape[0] != row_codes.shape[-1]:
            raise MusicGenError(
                f"a shard row holds {classes.shape[0]} chroma frames for {row_codes.shape[-1]} "
                "code frames: run `music-gen data validate` on the dataset, then re-tokenize it"
            )
        chroma.append(classes)
    return chroma


def delay_inputs(
    codes: torch.Tensor, lengths: torch.Tensor, special: int, channels: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``codes [B, K, T]`` + ``lengths [B]`` -> ``(inputs, targets, mask)``, each ``[B, K, S]``.

    ``targets`` is the delayed sequence, ``mask`` its positions holding real codes (the
    pattern's valid slots within each row's length), and ``inputs`` the targets shifted
    right by one behind the start token: position s sees steps < s and predicts step s.
    ``channels=2`` is the stereo pattern (interleaved codebooks, a delay per level), the
    one a stereo model generates with.
    """
    batch, num_codebooks, _ = codes.shape
    delayed = build_delay(codes, special, channels)  # [B, K, S]
    steps = delayed.shape[-1]
    delay = torch.arange(num_codebooks) // channels  # [K]
    frame = torch.arange(steps)[None, :] - delay[:, None]  # [K, S]
    in_row = frame[None] < lengths[:, None, None]  # [B, K, S]
    mask = valid_mask(num_codebooks, steps, channels=channels)[None] & in_row  # [B, K, S]
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
    """The loss (mean over codebooks) and the per-codebook means ``[K]``."""
    per_codebook = sums / counts.clamp_min(1)
    return per_codebook.mean(), per_codebook


Forward = Callable[..., torch.Tensor]
"""``(inputs [B, K, S], texts, attributes) -> logits [B, K, S, card]``; batches with
chroma add ``chroma=`` pitch classes ``[B, T]``."""


def batch_loss(
    forward: Forward, batch: Batch, special: int, device: torch.device, channels: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-codebook cross-entropy sums and counts ``[K]``, ``[K]`` of ``forward`` on ``batch``."""
    inputs, targets, mask = delay_inputs(batch.codes, batch.lengths, special, channels)
    melody = {} if batch.chroma is None else {"chroma": batch.chroma}
    logits = forward(inputs.to(device), batch.texts, batch.attributes, **melody)  # [B, K, S, card]
    return codebook_losses(logits, targets.to(device), mask.to(device))


class LossTotals:
    """Per-codebook sums and counts added up over batches (float64: many tokens)."""

    def __init__(self, num_codebooks: int, device: torch.device | str = "cpu"):
        self.sums = torch.zeros(num_codebooks, dtype=torch.float64, device=device)  # [K]
        self.counts = torch.zeros_like(self.sums)  # [K]

    def add(self, sums: torch.Tensor, counts: torch.Tensor, weight: float = 1.0) -> None:
        self.sums += weight * sums.double()
        self.counts += weight * counts.double()

    def per_codebook(self) -> torch.Tensor:
        """``[K]`` each codebook's mean cross-entropy (its loss)."""
        return self.sums / self.counts.clamp_min(1)
