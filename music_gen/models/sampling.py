"""Choosing the next codes from logits: guidance, temperature, top-k, top-p, per row.

Every setting is a ``[B]`` tensor so that one batch can carry requests with
different settings (the server batches unrelated requests). ``top_k == 1`` or
``temperature == 0`` is greedy; ``top_k == 0`` and ``top_p == 0`` disable those
filters.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def apply_guidance(logits: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``[2B, ...]`` logits (conditional rows, then null rows) -> ``[B, ...]`` guided logits.

    ``uncond + scale * (cond - uncond)``; rows with scale 1 keep the conditional
    logits exactly.
    """
    cond, uncond = logits.chunk(2)
    scale = scale.view(-1, *([1] * (cond.dim() - 1))).to(cond.dtype)
    guided = uncond + scale * (cond - uncond)
    return torch.where(scale == 1, cond, guided)


def sample(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_k: torch.Tensor,
    top_p: torch.Tensor,
    generators: Sequence[torch.Generator | None] | torch.Generator | None = None,
) -> torch.Tensor:
    """``logits [B, K, V]`` -> codes ``[B, K]``.

    ``generators``: one for the whole batch, one per row (per-row seeds), or None.
    """
    batch, _, vocab = logits.shape
    greedy = (top_k == 1) | (temperature <= 0)  # [B]
    choice = logits.argmax(dim=-1)  # [B, K]
    if bool(greedy.all()):
        return choice

    logits = logits.float() / temperature.clamp_min(1e-5).view(-1, 1, 1)
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab)  # [B]
    if bool((top_p > 0).any()) or int(k.max()) == vocab:
        values, indices = logits.sort(dim=-1, descending=True)  # [B, K, V]
    else:  # cheaper than a full sort when every row keeps only a few candidates
        values, indices = logits.topk(int(k.max()), dim=-1)  # [B, K, kmax]
    ranks = torch.arange(values.shape[-1], device=logits.device)
    values = values.masked_fill(ranks >= k.view(-1, 1, 1), float("-inf"))
    probs = values.softmax(dim=-1)  # [B, K, C]
    probs = _top_p_filter(probs, top_p)

    # Each row draws among its own candidates only: multinomial spends one random number
    # per candidate, so a seeded row must not see how many the rest of the batch kept.
    own = torch.where(top_p > 0, vocab, k)  # [B]
    drawn = _draw(probs, generators, own)  # [B, K] positions among the candidates
    sampled = indices.gather(-1, drawn[..., None]).squeeze(-1)  # [B, K]
    return torch.where(greedy[:, None], choice, sampled)


def _top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest prefix of sorted candidates whose mass reaches ``top_p`` (per row)."""
    active = top_p > 0  # [B]
    if not bool(active.any()):
        return probs
    before = probs.cumsum(dim=-1) - probs  # mass strictly before each candidate
    cut = (before >= top_p.view(-1, 1, 1)) & active.view(-1, 1, 1)  # the first stays always
    probs = probs.masked_fill(cut, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


def _draw(probs: torch.Tensor, generators, own: torch.Tensor) -> torch.Tensor:
    batch, codebooks, candidates = probs.shape
    if generators is None or isinstance(generators, torch.Generator):
        flat = torch.multinomial(probs.reshape(-1, candidates), 1, generator=generators)
        return flat.view(batch, codebooks)
    counts = own.clamp(max=candidates).tolist()
    rows = [
        torch.multinomial(probs[row, :, : counts[row]], 1, generator=gen).squeeze(-1)
        for row, gen in enumerate(generators)
    ]
    return torch.stack(rows)  # [B, K]
