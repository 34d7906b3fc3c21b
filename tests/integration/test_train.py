"""`music-gen train` on the session's local Ray cluster (2 CPUs) with tiny models.

The dataset is written directly with the shard helpers from codes of the offline
codec (the tokenize pipeline has its own tests and is slow on two cores); the codec
sits in ``<data>/codec`` as a tokenized dataset keeps it. Each test runs as few
``trainer.fit()`` calls as it can: on two cores one costs tens of seconds.
"""

import json

import numpy as np
import pytest
import torch

from music_gen import MusicGen
from music_gen.cli import main
from music_gen.config import CodecConfig, load_config
from music_gen.errors import MusicGenError
from music_gen.models.codec import TransformersCodec, tiny_calibrated_codec
from music_gen.pipelines import checkpoints, shards, sources, synth
from music_gen.pipelines.tokenize import codec_metadata
from music_gen.pipelines.train import train
from music_gen.platform import registry, tracking

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = [
    "model.dim=32", "model.num_layers=2", "model.num_heads=2", "model.max_frames=64",
    "model.text.dim=16", "model.text.num_layers=1", "model.text.num_heads=2",
    "train.cpus_per_worker=0.5", "train.batch_size=4", "train.lr=3e-3", "train.warmup_steps=2",
    "train.shuffle_buffer=0", "train.eval_sample_seconds=0.4", "train.keep_checkpoints=1",
    "data.val_fraction=0.2",
]  # fmt: skip


def write_dataset(root, codes: list[np.ndarray], metas: list[dict], codec) -> str:
    """One shard of rows, ``dataset.json`` and the codec in ``<root>/codec``."""
    fs, path = sources.resolve(str(root))
    codec.save(root / "codec")
    meta = codec_metadata(codec, CodecConfig(source=str(root / "codec")))
    rows = [
        {
            "id": f"{m['name']}-00000", "source": f"/synth/{m['name']}.wav", "segment": 0,
            "start": 0.0, "duration": c.shape[-1] / codec.frame_rate,
            "caption": m["description"], "genre": m.get("genre"), "moods": m.get("moods"),
            "key": m.get("key"), "bpm": m.get("bpm"), "instrument": m.get("instrument"),
            "attributes": json.dumps(m), "codes": shards.codes_to_bytes(c),
            "num_codebooks": c.shape[0], "frames": c.shape[-1],
        }
        for c, m in zip(codes, metas, strict=True)
    ]  # fmt: skip
    table = shards.shard_table(rows, meta)
    shards.write_table(fs, shards.join(path, shards.SHARDS, "part-00000.parquet"), table)
    info = {"format_version": 1, "codec": meta, "num_shards": 1, "settings": {}}
    shards.write_json(fs, shards.join(path, shards.DATASET_FILE), info)
    return str(root)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """24 synth clips of 1.5 s (4 classes) encoded with the offline codec (K=4, 64 codes)."""
    codec = tiny_calibrated_codec(num_codebooks=4, cardinality=64)
    classes = ("sine_pad", "saw_bass", "bell", "noise_drums")
    clips = [
        synth.make_clip(i, 1.5, sample_rate=codec.sample_rate, classes=classes) for i in range(24)
    ]
    audio = torch.from_numpy(np.stack([a for a, _ in clips]))  # [N, 1, S]
    codes = torch.cat([codec.encode(batch) for batch in audio.split(8)]).numpy()  # [N, K, T]
    return write_dataset(tmp_path_factory.mktemp("data"), list(codes), [m for _, m in clips], codec)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A private work dir (MLflow sqlite store, registry cache) for the module."""
    root = tmp_path_factory.mktemp("work")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MUSIC_GEN_WORK_DIR", str(root))
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        yield root


def config(data_dir, work, name, *overrides):
    cfg = load_config(overrides=[*TINY, *overrides])
    cfg.data.output = data_dir
    cfg.train.name = name
    cfg.train.storage = str(work / "runs")
    return cfg


def metric_history(run_id, key):
    return [
        m.value
        for m in sorted(tracking.client().get_metric_history(run_id, key), key=lambda m: m.step)
    ]


def test_two_workers_learn_track_and_export(ray_cluster, data_dir, work):
    cfg = config(
        data_dir, work, "two-workers", "train.num_workers=2", "train.steps=12",
        "train.checkpoint_every=6", "train.eval_every=6", "train.log_every=3",
        "train.segment_curriculum={0: 0.5, 6: 1.0}",
    )  # fmt: skip
    summary = train(cfg)
    assert summary["start_step"] == 0 and summary["end_step"] == 12
    assert summary["world_size"] == 2 and summary["tokens_per_s"] > 0

    # The loss falls (train loss per log window, validation loss per evaluation).
    losses = metric_history(summary["run_id"], "train_loss")
    assert len(losses) == 4 and losses[-1] < losses[0] - 0.1
    val = metric_history(summary["run_id"], "val_loss")
    assert len(val) == 2 and val[1] < val[0]

    # MLflow holds the params, the resolved config, per-codebook metrics and samples.
    client = tracking.client()
    run = client.get_run(summary["run_id"])
    assert run.data.params["train.num_workers"] == "2" and run.data.params["model.dim"] == "32"
    for key in ("train_loss_cb3", "val_loss_cb0", "lr", "tokens_per_s", "segment_seconds"):
        assert key in run.data.metrics
    assert run.data.metrics["segment_seconds"] == pytest.approx(1.0)  # the curriculum moved on
    assert run.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(summary["run_id"], "samples/step_0000012")}
    assert {"samples/step_0000012/00.wav", "samples/step_0000012/00.png"} <= artifacts
    assert client.list_artifacts(summary["run_id"], "config")

    # Checkpoints: the best by validation loss (here the latest too); the final one loads.
    final = summary["checkpoint"]
    assert final.endswith("checkpoint_0000012")
    state = checkpoints.read_state(final)
    assert state["step"] == 12 and state["config"]["train"]["num_workers"] == 2
    codes = MusicGen.from_pretrained(final).generate_codes(["a bell"], duration=0.2, seed=0)
    assert codes.shape == (1, 4, 10)

    # The logged model: registered under an alias and loaded back by URI.
    version = registry.register_model(summary["model_uri"], "tiny-train", alias="production")
    for uri in (
        "models:/tiny-train@production",
        f"models:/tiny-train/{version}",
        summary["run_uri"],
    ):
        loaded = MusicGen.from_pretrained(uri)
        assert torch.equal(loaded.generate_codes(["a bell"], duration=0.2, seed=0), codes)


def test_killed_worker_restarts_and_rerun_resumes(ray_cluster, data_dir, work, monkeypatch):
    marker = work / "killed"
    monkeypatch.setenv("MUSIC_GEN_TEST_CRASH", f"1:5:{marker}")
    args = [
        "train.num_workers=2", "train.checkpoint_every=4", "train.eval_every=100",
        "train.log_every=1", "train.max_failures=1", "train.eval_samples=0",
    ]  # fmt: skip
    first = train(config(data_dir, work, "resume", "train.steps=8", *args))
    assert marker.exists()  # worker 1 died after step 5 ...
    assert first["start_step"] == 4 and first["end_step"] == 8  # ... the group resumed at 4

    # Re-running the same run with more steps continues from the last checkpoint. It also
    # switches to FSDP: checkpoints hold whole tensors, so the strategy may change on resume.
    monkeypatch.delenv("MUSIC_GEN_TEST_CRASH")
    second = train(config(data_dir, work, "resume", "train.steps=10", "train.strategy=fsdp", *args))
    assert second["start_step"] == 8 and second["end_step"] == 10
    assert second["run_id"] == first["run_id"]  # one MLflow run across restarts
    steps = [m.step for m in tracking.client().get_metric_history(first["run_id"], "train_loss")]
    assert sorted(set(steps)) == list(range(1, 11))
    assert checkpoints.read_state(second["checkpoint"])["step"] == 10
    model = MusicGen.from_pretrained(second["checkpoint"])  # gathered from the FSDP shards
    assert model.generate_codes(["drums"], duration=0.2, seed=0).shape == (1, 4, 10)


def _transformers_musicgen(directory):
    """A tiny random transformers MusicGen (16 kHz, 50 Hz, 4 x 64 codes) saved with its tokenizer."""
    from transformers import (
        ByT5Tokenizer,
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )  # fmt: skip

    torch.manual_seed(0)
    text = T5Config(vocab_size=384, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2)
    codec = EncodecConfig(
        sampling_rate=16000, audio_channels=1, num_filters=4, hidden_size=16,
        upsampling_ratios=[8, 5, 4, 2], codebook_size=64, codebook_dim=16,
        target_bandwidths=[1.2], num_lstm_layers=1,
    )  # fmt: skip
    decoder = MusicgenDecoderConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, ffn_dim=64,
        num_codebooks=4, max_position_embeddings=128, pad_token_id=64, bos_token_id=64,
    )  # fmt: skip
    config = MusicgenConfig(text_encoder=text, audio_encoder=codec, decoder=decoder)
    MusicgenForConditionalGeneration(config).save_pretrained(directory)
    ByT5Tokenizer().save_pretrained(directory)
    return directory


def test_finetune_from_a_transformers_musicgen_dir(ray_cluster, work, tmp_path):
    hf_dir = _transformers_musicgen(tmp_path / "hf")
    imported = MusicGen.from_pretrained(hf_dir)
    assert isinstance(imported.codec, TransformersCodec) and imported.num_codebooks == 4
    # Data "tokenized with the checkpoint's codec": codes in its range, its frame rate.
    rng = np.random.default_rng(0)
    metas = [synth.make_clip(i, 0.1)[1] for i in range(12)]
    codes = [rng.integers(0, 64, size=(4, 40)) for _ in metas]
    data = write_dataset(tmp_path / "data", codes, metas, imported.codec)
    cfg = config(
        data, work, "finetune", "train.steps=3", "train.checkpoint_every=3",
        "train.eval_samples=0", "data.val_fraction=0.3", "train.num_workers=1",
    )  # fmt: skip
    cfg.train.init = str(hf_dir)
    summary = train(cfg)
    assert summary["start_step"] == 0 and summary["end_step"] == 3
    tuned = MusicGen.from_pretrained(summary["checkpoint"])
    assert tuned.lm.cfg == imported.lm.cfg and tuned.sample_rate == 16000
    before, after = imported.lm.state_dict(), tuned.lm.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the weights moved


def test_worker_errors_surface_as_one_line(ray_cluster, data_dir, work):
    cfg = config(data_dir, work, "broken", "train.steps=2", "train.max_failures=0")
    cfg.model.text.source = str(work / "no-such-text-encoder")
    with pytest.raises(MusicGenError, match="cannot load text encoder") as info:
        train(cfg)
    assert "\n" not in str(info.value)


def test_bad_configs_fail_fast_with_one_line(data_dir, work, tmp_path, capsys):
    storage = f"train.storage={work / 'runs'}"
    cases = [
        (["--data", str(tmp_path / "missing")], "no tokenized dataset"),
        ([], "train needs a tokenized dataset"),
        (["--data", data_dir, "model.num_codebooks=8"], "4 codebooks of 64 codes but the model"),
        (["--data", data_dir, "model.cardinality=32"], "expects 4 of 32"),
        (["--data", data_dir, "--init", str(tmp_path / "nothing")], "checkpoint not found"),
        (["--data", data_dir, "train.batch_size=64"], "fewer than train.batch_size"),
        (["--data", data_dir, "data.val_fraction=0"], "validation split"),
    ]
    for args, message in cases:
        assert main(["train", storage, *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, err
