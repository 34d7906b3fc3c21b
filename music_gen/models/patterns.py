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

Stereo (``channels=2``, as transformers' stereo MusicGen): the left and right
codebooks of each level are interleaved, ``k = 2 * level + channel``, and both
channels of a level share its delay, ``k // channels``. With 2 levels::

    k0 (L0): a0 a1 a2 _        k1 (R0): b0 b1 b2 _
    k2 (L1): _  c0 c1 c2       k3 (R1): _  d0 d1 d2

so the sequence is ``T + K / channels - 1`` steps long.
"""

from __future__ import annotations

import torch


def num_levels(num_codebooks: int, channels: int = 1) -> int:
    """Codebook levels (distinct delays): ``K / channels``."""
    if channels < 1 or num_codebooks % channels:
        raise ValueError(f"{num_codebooks} codebooks do not split into {channels} channels")
    return num_codebooks // channels


def delayed_length(num_frames: int, num_codebooks: int, channels: int = 1) -> int:
    """Steps needed to hold ``num_frames`` frames of ``num_codebooks`` delayed codebooks."""
    return num_frames + num_levels(num_codebooks, channels) - 1


def valid_mask(num_codebooks: int, num_steps: int, device=None, channels: int = 1) -> torch.Tensor:
    """``[K, S]`` bool: True where step s of codebook k holds a real code
    (s - delay(k) in [0, T), delay(k) = k // channels)."""
    num_frames = num_steps - num_levels(num_codebooks, channels) + 1
    steps = torch.arange(num_steps, device=device)  # [S]
    delays = torch.arange(num_codebooks, device=device) // channels  # [K]
    shift = steps[None, :] - delays[:, None]  # [K, S]
    return (shift >= 0) & (shift < num_frames)


def build_delay(codes: torch.Tensor, special: int, channels: int = 1) -> torch.Tensor:
    """``[B, K, T]`` codes -> ``[B, K, T + K/channels - 1]`` delayed sequence, ``special`` in
    empty slots."""
    batch, num_codebooks, num_frames = codes.shape
    steps = delayed_length(num_frames, num_codebooks, channels)
    out = codes.new_full((batch, num_codebooks, steps), special)
    for k in range(num_codebooks):  # K is small (4 to 8); a loop reads clearer than a gather
        delay = k // channels
        out[:, k, delay : delay + num_frames] = codes[:, k]
    return out


def revert_delay(delayed: torch.Tensor, channels: int = 1) -> torch.Tensor:
    """``[B, K, S]`` delayed sequence -> ``[B, K, S - K/channels + 1]`` codes (inverse of
    ``build_delay``)."""
    num_codebooks, num_steps = delayed.shape[1], delayed.shape[2]
    num_frames = num_steps - num_levels(num_codebooks, channels) + 1
    if num_frames < 0:
        raise ValueError(f"{num_steps} steps cannot hold {num_codebooks} delayed codebooks")
    return torch.stack(
        [delayed[:, k, k // channels : k // channels + num_frames] for k in range(num_codebooks)],
        dim=1,
    )  # [B, K, T]
