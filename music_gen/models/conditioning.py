"""Conditioning: text (a frozen T5 encoder) and optional attributes -> cross-attention memory.

The memory is ``[B, L, D]`` at the language model's width with a ``[B, L]`` mask.
Text tokens come first, then one learned token per attribute (genre, mood, key,
tempo, instrument). The *null condition* used by classifier-free guidance and by
condition dropout is all-zero memory with an all-False mask: the cross-attention
then contributes exactly nothing, as in MusicGen.

Attribute values need no vocabulary file: a string is hashed (crc32, stable
across processes) into a bucket of its attribute's table; tempo is bucketed
by BPM. Bucket 0 means "not given".
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

ATTRIBUTE_BUCKETS = 256
BPM_RANGE = (40.0, 240.0)


def attribute_bucket(name: str, value) -> int:
    """Map one attribute value to a bucket in ``[0, ATTRIBUTE_BUCKETS)``; 0 is "missing"."""
    if value is None or value == "" or value == []:
        return 0
    if name == "bpm":
        lo, hi = BPM_RANGE
        bpm = min(max(float(value), lo), hi)
        return 1 + int((bpm - lo) / (hi - lo) * (ATTRIBUTE_BUCKETS - 2))
    if isinstance(value, list | tuple):  # several moods: the first one names the row
        value = value[0]
    text = str(value).strip().lower()
    return 1 + zlib.crc32(text.encode()) % (ATTRIBUTE_BUCKETS - 1)


def random_t5(dim: int, num_layers: int, num_heads: int):
    """A small random T5 encoder with ByT5's vocabulary, for offline use and tests."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=384,  # ByT5: 3 specials + 256 bytes + 125 extra ids
        d_model=dim,
        d_kv=dim // num_heads,
        d_ff=2 * dim,
        num_layers=num_layers,
        num_heads=num_heads,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
    )
    return T5EncoderModel(config)


def byte_tokenizer():
    """ByT5's byte-level tokenizer: needs no vocabulary file, so it works offline."""
    from transformers import ByT5Tokenizer

    return ByT5Tokenizer()


def load_text_encoder(source: str | Path):
    """A T5 encoder and its tokenizer from a local directory or a hub id."""
    from transformers import AutoTokenizer, T5EncoderModel

    from music_gen.errors import CheckpointError

    try:
        encoder = T5EncoderModel.from_pretrained(str(source))
        tokenizer = AutoTokenizer.from_pretrained(str(source))
    except (OSError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise CheckpointError(f"cannot load text encoder '{source}': {reason}") from None
    return encoder, tokenizer


class Conditioner(nn.Module):
    """Text encoder + projection + attribute tables -> ``(memory [B, L, D], mask [B, L])``."""

    def __init__(
        self,
        encoder: nn.Module,
        tokenizer,
        dim: int,
        attributes: Sequence[str] = (),
        max_length: int = 64,
        freeze: bool = True,
        project: bool = True,
    ):
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.freeze = freeze
        self.attributes = list(attributes)
        encoder_dim = encoder.config.d_model
        # MusicGen projects only when the widths differ; keep that rule for checkpoint import.
        self.proj = nn.Linear(encoder_dim, dim) if project else nn.Identity()
        self.attribute_tables = nn.ModuleDict(
            {name: nn.Embedding(ATTRIBUTE_BUCKETS, dim) for name in self.attributes}
        )
        if freeze:
            self.encoder.requires_grad_(False)
            self.encoder.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze:  # a frozen encoder never leaves eval mode (no dropout)
            self.encoder.eval()
        return self

    @property
    def device(self) -> torch.device:
        return (
            self.proj.weight.device
            if isinstance(self.proj, nn.Linear)
            else next(self.encoder.parameters()).device
        )

    def tokenize(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(
            list(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
        )
        return batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device)

    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``[B, L]`` token ids -> ``[B, L, D]`` projected text features (zero at padding)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze):
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]
        memory = self.proj(hidden)  # [B, L, D]
        return memory * attention_mask[..., None].to(memory.dtype)

    def attribute_tokens(self, attributes: Sequence[dict] | None, batch: int):
        """``[B, A, D]`` attribute tokens and their ``[B, A]`` mask (False where not given)."""
        ids = torch.tensor(
            [
                [
                    attribute_bucket(name, (attributes[row] or {}).get(name)) if attributes else 0
                    for name in self.attributes
                ]
                for row in range(batch)
            ],
            dtype=torch.long,
            device=self.device,
        )  # [B, A]
        tokens = torch.stack(
            [self.attribute_tables[name](ids[:, i]) for i, name in enumerate(self.attributes)],
            dim=1,
        )  # [B, A, D]
        return tokens, ids > 0

    def forward(
        self,
        texts: Sequence[str],
        attributes: Sequence[dict] | None = None,
        drop: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory and mask for a batch; rows where ``drop`` [B] is True get the null condition."""
        input_ids, attention_mask = self.tokenize(texts)
        memory = self.encode_tokens(input_ids, attention_mask)  # [B, L, D]
        mask = attention_mask.bool()  # [B, L]
        if self.attributes:
            tokens, token_mask = self.attribute_tokens(attributes, len(texts))
            memory = torch.cat([memory, tokens * token_mask[..., None]], dim=1)  # [B, L + A, D]
            mask = torch.cat([mask, token_mask], dim=1)
        if drop is not None:
            keep = ~drop.to(mask.device)  # [B]
            memory = memory * keep[:, None, None].to(memory.dtype)
            mask = mask & keep[:, None]
        return memory, mask


def with_null_condition(memory: torch.Tensor, mask: torch.Tensor):
    """Append the null condition below the batch for classifier-free guidance: ``[2B, L, D]``."""
    return torch.cat([memory, torch.zeros_like(memory)]), torch.cat([mask, torch.zeros_like(mask)])
