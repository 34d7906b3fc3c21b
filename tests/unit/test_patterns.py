import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from music_gen.models.patterns import build_delay, delayed_length, revert_delay, valid_mask

pytestmark = pytest.mark.unit

SPECIAL = 99


def test_worked_example_from_docstring():
    codes = torch.arange(12).view(1, 3, 4)  # k0: 0..3, k1: 4..7, k2: 8..11
    delayed = build_delay(codes, SPECIAL)[0]
    S = SPECIAL
    assert delayed.tolist() == [
        [0, 1, 2, 3, S, S],
        [S, 4, 5, 6, 7, S],
        [S, S, 8, 9, 10, 11],
    ]
    assert valid_mask(3, 6).tolist() == (delayed != S).tolist()


@settings(max_examples=60, deadline=None)
@given(
    batch=st.integers(1, 3),
    codebooks=st.integers(1, 8),
    frames=st.integers(0, 20),
    seed=st.integers(0, 2**16),
)
def test_build_then_revert_is_identity(batch, codebooks, frames, seed):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, SPECIAL, (batch, codebooks, frames), generator=gen)
    delayed = build_delay(codes, SPECIAL)
    assert delayed.shape == (batch, codebooks, delayed_length(frames, codebooks))
    assert torch.equal(revert_delay(delayed), codes)
    mask = valid_mask(codebooks, delayed.shape[-1])
    assert torch.equal(delayed != SPECIAL, mask.expand_as(delayed))
    assert int(mask.sum()) == codebooks * frames


def test_revert_rejects_too_short_sequences():
    with pytest.raises(ValueError):
        revert_delay(torch.zeros(1, 4, 2, dtype=torch.long))
