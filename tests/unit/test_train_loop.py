"""Pieces of the training loop, without Ray: crops, the delay pattern with padding,
the per-codebook loss, the schedule, the curriculum, condition dropout, EMA, a step.

``T`` is the training package (``music_gen.pipelines.train``), which re-exports the
pieces of its modules and of ``pipelines/losses.py``."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from music_gen.errors import MusicGenError
from music_gen.models.patterns import build_delay, valid_mask
from music_gen.pipelines import shards
from music_gen.pipelines import train as T
from tests.helpers import tiny_musicgen

pytestmark = pytest.mark.unit

SPECIAL = 64


def test_segment_curriculum_picks_the_last_milestone():
    curriculum = {0: 10.0, 2000: 20.0, 4000: 30.0}
    frames = [
        T.segment_frames(curriculum, s, 50.0, 1500) for s in (0, 1999, 2000, 3999, 4000, 9999)
    ]
    assert frames == [500, 500, 1000, 1000, 1500, 1500]
    assert T.segment_frames({}, 123, 50.0, 1500) == 1500  # empty: the whole context
    assert T.segment_frames({0: 60.0}, 0, 50.0, 1500) == 1500  # capped at the context
    assert T.segment_frames({100: 1.0}, 5, 50.0, 300) == 300  # before the first milestone


def test_lr_warmup_then_cosine_to_the_floor():
    warmup, total, floor = 10, 110, 0.1
    factors = [T.lr_factor(s, warmup, total, floor) for s in range(total + 5)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a <= b for a, b in zip(factors[:10], factors[1:10], strict=False))  # rising
    decay = factors[10:total]
    assert all(a >= b for a, b in zip(decay, decay[1:], strict=False))  # falling
    assert factors[60] == pytest.approx(floor + (1 - floor) * 0.5)  # half way: the midpoint
    assert factors[-1] == pytest.approx(floor)  # stays at the floor past the end
    assert T.lr_factor(0, 0, 100, 0.0) == pytest.approx(1.0)  # no warmup


def test_crop_is_a_window_of_each_row_and_pads_short_rows():
    rng = np.random.default_rng(0)
    long = np.arange(4 * 50).reshape(4, 50)
    short = np.arange(4 * 7).reshape(4, 7) + 1000
    codes, lengths = T.crop_codes([long, short], 20, rng)
    assert codes.shape == (2, 4, 20) and lengths.tolist() == [20, 7]
    start = int(codes[0, 0, 0])
    assert torch.equal(codes[0], torch.from_numpy(long[:, start : start + 20]))  # one window
    assert torch.equal(codes[1, :, :7], torch.from_numpy(short)) and (codes[1, :, 7:] == 0).all()
    val, _ = T.crop_codes([long], 20, None)
    assert torch.equal(val[0], torch.from_numpy(long[:, :20]))  # validation: the start
    shorter, lengths = T.crop_codes([short, short[:, :5]], 100, rng)
    assert shorter.shape[-1] == 7 and lengths.tolist() == [7, 5]  # no padding past the longest


def test_delay_inputs_mask_the_pattern_and_the_padding():
    K, T_ = 3, 5
    codes = torch.arange(2 * K * T_).view(2, K, T_) % SPECIAL
    lengths = torch.tensor([5, 3])
    inputs, targets, mask = T.delay_inputs(codes, lengths, SPECIAL)
    S = T_ + K - 1
    assert inputs.shape == targets.shape == mask.shape == (2, K, S)
    full = build_delay(codes, SPECIAL)
    assert torch.equal(targets[0], full[0]) and torch.equal(mask[0], valid_mask(K, S))
    # Row 1 has 3 real frames: codebook k holds them at steps k .. k + 2 only.
    for k in range(K):
        expected = torch.zeros(S, dtype=torch.bool)
        expected[k : k + 3] = True
        assert torch.equal(mask[1, k], expected)
    assert (targets[1][~mask[1]] == SPECIAL).all()  # padding reads as the special token
    # Inputs: the start token, then the targets shifted right by one.
    assert (inputs[:, :, 0] == SPECIAL).all()
    assert torch.equal(inputs[:, :, 1:], targets[:, :, :-1])


def test_stereo_training_uses_the_pattern_stereo_models_generate_with():
    K, T_ = 4, 5  # 2 levels x (left, right)
    codes = torch.arange(2 * K * T_).view(2, K, T_) % SPECIAL
    lengths = torch.tensor([5, 3])
    inputs, targets, mask = T.delay_inputs(codes, lengths, SPECIAL, channels=2)
    S = T_ + K // 2 - 1  # one delay per level, not per codebook
    assert targets.shape == (2, K, S)
    full = build_delay(codes, SPECIAL, channels=2)
    assert torch.equal(targets[0], full[0]) and torch.equal(mask[0], valid_mask(K, S, channels=2))
    for k in range(K):  # row 1's 3 frames sit at steps level .. level + 2 of codebook k
        expected = torch.zeros(S, dtype=torch.bool)
        expected[k // 2 : k // 2 + 3] = True
        assert torch.equal(mask[1, k], expected)
    assert torch.equal(inputs[:, :, 1:], targets[:, :, :-1])


def test_loss_is_the_mean_over_codebooks_of_masked_cross_entropy():
    torch.manual_seed(0)
    B, K, S, C = 2, 3, 6, 8
    logits = torch.randn(B, K, S, C)
    targets = torch.randint(0, C, (B, K, S))
    mask = torch.rand(B, K, S) > 0.3
    targets[~mask] = C  # the special token sits where the mask is off
    sums, counts = T.codebook_losses(logits, targets, mask)
    loss, per_codebook = T.mean_loss(sums, counts)
    for k in range(K):
        picked = mask[:, k]
        expected = F.cross_entropy(logits[:, k][picked], targets[:, k][picked])
        assert per_codebook[k] == pytest.approx(float(expected), rel=1e-5)
    assert loss == pytest.approx(float(per_codebook.mean()), rel=1e-6)
    # Masked positions do not matter, whatever their logits.
    changed = logits.clone()
    changed[~mask[..., None].expand_as(changed)] = 100.0
    assert torch.allclose(T.codebook_losses(changed, targets, mask)[0], sums)


def test_perfect_logits_give_zero_loss_and_uniform_gives_log_card():
    B, K, S, C = 1, 2, 4, 16
    targets = torch.randint(0, C, (B, K, S))
    mask = torch.ones(B, K, S, dtype=torch.bool)
    perfect = F.one_hot(targets, C).float() * 1e4
    assert T.mean_loss(*T.codebook_losses(perfect, targets, mask))[0] == pytest.approx(0.0)
    uniform = torch.zeros(B, K, S, C)
    assert T.mean_loss(*T.codebook_losses(uniform, targets, mask))[0] == pytest.approx(math.log(C))


def test_condition_dropout_rate():
    drop = T.condition_dropout(20_000, 0.3, torch.Generator().manual_seed(0))
    assert drop.dtype == torch.bool and abs(drop.float().mean().item() - 0.3) < 0.02
    assert not T.condition_dropout(100, 0.0, torch.Generator()).any()


def test_ema_moves_towards_the_weights():
    w = torch.zeros(3)
    ema = T.EMA({"w": w}, decay=0.9)
    ema.update({"w": torch.ones(3)})
    assert torch.allclose(ema.shadow["w"], torch.full((3,), 0.1))
    ema.load({"w": torch.full((3,), 5.0)})
    assert torch.allclose(ema.shadow["w"], torch.full((3,), 5.0))


def _rows(model, num_rows=4, frames=30, seed=0):
    rng = np.random.default_rng(seed)
    K, card = model.num_codebooks, model.lm.cfg.cardinality
    codes = [rng.integers(0, card, size=(K, frames)) for _ in range(num_rows)]
    return {
        "codes": [shards.codes_to_bytes(c) for c in codes],
        "num_codebooks": [K] * num_rows,
        "frames": [frames] * num_rows,
        "caption": [f"song {i}" for i in range(num_rows)],
        "genre": ["rock", None, "jazz", "pop"][:num_rows],
        "moods": [np.array(["happy", "calm"]), None, ["sad"], None][:num_rows],
        "key": ["C major", None, None, "A minor"][:num_rows],
        "bpm": [120.0, float("nan"), 90.0, None][:num_rows],
        "instrument": [None] * num_rows,
    }


def test_make_batch_reads_codes_and_attributes():
    model = tiny_musicgen()
    batch = T.make_batch(_rows(model), frames=20, rng=np.random.default_rng(0))
    assert batch.codes.shape == (4, model.num_codebooks, 20)
    assert batch.texts[1] == "song 1"
    assert batch.attributes[0] == {
        "genre": "rock",
        "mood": ["happy", "calm"],
        "key": "C major",
        "bpm": 120.0,
        "instrument": None,
    }
    assert batch.attributes[1]["bpm"] is None and batch.attributes[1]["mood"] is None


def test_mood_from_shard_rows_conditions_the_model():
    # Shards carry moods as a list under `moods`; a model with the `mood` attribute must
    # see it (it once looked up another name and put every row in the null bucket).
    model = tiny_musicgen(attributes=["mood"])
    rows = _rows(model)
    rows["caption"] = ["same caption"] * 4
    rows["moods"] = [["happy"], ["sad"], ["happy"], None]
    batch = T.make_batch(rows, frames=20, rng=np.random.default_rng(0))
    with torch.no_grad():
        memory, mask = model.conditioner(batch.texts, batch.attributes)
    assert mask[:3, -1].all() and not mask[3, -1]  # the mood token is there unless missing
    assert not torch.allclose(memory[0], memory[1])  # happy vs sad
    assert torch.equal(memory[0], memory[2])  # the same mood, the same input


def test_steps_on_one_batch_lower_the_loss_and_touch_trainable_parts_only():
    torch.manual_seed(0)
    model = tiny_musicgen(attributes=["genre"])
    core = T.TrainModule(model.lm, model.conditioner).train()
    encoder_before = {k: v.clone() for k, v in model.conditioner.encoder.state_dict().items()}
    proj_before = model.conditioner.proj.weight.clone()
    optimizer = T.build_optimizer(core, lr=3e-3, weight_decay=0.1, betas=(0.9, 0.95))
    batch = T.make_batch(_rows(model), frames=20, rng=np.random.default_rng(0))
    no_drop = torch.zeros(4, dtype=torch.bool)
    special = model.lm.cfg.special_token
    losses = [
        float(
            T.train_step(
                core, optimizer, batch, no_drop, special, torch.device("cpu"), "fp32", 1.0
            ).loss
        )
        for _ in range(30)
    ]
    assert losses[-1] < losses[0] - 0.5
    encoder_after = model.conditioner.encoder.state_dict()
    assert all(torch.equal(encoder_before[k], encoder_after[k]) for k in encoder_before)  # frozen
    assert not torch.equal(proj_before, model.conditioner.proj.weight)  # the projection trains
    # Norms and biases get no weight decay.
    decayed, plain = optimizer.param_groups
    assert all(p.dim() >= 2 for p in decayed["params"]) and plain["weight_decay"] == 0.0
    assert set(T.named_trainable(core)) <= set(model.state_dict())


def test_validate_scores_every_world_th_batch_and_reports_prompts():
    torch.manual_seed(0)
    model = tiny_musicgen()
    core = T.TrainModule(model.lm, model.conditioner)
    batches = [_rows(model, seed=s) for s in range(3)]
    args = dict(frames=20, max_batches=None, special=model.lm.cfg.special_token,
                device=torch.device("cpu"), precision="fp32")  # fmt: skip
    whole, prompts = T.validate(core, core, batches, rank=0, world=1, **args)
    assert whole.shape == (model.num_codebooks,) and prompts == batches[0]["caption"]
    part, _ = T.validate(core, core, batches, rank=1, world=2, **args)  # batch 1 only
    alone, _ = T.validate(core, core, batches[1:2], rank=0, world=1, **args)
    assert torch.allclose(part, alone)
    with pytest.raises(MusicGenError, match="validation split is empty"):
        T.validate(core, core, [], rank=0, world=1, **args)


def test_validation_sources_are_whole_files_and_never_all():
    sources = [f"/data/file{i}.wav" for i in range(200)]
    val = T.choose_val_sources(sources * 3, 0.1)  # three segments per file
    assert 5 <= len(val) <= 40 and val <= set(sources)
    assert T.choose_val_sources(sources, 0.1) == val  # stable
    assert len(T.choose_val_sources(["a", "b"], 0.01)) == 1  # at least one file
    assert T.choose_val_sources(["a", "b"], 0.0) == set()
    assert len(T.choose_val_sources(["a", "b"], 0.99)) == 1  # never every file
    assert T.choose_val_sources(["only"], 0.5) == set()


def test_the_split_follows_a_files_name_and_folder_not_where_the_dataset_lives():
    names = [f"clips/clip_{i:04d}.wav" for i in range(100)]
    here = T.choose_val_sources([f"/tmp/pytest-1/a/{n}" for n in names], 0.2)
    moved = T.choose_val_sources([f"s3://bucket/x/{n}" for n in names], 0.2)
    assert {s.split("/x/")[1] for s in moved} == {s.split("/a/")[1] for s in here}
    # one file name in many folders (``song_N/audio.wav``): each folder is decided alone
    songs = [f"/data/song_{i}/audio.wav" for i in range(100)]
    assert 5 <= len(T.choose_val_sources(songs, 0.2)) <= 40
    # names one digit apart spread like any others (CRC32 put 10 of 24 under a 0.2 cut)
    numbered = [f"/data/synth-{i:05d}.wav" for i in range(1000)]
    assert 150 <= len(T.choose_val_sources(numbered, 0.2)) <= 250


def test_worker_error_surfaces_the_root_cause_as_one_line():
    from ray.train import WorkerGroupError

    from music_gen.errors import ConfigError

    try:
        try:
            raise ConfigError("model.num_codebooks=8 but the codec has 4")
        except ConfigError as inner:
            raise RuntimeError("wrapped by Ray") from inner
    except RuntimeError as outer:
        wrapped = outer
    error = T.worker_error(WorkerGroupError("boom", {1: wrapped, 0: ValueError("later")}))
    # Rank 0's failure comes first: a plain bug becomes a one-line MusicGenError.
    assert isinstance(error, MusicGenError) and "worker 0" in str(error) and "later" in str(error)
    error = T.worker_error(WorkerGroupError("boom", {1: wrapped}))
    assert (
        isinstance(error, ConfigError) and str(error) == "model.num_codebooks=8 but the codec has 4"
    )


def test_checkpoint_holds_a_loadable_model_and_the_resume_state(tmp_path):
    from music_gen import MusicGen
    from music_gen.pipelines import checkpoints

    torch.manual_seed(0)
    model = tiny_musicgen()
    core = T.TrainModule(model.lm, model.conditioner)
    optimizer = T.build_optimizer(core, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95))
    batch = T.make_batch(_rows(model), frames=10, rng=None)
    T.train_step(core, optimizer, batch, torch.zeros(4, dtype=torch.bool),
                 model.lm.cfg.special_token, torch.device("cpu"), "fp32", 1.0)  # fmt: skip
    raw = T.full_weights(core, core)
    assert set(raw) == set(model.state_dict())
    ema = {k: v + 1.0 for k, v in raw.items()}  # stands in for the EMA weights
    state = {"step": 7, "data_position": {"epoch": 1, "batch": 3}}
    directory = checkpoints.save_checkpoint(
        tmp_path / "ckpt",
        model,
        ema,
        state,
        T.optimizer_state(core, core, optimizer),
        raw_weights=raw,
        ema_weights=ema,
    )
    # The model directory holds the EMA (what generation should use) ...
    loaded = MusicGen.from_pretrained(directory)
    assert all(torch.equal(loaded.state_dict()[k], ema[k]) for k in ema)
    # ... and train_state/ the raw weights, optimizer and position to resume from.
    assert checkpoints.read_state(directory)["data_position"] == {"epoch": 1, "batch": 3}
    saved_raw = checkpoints.read_weights(directory, checkpoints.RAW_WEIGHTS_FILE)
    T.mg_weights_into(T.TrainModule(loaded.lm, loaded.conditioner), saved_raw)
    assert all(torch.equal(loaded.state_dict()[k], raw[k]) for k in raw)
    fresh_core = T.TrainModule(loaded.lm, loaded.conditioner)
    fresh = T.build_optimizer(fresh_core, 1e-3, 0.1, (0.9, 0.95))
    saved_optimizer = checkpoints.read_optimizer(directory)
    assert "lm.head.weight" in saved_optimizer["state"]  # keyed by name: any strategy loads it
    T.load_optimizer_state(fresh_core, fresh_core, fresh, saved_optimizer)
    before = optimizer.state_dict()["state"]
    after = fresh.state_dict()["state"]
    assert after[0]["step"] == 1 and torch.equal(after[0]["exp_avg"], before[0]["exp_avg"])
    exported = checkpoints.export_model(directory, tmp_path / "export")
    assert not (exported / checkpoints.TRAIN_STATE).exists()
    again = MusicGen.from_pretrained(exported)
    assert all(torch.equal(again.state_dict()[k], ema[k]) for k in ema)


def test_local_paths_are_made_absolute_for_workers(tmp_path, monkeypatch):
    from music_gen.config import load_config
    from music_gen.pipelines.train import with_absolute_paths

    (tmp_path / "tokens").mkdir()
    (tmp_path / "codec").mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = load_config(
        overrides=["data.output=tokens", "codec.source=codec", "train.init=models:/m@prod"]
    )
    fixed = with_absolute_paths(cfg)
    assert fixed.data.output == str(tmp_path / "tokens")
    assert fixed.codec.source == str(tmp_path / "codec")
    assert fixed.train.init == "models:/m@prod"  # URIs stay as they are
