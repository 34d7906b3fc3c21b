"""The language model: a decoder-only transformer over K parallel codebooks.

Read top to bottom: config and size presets, the attention and block modules,
then ``LM`` with a full forward (training) and an incremental decoder
(``start`` + ``step``) that keeps a preallocated key/value cache.

Layout, as in MusicGen:
- one embedding table per codebook (``cardinality + 1`` rows, the last is the
  special token of the delay pattern), summed over codebooks;
- sinusoidal positions; pre-norm blocks of self-attention, cross-attention to the
  conditioning memory and a GELU feed-forward; no biases in linear layers;
- one output head per codebook over ``cardinality`` codes.

Two variants follow MusicGen's checkpoints: stereo models (``audio_channels=2``) have
interleaved left/right codebooks (``patterns.py``), nothing else changes here; melody
models (``cross_attention=False``, MusicGen-Melody) have no cross-attention: the
condition is prepended to the token sequence as a prefix that self-attention sees
(``start`` runs it through the blocks once, into the key/value cache).

For speed the K tables live in one ``nn.Embedding`` (codebook k's rows start at
``k * (cardinality + 1)``) and the K heads in one ``nn.Linear``; q/k/v are one
matrix. Each is one kernel per step instead of K or 3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class LMConfig:
    dim: int
    """Transformer width."""
    num_layers: int
    """Decoder blocks."""
    num_heads: int
    """Attention heads (dim must divide evenly)."""
    ffn_dim: int
    """Feed-forward hidden width."""
    num_codebooks: int = 4
    """Parallel codebooks K (the codec's)."""
    cardinality: int = 2048
    """Codes per codebook; the special token is ``cardinality``."""
    max_positions: int = 1536
    """Positions precomputed for the sinusoidal table (grown on demand)."""
    gradient_checkpointing: bool = False
    """Recompute block activations in the backward pass."""
    audio_channels: int = 1
    """Channels as interleaved codebooks: 2 for stereo MusicGen (codebook ``k`` is level
    ``k // 2`` of channel ``k % 2``); ``num_codebooks`` counts both channels."""
    cross_attention: bool = True
    """False: the condition is a prefix of the self-attention sequence (MusicGen-Melody),
    attended in full (its padding rows are zero vectors, as there)."""

    @property
    def num_levels(self) -> int:
        """Codebook levels, i.e. distinct delays of the pattern: ``K / audio_channels``."""
        return self.num_codebooks // self.audio_channels

    @property
    def special_token(self) -> int:
        return self.cardinality

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


# Size presets as plain functions with literal values (MusicGen's published sizes).
def debug(**overrides) -> LMConfig:
    return LMConfig(**{"dim": 64, "num_layers": 2, "num_heads": 4, "ffn_dim": 256, **overrides})


def small(**overrides) -> LMConfig:
    return LMConfig(
        **{"dim": 1024, "num_layers": 24, "num_heads": 16, "ffn_dim": 4096, **overrides}
    )


def medium(**overrides) -> LMConfig:
    return LMConfig(
        **{"dim": 1536, "num_layers": 48, "num_heads": 24, "ffn_dim": 6144, **overrides}
    )


def large(**overrides) -> LMConfig:
    return LMConfig(
        **{"dim": 2048, "num_layers": 48, "num_heads": 32, "ffn_dim": 8192, **overrides}
    )


PRESETS = {"debug": debug, "small": small, "medium": medium, "large": large}


def sinusoidal_table(num_positions: int, dim: int) -> torch.Tensor:
    """``[P, dim]`` positions as in MusicGen (cosines first, then sines)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    angles = torch.arange(num_positions, dtype=torch.float32)[:, None] * freqs[None, :]  # [P, half]
    table = torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)  # [P, 2 * half]
    if dim % 2:
        table = F.pad(table, (0, 1))
    return table


def _split_heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    batch, length, dim = x.shape
    return x.view(batch, length, num_heads, dim // num_heads).transpose(1, 2)  # [B, H, L, hd]


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * head_dim)  # [B, L, D]


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:
        q, k, v = (_split_heads(t, self.num_heads) for t in self.qkv(x).chunk(3, dim=-1))
        if cache is None:  # training / full forward: plain causal attention
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            k, v, mask = cache.append(k, v)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.out(_merge_heads(y))


class CrossAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim, bias=False)

    def memory_kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(memory).chunk(2, dim=-1)
        return _split_heads(k, self.num_heads), _split_heads(v, self.num_heads)  # [B, H, L, hd]

    def forward(self, x, memory_kv, memory_bias) -> torch.Tensor:
        q = _split_heads(self.q(x), self.num_heads)  # [B, H, S, hd]
        k, v = memory_kv
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=memory_bias)
        return self.out(_merge_heads(y))


class Block(nn.Module):
    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm_self = nn.LayerNorm(cfg.dim)
        self.self_attn = SelfAttention(cfg.dim, cfg.num_heads)
        self.cross_attn: CrossAttention | None = None
        if cfg.cross_attention:
            self.norm_cross = nn.LayerNorm(cfg.dim)
            self.cross_attn = CrossAttention(cfg.dim, cfg.num_heads)
        self.norm_ffn = nn.LayerNorm(cfg.dim)
        self.fc1 = nn.Linear(cfg.dim, cfg.ffn_dim, bias=False)
        self.fc2 = nn.Linear(cfg.ffn_dim, cfg.dim, bias=False)

    def forward(self, x, memory_kv, memory_bias, cache: LayerCache | None = None):
        x = x + self.self_attn(self.norm_self(x), cache)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), memory_kv, memory_bias)
        return x + self.fc2(F.gelu(self.fc1(self.norm_ffn(x))))


def memory_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, L]`` bool (True = attend) -> additive ``[B, 1, 1, L]`` bias.

    A finite minimum rather than -inf: a row with no valid token (the null
    condition of classifier-free guidance) then attends uniformly to zero
    memory and gets exactly zero, as MusicGen does, instead of NaN.
    """
    bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    bias.masked_fill_(~mask, torch.finfo(dtype).min)
    return bias[:, None, None, :]


class LayerCache:
    """Preallocated self-attention keys/values of one layer, filled step by step."""

    def __init__(self, batch, num_heads, max_len, head_dim, dtype, device):
        shape = (batch, num_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # [B, H, max_len, hd]
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0

    def append(self, k, v):
        """Write the new steps, return keys/values so far and the mask the queries need."""
        start, new = self.length, k.shape[2]
        if start + new > self.k.shape[2]:
            raise RuntimeError(f"cache holds {self.k.shape[2]} steps, asked for {start + new}")
        self.k[:, :, start : start + new] = k
        self.v[:, :, start : start + new] = v
        self.length = start + new
        mask = None
        if new > 1:  # a prefill: new steps see the cache and earlier new steps only
            rows = torch.arange(start, start + new, device=k.device)[:, None]
            mask = torch.arange(start + new, device=k.device)[None, :] <= rows  # [new, total]
        return self.k[:, :, : self.length], self.v[:, :, : self.length], mask


@dataclass
class DecodeState:
    """Everything incremental decoding keeps between steps."""

    caches: list[LayerCache]
    memory_kv: list[tuple[torch.Tensor, torch.Tensor] | None]  # None without cross-attention
    memory_bias: torch.Tensor | None
    position: int = 0


class LM(nn.Module):
    codebook_offsets: torch.Tensor  # [K] buffer
    positions: torch.Tensor  # [max_positions, D] buffer

    def __init__(self, cfg: LMConfig):
        super().__init__()
        if cfg.dim % cfg.num_heads:
            raise ValueError(f"dim {cfg.dim} is not divisible by {cfg.num_heads} heads")
        if cfg.audio_channels not in (1, 2) or cfg.num_codebooks % cfg.audio_channels:
            raise ValueError(
                f"{cfg.num_codebooks} codebooks do not split into {cfg.audio_channels} channels"
            )
        self.cfg = cfg
        vocab = cfg.cardinality + 1  # + the special token
        self.embed = nn.Embedding(cfg.num_codebooks * vocab, cfg.dim)
        self.register_buffer(
            "codebook_offsets", torch.arange(cfg.num_codebooks) * vocab, persistent=False
        )
        self.register_buffer(
            "positions", sinusoidal_table(cfg.max_positions, cfg.dim), persistent=False
        )
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.LayerNorm(cfg.dim)
        self.head = nn.Linear(cfg.dim, cfg.num_codebooks * cfg.cardinality, bias=False)
        self.apply(_init_weights)

    # -- shared pieces ---------------------------------------------------------

    def _embed(self, codes: torch.Tensor, start: int) -> torch.Tensor:
        """``[B, K, S]`` codes -> ``[B, S, D]`` summed embeddings plus positions."""
        ids = codes + self.codebook_offsets[None, :, None]  # [B, K, S]
        x = self.embed(ids).sum(dim=1)  # [B, S, D]
        end = start + codes.shape[-1]
        self._table(end)
        return x + self.positions[start:end].to(x.dtype)

    def _table(self, end: int) -> None:
        if end > self.positions.shape[0]:  # grow the table for long generations
            self.positions = sinusoidal_table(2 * end, self.cfg.dim).to(self.positions)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, S, D]`` -> ``[B, K, S, card]``."""
        batch, steps, _ = x.shape
        logits = self.head(self.norm(x))  # [B, S, K * card]
        logits = logits.view(batch, steps, self.cfg.num_codebooks, self.cfg.cardinality)
        return logits.transpose(1, 2)  # [B, K, S, card]

    # -- full forward (training, scoring) ----------------------------------------

    def forward(
        self, codes: torch.Tensor, memory: torch.Tensor, memory_mask: torch.Tensor
    ) -> torch.Tensor:
        """``codes [B, K, S]``, ``memory [B, L, D]``, ``memory_mask [B, L]`` -> ``[B, K, S, card]``.

        Position s of the output predicts step s + 1 of the input (the caller shifts).
        """
        prefix = 0 if self.cfg.cross_attention else memory.shape[1]
        x = self._embed(codes, start=prefix)  # [B, S, D]
        if prefix:  # MusicGen-Melody: the condition leads the sequence, positions from 0
            x = torch.cat([memory + self.positions[:prefix].to(memory.dtype), x], dim=1)
        bias = memory_bias(memory_mask, x.dtype)
        for block in self.blocks:
            memory_kv = block.cross_attn.memory_kv(memory) if block.cross_attn else None
            if self.cfg.gradient_checkpointing and self.training:
                x = checkpoint(block, x, memory_kv, bias, use_reentrant=False)
            else:
                x = block(x, memory_kv, bias)
        return self._logits(x[:, prefix:])

    # -- incremental decoding ------------------------------------------------------

    def start(self, memory: torch.Tensor, memory_mask: torch.Tensor, max_steps: int) -> DecodeState:
        """Compute cross-attention keys/values once and allocate the self-attention cache."""
        cfg = self.cfg
        batch = memory.shape[0]
        prefix = 0 if cfg.cross_attention else memory.shape[1]
        caches = [
            LayerCache(
                batch, cfg.num_heads, prefix + max_steps, cfg.head_dim, memory.dtype, memory.device
            )
            for _ in self.blocks
        ]
        if cfg.cross_attention:
            memory_kv = [
                block.cross_attn.memory_kv(memory) if block.cross_attn else None
                for block in self.blocks
            ]
            return DecodeState(caches, memory_kv, memory_bias(memory_mask, memory.dtype))
        state = DecodeState(caches, [None] * len(self.blocks), None)
        self._table(prefix)
        x = memory + self.positions[:prefix].to(memory.dtype)  # [B, Lc, D]
        for block, cache in zip(self.blocks, caches, strict=True):
            x = block(x, None, None, cache)  # only the cache is kept: the prefix predicts nothing
        state.position = prefix
        return state

    def step(self, codes: torch.Tensor, state: DecodeState) -> torch.Tensor:
        """Feed ``codes [B, K, S_new]`` (one step, or a prompt prefill); logits for the new steps."""
        x = self._embed(codes, start=state.position)  # [B, S_new, D]
        for block, cache, memory_kv in zip(self.blocks, state.caches, state.memory_kv, strict=True):
            x = block(x, memory_kv, state.memory_bias, cache)
        state.position += codes.shape[-1]
        return self._logits(x)  # [B, K, S_new, card]


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear | nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
