"""Choosing the next codes from logits: guidance, temperature, top-k, top-p, per row.

Every setting is a ``[B]`` tensor so that one batch can carry requests with
different settings (the server batches unrelated requests). ``top_k == 1`` or
``temperature == 0`` is greedy; ``top_k == 0`` and ``top_p == 0`` disable those
filters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class HostSettings:
    """Each row's ``top_k``, ``top_p`` and ``temperature`` as Python numbers.

    ``sample`` picks its shapes (greedy or not, how many candidates) from the settings;
    read from device tensors that costs a host-device synchronisation per step. A
    caller that knows them on the host (the engine: they come with each request) passes
    them, and the step runs without one.
    """

    top_k: tuple[int, ...]
    top_p: tuple[float, ...]
    temperature: tuple[float, ...]

    def greedy(self) -> list[bool]:
        return [k == 1 or t <= 0 for k, t in zip(self.top_k, self.temperature, strict=True)]

    def candidates(self, vocab: int) -> list[int]:
        """Candidates each row draws among: all with top-p, else its top-k."""
        return [
            vocab if p > 0 else min(k if k > 0 else vocab, vocab)
            for k, p in zip(self.top_k, self.top_p, strict=True)
        ]


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
    host: HostSettings | None = None,
) -> torch.Tensor:
    """``logits [B, K, V]`` -> codes ``[B, K]``.

    ``generators``: one for the whole batch, one per row (per-row seeds), or None.
    ``host``: the same settings as Python numbers, so that nothing is read back from the
    device (see ``HostSettings``); the codes are the same with or without it.
    """
    batch, _, vocab = logits.shape
    greedy = (top_k == 1) | (temperature <= 0)  # [B]
    choice = logits.argmax(dim=-1)  # [B, K]
    k = torch.where(top_k > 0, top_k, vocab).clamp(max=vocab)  # [B]
    if host is None:  # read from the device: a synchronisation
        all_greedy, any_top_p = bool(greedy.all()), bool((top_p > 0).any())
        kmax, counts = int(k.max()), None
    else:
        all_greedy, any_top_p = all(host.greedy()), any(p > 0 for p in host.top_p)
        counts = host.candidates(vocab)
        kmax = max(min(c if c > 0 else vocab, vocab) for c in host.top_k)
    if all_greedy:
        return choice

    logits = logits.float() / temperature.clamp_min(1e-5).view(-1, 1, 1)
    if any_top_p or kmax == vocab:
        values, indices = logits.sort(dim=-1, descending=True)  # [B, K, V]
    else:  # cheaper than a full sort when every row keeps only a few candidates
        values, indices = logits.topk(kmax, dim=-1)  # [B, K, kmax]
    ranks = torch.arange(values.shape[-1], device=logits.device)
    values = values.masked_fill(ranks >= k.view(-1, 1, 1), float("-inf"))
    probs = values.softmax(dim=-1)  # [B, K, C]
    if any_top_p:
        probs = _top_p_filter(probs, top_p)

    # Each row draws among its own candidates only: multinomial spends one random number
    # per candidate, so a seeded row must not see how many the rest of the batch kept.
    if counts is None and generators is not None and not isinstance(generators, torch.Generator):
        counts = torch.where(top_p > 0, vocab, k).tolist()  # a synchronisation
    drawn = _draw(probs, generators, counts)  # [B, K] positions among the candidates
    sampled = indices.gather(-1, drawn[..., None]).squeeze(-1)  # [B, K]
    return torch.where(greedy[:, None], choice, sampled)


def _top_p_filter(probs: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep the smallest prefix of sorted candidates whose mass reaches ``top_p`` (per row;
    rows with ``top_p == 0`` keep their candidates)."""
    active = top_p > 0  # [B]
    before = probs.cumsum(dim=-1) - probs  # mass strictly before each candidate
    cut = (before >= top_p.view(-1, 1, 1)) & active.view(-1, 1, 1)  # the first stays always
    probs = probs.masked_fill(cut, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


def _draw(probs: torch.Tensor, generators, counts: list[int] | None) -> torch.Tensor:
    """One draw per row and codebook; with a generator per row, row ``i`` draws among its
    first ``counts[i]`` candidates."""
    batch, codebooks, candidates = probs.shape
    if generators is None or isinstance(generators, torch.Generator):
        flat = torch.multinomial(probs.reshape(-1, candidates), 1, generator=generators)
        return flat.view(batch, codebooks)
    assert counts is not None
    rows = [
        torch.multinomial(probs[row, :, : min(count, candidates)], 1, generator=gen).squeeze(-1)
        for row, (gen, count) in enumerate(zip(generators, counts, strict=True))
    ]
    return torch.stack(rows)  # [B, K]
