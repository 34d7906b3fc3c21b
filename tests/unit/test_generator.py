import pytest
import torch

from music_gen import MusicGen
from music_gen.errors import CheckpointError, UsageError
from tests.helpers import sine, tiny_musicgen

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def model():
    return tiny_musicgen()


def test_generate_codes_shape_and_range(model):
    codes = model.generate_codes(["jazz", "rock"], duration=0.4, seed=0)
    frames = round(0.4 * model.frame_rate)
    assert codes.shape == (2, 4, frames)
    assert codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 64  # never the special token


def test_generate_returns_audio_at_the_codec_rate(model):
    audio = model.generate("ambient", duration=0.2, seed=1)
    assert audio.shape[:2] == (1, 1)
    assert audio.shape[-1] == round(0.2 * model.frame_rate) * model.codec.hop_length
    assert torch.isfinite(audio).all()


def test_seed_reproduces_and_changes(model):
    a = model.generate_codes(["jazz"], duration=0.3, seed=5)
    b = model.generate_codes(["jazz"], duration=0.3, seed=5)
    c = model.generate_codes(["jazz"], duration=0.3, seed=6)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_per_row_seeds_do_not_depend_on_the_batch(model):
    alone = model.generate_codes(["jazz"], duration=0.3, seed=[11])
    batched = model.generate_codes(["rock", "jazz"], duration=0.3, seed=[3, 11])
    assert torch.equal(batched[1], alone[0])


def test_a_seeded_row_ignores_the_settings_of_its_neighbours(model):
    # A server batches unrelated requests: another row's top-k or top-p must not change
    # what a seeded row draws.
    alone = model.generate_codes(["jazz"], duration=0.3, seed=[11], top_k=50)
    for other in ({"top_k": [5, 50]}, {"top_k": [0, 50]}, {"top_p": [0.9, 0.0], "top_k": 50}):
        batched = model.generate_codes(["rock", "jazz"], duration=0.3, seed=[3, 11], **other)
        assert torch.equal(batched[1], alone[0]), other


def test_generators_live_on_the_model_device(model, monkeypatch):
    # torch.multinomial on CUDA refuses a CPU generator: each one must be made on the
    # device of the model (and so of the logits it draws for).
    from music_gen.models import generator as G

    made = []
    real = G._generators
    monkeypatch.setattr(G, "_generators", lambda *a: made.append(real(*a)) or made[-1])
    model.generate_codes(["jazz", "rock"], duration=0.1, seed=[1, None])
    model.generate_codes(["jazz"], duration=0.1, seed=3)
    gens = [g for g in [*made[0], made[1]] if g is not None]
    assert len(gens) == 2 and all(g.device == model.device for g in gens)


@pytest.mark.gpu
def test_seeded_generation_on_cuda(model):
    cuda = model.to("cuda")
    try:
        alone = cuda.generate_codes(["jazz"], duration=0.3, seed=[11])
        batched = cuda.generate_codes(["rock", "jazz"], duration=0.3, seed=[3, 11])
        again = cuda.generate_codes(["jazz"], duration=0.3, seed=11)
        assert torch.equal(alone[0], batched[1]) and again.shape == alone.shape
    finally:
        model.to("cpu")


def test_greedy_is_deterministic_without_seed(model):
    a = model.generate_codes(["jazz"], duration=0.3, top_k=1)
    b = model.generate_codes(["jazz"], duration=0.3, top_k=1, temperature=0.5)
    assert torch.equal(a, b)


def test_guidance_changes_greedy_output(model):
    plain = model.generate_codes(["jazz"], duration=0.4, top_k=1, guidance_scale=1.0)
    none = model.generate_codes(["jazz"], duration=0.4, top_k=1, guidance_scale=None)
    guided = model.generate_codes(["jazz"], duration=0.4, top_k=1, guidance_scale=8.0)
    assert torch.equal(plain, none)
    assert not torch.equal(plain, guided)


def test_continuation_keeps_the_prompt(model):
    prompt = model.generate_codes(["jazz"], duration=0.2, seed=1)
    codes = model.generate_codes(["jazz"], duration=0.5, seed=2, prompt_codes=prompt)
    assert codes.shape[-1] == round(0.5 * model.frame_rate)
    assert torch.equal(codes[..., : prompt.shape[-1]], prompt)


def test_audio_prompt_is_encoded_at_any_rate(model):
    audio = sine(440, 0.2, 22050, channels=2)
    codes = model.encode_audio(audio, 22050)
    assert codes.shape == (1, 4, round(0.2 * model.frame_rate))


def test_longer_than_context_uses_windows(model):
    # max_frames is 64 (1.28 s at 50 Hz): 3 s needs several windows
    codes = model.generate_codes(["jazz"], duration=3.0, seed=0)
    assert codes.shape[-1] == 150
    assert int(codes.max()) < 64


def test_save_load_round_trip_gives_identical_output(model, tmp_path):
    model.save_pretrained(tmp_path / "ckpt")
    loaded = MusicGen.from_pretrained(tmp_path / "ckpt")
    a = model.generate_codes(["jazz", "rock"], duration=0.3, seed=9)
    b = loaded.generate_codes(["jazz", "rock"], duration=0.3, seed=9)
    assert torch.equal(a, b)
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("*.pt"))  # no pickle


def test_attributes_condition_the_model():
    model = tiny_musicgen(attributes=["genre", "bpm"])
    codes = torch.zeros(1, 4, 3, dtype=torch.long)
    logits = []
    for attrs in ({"genre": "jazz"}, {"genre": "metal", "bpm": 170}, {"genre": "jazz"}):
        memory, mask = model.conditioner(["song"], [attrs])
        assert memory.shape[1] == mask.shape[1]
        logits.append(model.lm(codes, memory, mask))
    assert torch.equal(logits[0], logits[2])
    assert not torch.allclose(logits[0], logits[1])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"prompts": [""]}, "prompt 1 is empty"),
        ({"prompts": ["ok", "  "]}, "prompt 2 is empty"),
        ({"prompts": []}, "no prompts"),
        ({"duration": 0}, "duration"),
        ({"duration": -3}, "duration"),
        ({"duration": 1e6}, "duration"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -1}, "temperature"),
        ({"seed": [1, 2]}, "seed"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": float("nan")}, "top_p"),
        ({"guidance_scale": float("inf")}, "guidance_scale"),
        ({"top_k": True}, "top_k"),
        ({"duration": float("nan")}, "duration"),
    ],
)
def test_bad_generation_arguments(model, kwargs, message):
    args = {"prompts": ["jazz"], "duration": 0.2, **kwargs}
    with pytest.raises(UsageError, match=message):
        model.generate_codes(args.pop("prompts"), **args)


def test_missing_and_corrupt_checkpoints(model, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        MusicGen.from_pretrained(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a music-gen"):
        MusicGen.from_pretrained(tmp_path / "empty")
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt"):
        MusicGen.from_pretrained(ckpt)


def test_codec_model_mismatch_is_refused():
    from music_gen.models.codec import build_codec
    from tests.helpers import tiny_codec_config, tiny_model_config

    with pytest.raises(CheckpointError, match="mismatch"):
        MusicGen.from_config(tiny_model_config(), build_codec(tiny_codec_config(num_codebooks=2)))


def test_bfloat16_generation(model):
    import copy

    half = copy.deepcopy(model).to(dtype=torch.bfloat16)
    codes = half.generate_codes(["jazz", "rock"], duration=0.3, seed=0)
    assert codes.shape == (2, 4, 15) and int(codes.max()) < 64
    assert half.decode(codes).dtype == torch.float32
