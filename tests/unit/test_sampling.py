import pytest
import torch

from music_gen.models import sampling
from music_gen.models.sampling import apply_guidance, sample

pytestmark = pytest.mark.unit


def _settings(batch, temperature=1.0, top_k=0, top_p=0.0):
    return (
        torch.full((batch,), temperature),
        torch.full((batch,), top_k, dtype=torch.long),
        torch.full((batch,), top_p),
    )


def test_top_k_one_is_argmax():
    logits = torch.randn(3, 4, 50)
    assert torch.equal(sample(logits, *_settings(3, top_k=1)), logits.argmax(-1))


def test_zero_temperature_is_argmax():
    logits = torch.randn(2, 4, 50)
    assert torch.equal(sample(logits, *_settings(2, temperature=0.0, top_k=10)), logits.argmax(-1))


def test_top_k_never_samples_outside_the_k_best():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 2, 100, generator=gen)
    best = logits.topk(5, dim=-1).indices  # [B, K, 5]
    for _ in range(50):
        codes = sample(logits, *_settings(4, top_k=5), generators=gen)
        assert (codes[..., None] == best).any(-1).all()


def test_top_p_keeps_the_smallest_nucleus():
    # probabilities 0.5, 0.3, 0.1, 0.1: top_p 0.7 keeps exactly the first two
    probs = torch.tensor([0.5, 0.3, 0.1, 0.1])
    logits = probs.log().view(1, 1, 4).expand(1, 3, 4).contiguous()
    gen = torch.Generator().manual_seed(1)
    seen = set()
    for _ in range(200):
        seen.update(sample(logits, *_settings(1, top_p=0.7), generators=gen).flatten().tolist())
    assert seen == {0, 1}


def test_seeds_reproduce_and_differ():
    logits = torch.randn(2, 4, 64)
    draws = [
        sample(logits, *_settings(2, top_k=20), generators=torch.Generator().manual_seed(s))
        for s in (7, 7, 8)
    ]
    assert torch.equal(draws[0], draws[1])
    assert not torch.equal(draws[0], draws[2])


def test_per_row_settings_and_generators():
    logits = torch.randn(2, 4, 64)
    temperature = torch.tensor([1.0, 1.0])
    top_k = torch.tensor([1, 20])
    top_p = torch.tensor([0.0, 0.9])
    gens = [torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)]
    codes = sample(logits, temperature, top_k, top_p, generators=gens)
    assert torch.equal(codes[0], logits[0].argmax(-1))  # row 0 greedy, row 1 sampled
    again = sample(
        logits[1:],
        temperature[1:],
        top_k[1:],
        top_p[1:],
        generators=[torch.Generator().manual_seed(3)],
    )
    assert torch.equal(codes[1], again[0])  # a row's draw depends only on its own seed


def test_guidance_formula_and_scale_one():
    cond, uncond = torch.randn(2, 3, 10), torch.randn(2, 3, 10)
    guided = apply_guidance(torch.cat([cond, uncond]), torch.tensor([3.0, 1.0]))
    torch.testing.assert_close(guided[0], uncond[0] + 3.0 * (cond[0] - uncond[0]))
    assert torch.equal(guided[1], cond[1])


def test_host_settings_draw_the_same_codes_without_reading_the_device():
    # Mixed rows: greedy, top-k, top-p, zero temperature; a seeded generator per row.
    logits = torch.randn(4, 3, 50, generator=torch.Generator().manual_seed(0))
    top_k, top_p, temperature = [1, 5, 0, 20], [0.0, 0.0, 0.9, 0.0], [1.0, 0.8, 1.2, 0.0]
    settings = {
        "temperature": torch.tensor(temperature),
        "top_k": torch.tensor(top_k),
        "top_p": torch.tensor(top_p),
    }
    host = sampling.HostSettings(tuple(top_k), tuple(top_p), tuple(temperature))
    for seed in range(5):

        def generators(seed=seed):
            return [torch.Generator().manual_seed(seed * 10 + row) for row in range(4)]

        plain = sampling.sample(logits, **settings, generators=generators())
        hinted = sampling.sample(logits, **settings, generators=generators(), host=host)
        assert torch.equal(plain, hinted)
    assert host.greedy() == [True, False, False, True]
    assert host.candidates(50) == [1, 5, 50, 20]
