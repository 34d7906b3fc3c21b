"""Conditioning: text (a frozen T5 encoder) and optional attributes -> cross-attention memory.

The memory is ``[B, L, D]`` at the language model's width with a ``[B, L]`` mask.
Text tokens come first, then one learned token per attribute (genre, mood, key,
tempo, instrument). The *null condition* used by classifier-free guidance and by
condition dropout is all-zero memory with an all-False mask: the cross-attention
then contributes exactly nothing, as in MusicGen.

Melody (MusicGen-Melody models, ``melody`` settings given): a one-hot chromagram
``[B, T, 12]`` (``models/melody.py``) is projected to the model's width, looped or cut
to ``chroma_length`` frames and put *before* the text states; such models attend to
the whole condition as a prefix (no mask). Their null condition is not all zeros:
the chroma part is the projection of pitch class 0 (what MusicGen-Melody uses for "no
melody"), the text part zeros. ``null_condition`` builds the right one for each.

Attribute values need no vocabulary file: ``models/attributes.py`` hashes each
into a bucket of its attribute's table (bucket 0 means "not given").
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from music_gen.errors import UsageError
from music_gen.models.attributes import BUCKETS, attribute_bucket
from music_gen.models.melody import ChromaSettings, loop_frames


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
        melody: dict | None = None,
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
            {name: nn.Embedding(BUCKETS, dim) for name in self.attributes}
        )
        # Melody: ChromaSettings as a dict (it is saved in the checkpoint's JSON as is).
        self.melody = ChromaSettings(**melody) if melody is not None else None
        self.melody_proj: nn.Module | None = None
        if self.melody is not None:
            chroma = self.melody.num_chroma  # MusicGen-Melody projects only if widths differ
            self.melody_proj = nn.Linear(chroma, dim) if chroma != dim else nn.Identity()
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

    def melody_states(self, chroma: torch.Tensor | None, batch: int) -> torch.Tensor:
        """Chroma ``[B, T, 12]`` (None: no melody) -> ``[B, chroma_length, D]`` states."""
        assert self.melody is not None and self.melody_proj is not None
        if chroma is None:
            chroma = self.null_chroma(batch)
        chroma = loop_frames(chroma.to(self.device), self.melody.chroma_length)
        return self.melody_proj(chroma.to(self._dtype))  # [B, chroma_length, D]

    def null_chroma(self, batch: int) -> torch.Tensor:
        """MusicGen-Melody's "no melody": one frame of pitch class 0, ``[B, 1, 12]``."""
        assert self.melody is not None
        chroma = torch.zeros(batch, 1, self.melody.num_chroma, device=self.device)
        chroma[..., 0] = 1
        return chroma

    @property
    def _dtype(self) -> torch.dtype:
        module = self.melody_proj if isinstance(self.melody_proj, nn.Linear) else self.encoder
        return next(module.parameters()).dtype

    def null_condition(self, memory: torch.Tensor, mask: torch.Tensor):
        """Append the null condition below the batch for classifier-free guidance."""
        if self.melody is None:
            return with_null_condition(memory, mask)
        null = torch.zeros_like(memory)  # [B, Lc + L, D]
        length = self.melody.chroma_length
        null[:, :length] = self.melody_states(None, memory.shape[0]).to(memory.dtype)
        return torch.cat([memory, null]), torch.cat([mask, mask])

    def forward(
        self,
        texts: Sequence[str],
        attributes: Sequence[dict] | None = None,
        drop: torch.Tensor | None = None,
        melody: torch.Tensor | None = None,
        melody_drop: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory and mask for a batch; rows where ``drop`` [B] is True get the null condition.

        Melody models take ``melody`` chroma ``[B, T, 12]`` (None: no melody); ``drop``
        drops text and melody of a row, ``melody_drop`` [B] the melody alone.
        """
        memory, mask = self._text_condition(texts, attributes, drop)
        if self.melody is None:
            if melody is not None:
                raise UsageError("this model has no melody conditioner: it cannot take a melody")
            return memory, mask
        batch = len(texts)
        states = self.melody_states(melody, batch)  # [B, Lc, D]
        for rows in (drop, melody_drop):
            if rows is not None:  # dropped rows hear "no melody"
                null = self.melody_states(None, batch)
                states = torch.where(rows.to(self.device)[:, None, None], null, states)
        memory = torch.cat([states.to(memory.dtype), memory], dim=1)  # [B, Lc + L, D]
        # The whole prefix is attended (text padding is zero vectors), as in MusicGen-Melody.
        return memory, torch.ones(memory.shape[:2], dtype=torch.bool, device=memory.device)

    def _text_condition(self, texts, attributes, drop):
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
