"""LoRA adapters (models/lora.py): only the adapter trains, the file round-trips, merged and
unmerged models compute the same logits, and an adapter over another base is refused."""

import json

import pytest
import torch

from music_gen import MusicGen
from music_gen.errors import CheckpointError
from music_gen.models import formats, lora
from tests.helpers import tiny_musicgen

pytestmark = pytest.mark.unit

SPEC = lora.LoraSpec(rank=4, alpha=8, targets=("self_attn", "cross_attn"))


def logits(model: MusicGen, seed: int = 0) -> torch.Tensor:
    """The LM's logits for a fixed batch of codes and prompts."""
    generator = torch.Generator().manual_seed(seed)
    cfg = model.lm.cfg
    codes = torch.randint(0, cfg.cardinality, (2, cfg.num_codebooks, 12), generator=generator)
    memory, mask = model.conditioner(["warm pads", "fast drums"], None)
    with torch.no_grad():
        return model.lm(codes, memory, mask)  # [B, K, T, card]


def adapted(base_dir, seed: int = 1) -> MusicGen:
    """The base from ``base_dir`` with an adapter whose B matrices are not zero."""
    model = MusicGen.from_pretrained(base_dir)
    spec = lora.LoraSpec(
        **{**SPEC.__dict__, "base": str(base_dir), "base_fingerprint": lora.fingerprint(model.lm)}
    )
    lora.attach(model.lm, spec)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.lm.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)
    return model


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "model"
    tiny_musicgen(seed=0).save_pretrained(path)
    return path


def test_only_the_adapter_trains(base_dir):
    model = MusicGen.from_pretrained(base_dir)
    before = {k: v.clone() for k, v in lora.base_state(model.lm).items()}
    lora.attach(model.lm, SPEC)
    trainable = [n for n, p in model.lm.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # Every targeted layer of every block has one, the FFN none.
    blocks = model.lm.cfg.num_layers
    assert len(trainable) == 2 * 5 * blocks  # A and B for qkv, out, q, kv, out
    assert not any(".fc1." in n or ".fc2." in n for n in trainable)
    assert torch.allclose(logits(model), logits(MusicGen.from_pretrained(base_dir)))  # B = 0

    memory, mask = model.conditioner(["a"], None)
    memory = memory.detach()
    codes = torch.randint(0, model.lm.cfg.cardinality, (1, model.lm.cfg.num_codebooks, 8))
    optimizer = torch.optim.SGD([p for p in model.lm.parameters() if p.requires_grad], lr=0.1)
    for _ in range(2):
        model.lm(codes, memory, mask).square().mean().backward()
        optimizer.step()
        optimizer.zero_grad()
    after = lora.base_state(model.lm)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(p.abs().sum() > 0 for n, p in model.lm.named_parameters() if "lora_B" in n)


def test_merged_and_unmerged_give_the_same_logits(base_dir):
    model = adapted(base_dir)
    unmerged = logits(model)
    assert not torch.allclose(unmerged, logits(MusicGen.from_pretrained(base_dir)), atol=1e-4)
    lora.merge(model.lm)
    assert lora.spec_of(model.lm) is None
    assert not any("lora" in name for name in model.lm.state_dict())
    torch.testing.assert_close(logits(model), unmerged, atol=1e-5, rtol=1e-5)


def test_adapter_round_trips_through_from_pretrained(base_dir, tmp_path):
    model = adapted(base_dir)
    expected = logits(model)
    out = lora.save_adapter(tmp_path / "adapter", model.lm)
    assert sorted(p.name for p in out.iterdir()) == sorted(formats.ADAPTER_ENTRIES)
    size = (out / formats.ADAPTER_FILE).stat().st_size
    assert size < (base_dir / formats.WEIGHTS_FILE).stat().st_size / 3
    assert formats.source_kind(out) == "adapter"
    assert formats.codebook_shape(out) == formats.codebook_shape(base_dir)

    loaded = MusicGen.from_pretrained(out)  # the base, the adapter, merged
    assert lora.spec_of(loaded.lm) is None
    torch.testing.assert_close(logits(loaded), expected, atol=1e-5, rtol=1e-5)
    codes = loaded.generate_codes(["warm pads"], duration=0.2, top_k=1)
    assert codes.shape[:2] == (1, loaded.num_codebooks)


def test_adapter_over_another_base_is_refused(base_dir, tmp_path):
    out = lora.save_adapter(tmp_path / "adapter", adapted(base_dir).lm)
    other = tmp_path / "other"
    tiny_musicgen(seed=7).save_pretrained(other)  # same shapes, other weights
    meta = json.loads((out / formats.ADAPTER_CONFIG).read_text())
    (out / formats.ADAPTER_CONFIG).write_text(json.dumps({**meta, "base": str(other)}))
    with pytest.raises(CheckpointError, match="trained over another base"):
        MusicGen.from_pretrained(out)


def test_damaged_adapters_are_one_clear_error(base_dir, tmp_path):
    out = lora.save_adapter(tmp_path / "adapter", adapted(base_dir).lm)
    meta = json.loads((out / formats.ADAPTER_CONFIG).read_text())

    (out / formats.ADAPTER_CONFIG).write_text(json.dumps({**meta, "base": str(tmp_path / "x")}))
    with pytest.raises(CheckpointError, match="its base .* cannot be loaded"):
        MusicGen.from_pretrained(out)

    (out / formats.ADAPTER_CONFIG).write_text(json.dumps({**meta, "rank": 8}))
    with pytest.raises(CheckpointError, match="shape"):
        MusicGen.from_pretrained(out)

    (out / formats.ADAPTER_CONFIG).write_text(json.dumps({**meta, "targets": ["nope"]}))
    with pytest.raises(CheckpointError, match="malformed"):
        MusicGen.from_pretrained(out)

    (out / formats.ADAPTER_CONFIG).write_text(json.dumps(meta))
    (out / formats.ADAPTER_FILE).write_bytes(b"not safetensors")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        MusicGen.from_pretrained(out)


def test_export_merges_an_adapter_into_a_full_checkpoint(base_dir, tmp_path):
    from music_gen.pipelines.export import export

    model = adapted(base_dir)
    expected = logits(model)
    adapter = lora.save_adapter(tmp_path / "adapter", model.lm)
    merged = export(str(adapter), "safetensors", tmp_path / "merged")
    assert formats.source_kind(merged) == "ours"
    torch.testing.assert_close(
        logits(MusicGen.from_pretrained(merged)), expected, atol=1e-5, rtol=1e-5
    )
