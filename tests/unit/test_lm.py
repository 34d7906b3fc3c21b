import pytest
import torch

from music_gen.models.lm import LM, PRESETS, debug, sinusoidal_table

pytestmark = pytest.mark.unit


def _inputs(cfg, batch=2, steps=7, mem_len=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, cfg.cardinality + 1, (batch, cfg.num_codebooks, steps), generator=gen)
    memory = torch.randn(batch, mem_len, cfg.dim, generator=gen)
    mask = torch.ones(batch, mem_len, dtype=torch.bool)
    mask[1, 3:] = False  # a padded row
    return codes, memory, mask


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    return LM(debug(cardinality=32, num_codebooks=3, max_positions=16)).eval()


def test_forward_shapes(lm):
    codes, memory, mask = _inputs(lm.cfg)
    logits = lm(codes, memory, mask)
    assert logits.shape == (2, 3, 7, 32)
    assert torch.isfinite(logits).all()


def test_cached_steps_match_full_forward(lm):
    codes, memory, mask = _inputs(lm.cfg)
    full = lm(codes, memory, mask)
    state = lm.start(memory, mask, max_steps=codes.shape[-1])
    steps = [lm.step(codes[..., s : s + 1], state) for s in range(codes.shape[-1])]
    torch.testing.assert_close(torch.cat(steps, dim=2), full, atol=1e-5, rtol=1e-5)


def test_prefill_then_steps_match_full_forward(lm):
    codes, memory, mask = _inputs(lm.cfg)
    full = lm(codes, memory, mask)
    state = lm.start(memory, mask, max_steps=codes.shape[-1])
    prefill = lm.step(codes[..., :4], state)
    rest = [lm.step(codes[..., s : s + 1], state) for s in range(4, codes.shape[-1])]
    torch.testing.assert_close(torch.cat([prefill, *rest], dim=2), full, atol=1e-5, rtol=1e-5)


def test_future_steps_do_not_change_past_logits(lm):
    codes, memory, mask = _inputs(lm.cfg)
    changed = codes.clone()
    changed[..., -1] = (changed[..., -1] + 1) % lm.cfg.cardinality
    a, b = lm(codes, memory, mask), lm(changed, memory, mask)
    torch.testing.assert_close(a[..., :-1, :], b[..., :-1, :])


def test_null_memory_gives_finite_output(lm):
    codes, memory, mask = _inputs(lm.cfg)
    logits = lm(codes, torch.zeros_like(memory), torch.zeros_like(mask))
    assert torch.isfinite(logits).all()


def test_positions_grow_past_the_table(lm):
    codes, memory, mask = _inputs(lm.cfg, steps=40)
    assert lm(codes, memory, mask).shape[2] == 40
    torch.testing.assert_close(lm.positions[:16], sinusoidal_table(16, lm.cfg.dim))


def test_gradient_checkpointing_gives_same_gradients():
    torch.manual_seed(0)
    plain = LM(debug(cardinality=16, num_codebooks=2))
    ckpt = LM(debug(cardinality=16, num_codebooks=2, gradient_checkpointing=True))
    ckpt.load_state_dict(plain.state_dict())
    codes, memory, mask = _inputs(plain.cfg)
    for model in (plain, ckpt):
        model.train()
        model(codes, memory, mask).logsumexp(-1).mean().backward()
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_presets_have_the_published_sizes():
    assert (PRESETS["small"]().dim, PRESETS["small"]().num_layers) == (1024, 24)
    assert PRESETS["medium"]().num_heads == 24
    assert PRESETS["large"]().dim == 2048
    assert PRESETS["small"]().cardinality == 2048
