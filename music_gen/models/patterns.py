"""The MusicGen delay pattern: how K parallel codebooks become one sequence.

EnCodec gives K codes per frame. Predicting all K at once from the past frames
ignores that the finer codebooks depend on the coarser ones of the same frame;
predicting them one after another costs K steps per frame. The delay pattern is
the middle road: codebook k is shifted right by k steps, so at each step the
model predicts codebook 0 of frame t, codebook 1 of frame t-1, ..., and every
codebook k is predicted after codebook k-1 of the same frame was already seen.

Worked example, K = 3 codebooks, T = 4 frames, ``_`` the special token::

    codes                  delayed (T + K - 1 = 6 steps)
    k0: a0 a1 a2 a3        k0: a0 a1 a2 a3 _  _
    k1: b0 b1 b2 b3   ->   k1: _  b0 b1 b2 b3 _
    k2: c0 c1 c2 c3        k2: _  _  c0 c1 c2 c3

The model reads step s-1 and predicts step s (step -1 is all special tokens,
the start token). ``revert_delay`` undoes the shift; ``valid_mask`` marks which
slots of the delayed sequence hold real codes, so the loss skips the ``_``.
"""

from __future__ import annotations

import torch


def delayed_length(num_frames: int, num_codebooks: int) -> int:
    """Steps needed to hold ``num_frames`` frames of ``num_codebooks`` delayed codebooks."""
    return num_frames + num_codebooks - 1


def valid_mask(num_codebooks: int, num_steps: int, device=None) -> torch.Tensor:
    """``[K, S]`` bool: True where step s of codebook k holds a real code (s - k in [0, T))."""
    num_frames = num_steps - num_codebooks + 1
    steps = torch.arange(num_steps, device=device)  # [S]
    shift = steps[None, :] - torch.arange(num_codebooks, device=device)[:, None]  # [K, S]
    return (shift >= 0) & (shift < num_frames)


def build_delay(codes: torch.Tensor, special: int) -> torch.Tensor:
    """``[B, K, T]`` codes -> ``[B, K, T + K - 1]`` delayed sequence, ``special`` in empty slots."""
    batch, num_codebooks, num_frames = codes.shape
    out = codes.new_full((batch, num_codebooks, delayed_length(num_frames, num_codebooks)), special)
    for k in range(num_codebooks):  # K is small (4 to 8); a loop reads clearer than a gather
        out[:, k, k : k + num_frames] = codes[:, k]
    return out


def revert_delay(delayed: torch.Tensor) -> torch.Tensor:
    """``[B, K, S]`` delayed sequence -> ``[B, K, S - K + 1]`` codes (inverse of ``build_delay``)."""
    num_codebooks, num_steps = delayed.shape[1], delayed.shape[2]
    num_frames = num_steps - num_codebooks + 1
    if num_frames < 0:
        raise ValueError(f"{num_steps} steps cannot hold {num_codebooks} delayed codebooks")
    return torch.stack(
        [delayed[:, k, k : k + num_frames] for k in range(num_codebooks)], dim=1
    )  # [B, K, T]
