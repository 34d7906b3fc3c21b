"""`music-gen codec train` on the session's local Ray cluster: 2 workers (DDP on CPU),
a tiny codec, a few steps; then resume by name, adversarially, and on one worker. One run
costs tens of seconds here, so one test runs them all."""

from pathlib import Path

import pytest
import torch

from music_gen.config import load_config
from music_gen.models.codec import load_codec
from music_gen.pipelines.codec.driver import train_codec
from music_gen.pipelines.synth import write_synth_dataset
from music_gen.platform import tracking

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = [
    "codec.num_codebooks=2", "codec.cardinality=16", "codec.train.num_filters=4",
    "codec.train.latent_dim=8", "codec.train.num_workers=2", "codec.train.cpus_per_worker=0.5",
    "codec.train.batch_size=4", "codec.train.segment_seconds=0.25", "codec.train.lr=3e-3",
    "codec.train.warmup_steps=0", "codec.train.log_every=2", "codec.train.kmeans_batches=1",
    "codec.train.max_val_segments=4", "codec.train.keep_checkpoints=1",
    "codec.train.val_fraction=0.3", "codec.train.unquantized_steps=0",
]  # fmt: skip


def test_two_workers_train_then_resume_adversarially_on_one_and_save_a_loadable_codec(
    ray_cluster, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MUSIC_GEN_WORK_DIR", str(tmp_path / "work"))
    write_synth_dataset(tmp_path / "audio", 6, 1.0, classes=("sine_pad", "saw_bass"))
    (tmp_path / "audio" / "broken.wav").write_bytes(b"RIFF not really")
    settings = [*TINY, f"codec.train.storage={tmp_path / 'runs'}", "codec.train.name=tiny"]
    # 4 steps as a plain autoencoder, then the codebooks are fitted on rank 0 and sent to
    # the other worker.
    settings.append("codec.train.unquantized_steps=4")
    cfg = load_config(
        overrides=[*settings, "codec.train.steps=10", "codec.train.checkpoint_every=10"]
    )
    first = train_codec(cfg, str(tmp_path / "audio"), str(tmp_path / "codec"))
    assert (first["start_step"], first["end_step"], first["world_size"]) == (0, 10, 2)
    assert first["files"] == 6 and sum(first["errors"].values()) == 1  # the broken file reported
    assert first["val_segments"] > 0 and first["val_si_snr"] is not None
    assert "step 4: codebooks fitted, the quantizer comes in" in capsys.readouterr().out

    history = tracking.client(first["tracking_uri"]).get_metric_history(
        first["run_id"], "train_mel"
    )
    values = [m.value for m in sorted(history, key=lambda m: m.step)]
    assert len(values) == 5 and values[-1] < values[0]  # the reconstruction loss falls
    # No quantizer, so no commitment loss, in the warm-up's windows (steps 1-4).
    client = tracking.client(first["tracking_uri"])
    commitment = client.get_metric_history(first["run_id"], "train_commitment")
    assert sorted(m.step for m in commitment) == [6, 8, 10]

    codec = load_codec(tmp_path / "codec")
    assert (codec.num_codebooks, codec.cardinality, codec.sample_rate) == (2, 16, 16_000)
    codes = codec.encode(torch.randn(1, 1, 4000) * 0.1)  # [1, 2, 13]
    assert codes.shape == (1, 2, 13) and codec.decode(codes).shape == (1, 1, 4160)

    # The resumed part trains adversarially from step 12: a discriminator, DDP-wrapped on
    # the 2 workers, starts fresh beside a codec whose checkpoint has none.
    adversarial = [
        *settings, "codec.train.adversarial=true", "codec.train.adversarial_start_step=12",
        "codec.train.discriminator_filters=4", "codec.train.checkpoint_every=14",
    ]  # fmt: skip
    resumed = train_codec(
        load_config(overrides=[*adversarial, "codec.train.steps=14"]),
        str(tmp_path / "audio"), str(tmp_path / "codec"),
    )  # fmt: skip
    assert (resumed["start_step"], resumed["end_step"]) == (10, 14)
    assert resumed["run_id"] == first["run_id"]  # the same MLflow run goes on
    assert "none in the checkpoint: a fresh one" in capsys.readouterr().out
    train_state = Path(resumed["checkpoint"]) / "train_state"
    assert (train_state / "discriminator.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "codec").iterdir()) == [
        "codec.json",
        "model.safetensors",
    ]  # the discriminator stays in the checkpoint
    load_codec(tmp_path / "codec")

    # One worker (no DDP) goes on with the discriminator the checkpoint saved.
    last = train_codec(
        load_config(overrides=[*adversarial, "codec.train.steps=16", "codec.train.num_workers=1"]),
        str(tmp_path / "audio"), str(tmp_path / "codec"),
    )  # fmt: skip
    assert (last["start_step"], last["end_step"], last["world_size"]) == (14, 16, 1)
    out = capsys.readouterr().out
    assert "adversarial from step 12" in out and "fresh one" not in out, out
    for name in ("train_d_loss", "train_g_adv", "train_feature"):
        history = client.get_metric_history(first["run_id"], name)
        # Windows of 2 steps: the one ending at step 12 is before the discriminator starts.
        assert sorted(m.step for m in history) == [14, 16], name
        assert all(m.value >= 0 for m in history)
