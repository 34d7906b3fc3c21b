"""Training with melody conditioning, without Ray: the shards' chroma column, its crop
beside the codes, the conditioner fed from it, the driver's checks, save and load."""

import numpy as np
import pytest
import torch

from music_gen import MusicGen
from music_gen.config import load_config
from music_gen.errors import ConfigError, MusicGenError
from music_gen.models.codebooks import tiny_calibrated_codec
from music_gen.models.melody import (
    ChromaSettings,
    chroma_at_rate,
    chroma_cosine,
    clip_chroma,
    pitch_classes,
)
from music_gen.pipelines import shards
from music_gen.pipelines import train as T
from music_gen.pipelines.tokenize import CodecEncoder
from music_gen.pipelines.train.resume import config_changes
from music_gen.testing import make_synth_dataset, sine
from tests.helpers import tiny_musicgen

pytestmark = pytest.mark.unit

RATE, HOP = 16_000, 320  # the tiny codec: 50 code frames per second
NOTES = (261.63, 329.63, 392.00, 440.00)  # C E G A: pitch classes 0 4 7 9


def _tune(seconds_per_note=0.5, rate=RATE):
    return torch.cat([sine(f, seconds_per_note, rate) for f in NOTES], dim=-1)  # [1, S]


@pytest.fixture(scope="module")
def codec():
    return tiny_calibrated_codec(cardinality=64)


def test_pitch_classes_give_one_class_per_code_frame_as_the_conditioner_sees_them():
    tune = _tune()  # 2 s: 100 code frames
    classes = pitch_classes(tune, RATE, HOP, 100)
    assert classes.dtype == torch.uint8 and classes.shape == (100,)
    middles = [classes[25 * i + 12].item() for i in range(4)]  # the middle of each note
    assert middles == [0, 4, 7, 9]
    # Sampled at the conditioner's rate they are (nearly) the chroma generation computes
    # from the same audio at MusicGen-Melody's settings.
    settings = ChromaSettings()
    ours = chroma_at_rate(classes[None], 50.0, settings)  # [1, T', 12]
    theirs = clip_chroma(tune, RATE, settings)[None]  # [1, T', 12]
    assert ours.shape == theirs.shape
    assert chroma_cosine(ours, theirs).item() > 0.85
    assert pitch_classes(tune[:, :3000], RATE, HOP, 10).shape == (10,)  # shorter than a window


def test_the_crop_takes_the_same_frames_of_codes_and_chroma():
    frames = [50, 37, 12]
    rows = {
        "codes": [shards.codes_to_bytes(np.tile(np.arange(t), (4, 1))) for t in frames],
        "num_codebooks": [4] * 3,
        "frames": frames,
        "caption": ["a", "b", "c"],
        "chroma": [shards.chroma_to_bytes(np.arange(t) % 12) for t in frames],
    }
    batch = T.make_batch(rows, 20, np.random.default_rng(3))
    assert batch.chroma.shape == (3, 20) and batch.codes.shape == (3, 4, 20)
    assert batch.codes[0, 0, 0] > 0 or batch.codes[1, 0, 0] > 0  # random windows, not starts
    for row, length in enumerate(batch.lengths.tolist()):
        assert torch.equal(batch.chroma[row, :length], batch.codes[row, 0, :length] % 12)
    # The codes' crop is what it was before chroma came: the same random draws.
    codes, _ = T.crop_codes(shards.batch_codes(rows), 20, np.random.default_rng(3))
    assert torch.equal(codes, batch.codes)
    bad = {**rows, "chroma": [b"\x00" * 3] * 3}
    with pytest.raises(MusicGenError, match="3 chroma frames for 50 code frames"):
        T.make_batch(bad, 20, None)


def test_tokenize_writes_the_chroma_of_each_segment(codec, tmp_path):
    codec.save(tmp_path / "codec")
    encoder = CodecEncoder({"source": str(tmp_path / "codec")})
    audio = torch.cat([_tune(0.25), _tune(0.25).flip(-1)])  # [2, S]: 1 s each
    batch = {
        "path": np.array(["a.wav", "b.wav"], dtype=object),
        "channels": np.array([1, 1]),
        "samples": np.array([audio.shape[-1]] * 2),
        "audio": np.array([a[None].numpy().tobytes() for a in audio], dtype=object),
        **{k: np.array(["", ""], dtype=object) for k in ("stage", "reason", "detail")},
    }
    out = encoder(batch)
    for row in range(2):
        chroma = shards.read_chroma(out["chroma"][row])
        assert chroma.shape == (out["frames"][row],) == (50,)
        expected = pitch_classes(audio[row][None], RATE, HOP, 50).numpy()
        assert np.array_equal(chroma, expected)
    assert shards.read_chroma(out["chroma"][0])[6] == 0  # the tune's first note, C
    no_chroma = CodecEncoder({"source": str(tmp_path / "codec")}, chroma=False)(batch)
    assert no_chroma["chroma"][0] == b""


def test_shards_with_and_without_the_chroma_column_are_both_readable(codec, tmp_path):
    with_chroma = make_synth_dataset(tmp_path / "new", codec, num_clips=4, chroma=True)
    without = make_synth_dataset(tmp_path / "old", codec, num_clips=4)
    assert shards.shards_without_chroma(shards.readable_shards(with_chroma)) == []
    assert shards.shards_without_chroma(shards.readable_shards(without)) == ["part-00000.parquet"]
    assert shards.validate(with_chroma)["violations"] == []
    assert shards.validate(without)["violations"] == []
    # A row whose chroma does not cover its frames is a violation.
    import pyarrow.parquet as pq

    path = shards.shard_paths(with_chroma)[0]
    table = pq.read_table(path)
    rows = table.to_pylist()
    rows[1]["chroma"] = rows[1]["chroma"][:-2]
    meta = shards.shard_meta(*shards.resolve(path))
    pq.write_table(shards.shard_table(rows, meta), path)
    violations = shards.validate(with_chroma, max_violations=50)["violations"]
    assert any("chroma holds 48 frames, the codes 50" in v for v in violations)


def test_melody_conditioning_from_the_batch_and_its_dropout():
    torch.manual_seed(0)
    model = tiny_musicgen(melody=True)
    core = T.TrainModule(model.lm, model.conditioner, model.frame_rate).eval()
    inputs = torch.randint(0, 64, (2, 4, 20))
    texts, attrs = ["a tune", "a tune"], [{}, {}]
    chroma = torch.tensor([[0] * 20, [7] * 20])  # C for row 0, G for row 1
    with torch.no_grad():
        heard = core(inputs, texts, attrs, chroma=chroma)
        none = core(inputs, texts, attrs)
        dropped = core(inputs, texts, attrs, chroma=chroma, melody_drop=torch.tensor([False, True]))
    assert not torch.allclose(heard[1], none[1])  # the melody is heard...
    assert torch.allclose(heard[0], dropped[0]) and torch.allclose(dropped[1], none[1])  # ...or not
    assert torch.allclose(heard[0], none[0], atol=1e-6)  # C is the conditioner's "no melody"
    # A step with the melody trains the projection of the chroma.
    rows = {
        "codes": [shards.codes_to_bytes(np.random.default_rng(i).integers(0, 64, (4, 30))) for i in range(4)],
        "num_codebooks": [4] * 4,
        "frames": [30] * 4,
        "caption": ["tune"] * 4,
        "chroma": [shards.chroma_to_bytes(np.full(30, i + 3)) for i in range(4)],
    }  # fmt: skip
    batch = T.make_batch(rows, 20, np.random.default_rng(0))
    core.train()
    optimizer = T.build_optimizer(core, lr=1e-2, weight_decay=0.0, betas=(0.9, 0.95))
    before = model.conditioner.melody_proj.weight.detach().clone()
    no = torch.zeros(4, dtype=torch.bool)
    T.train_step(core, optimizer, batch, no, 64, torch.device("cpu"), "fp32", 1.0, melody_drop=no)
    assert not torch.equal(before, model.conditioner.melody_proj.weight)


def test_a_melody_model_trained_from_scratch_saves_and_loads(tmp_path):
    model = tiny_musicgen(melody=True)
    assert model.has_melody and not model.lm.cfg.cross_attention
    tune = {"melody": _tune(0.1), "melody_sample_rate": RATE}
    codes = model.generate_codes(["a tune"], duration=0.3, seed=0, **tune)
    again = MusicGen.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert again.conditioner.melody == model.conditioner.melody
    assert torch.equal(again.generate_codes(["a tune"], duration=0.3, seed=0, **tune), codes)


def _plan(data, *overrides):
    return T.plan_run(
        load_config((), [f"data.output={data}", "data.val_fraction=0.25", *overrides])
    )


def test_the_driver_checks_melody_training_before_any_worker(codec, tmp_path):
    old = make_synth_dataset(tmp_path / "old", codec, num_clips=8)
    new = make_synth_dataset(tmp_path / "new", codec, num_clips=8, chroma=True)
    assert _plan(new, "model.melody=true", "train.batch_size=2").chroma
    assert not _plan(new, "train.batch_size=2").chroma  # a text-only model reads no chroma
    assert not _plan(old, "train.batch_size=2").chroma
    with pytest.raises(ConfigError) as error:
        _plan(old, "model.melody=true", "train.batch_size=2")
    message = str(error.value)
    assert "no chroma column" in message and "--overwrite" in message and "\n" not in message
    text_only = tiny_musicgen().save_pretrained(tmp_path / "text-only")
    with pytest.raises(ConfigError, match="has no melody conditioner"):
        _plan(new, "model.melody=true", f"train.init={text_only}", "model.num_codebooks=4")
    melody = tiny_musicgen(melody=True).save_pretrained(tmp_path / "melody")
    assert _plan(new, f"train.init={melody}", "train.batch_size=2").chroma  # follows the model
    with pytest.raises(ConfigError, match="no chroma column"):
        _plan(old, f"train.init={melody}", "train.batch_size=2")


def test_runs_saved_before_a_setting_existed_resume_with_its_default():
    saved = load_config(()).model_dump(mode="json")
    del saved["model"]["melody"], saved["model"]["melody_dropout"]
    assert config_changes(saved, load_config(()).model_dump(mode="json")) == []
    changed = load_config((), ["model.melody=true"]).model_dump(mode="json")
    assert config_changes(saved, changed) == ["model.melody false -> true"]
