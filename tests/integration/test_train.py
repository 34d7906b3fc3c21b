"""`music-gen train` on the session's local Ray cluster (2 CPUs) with tiny models.

The dataset is written directly (``music_gen.testing``) from codes of the offline
codec (the tokenize pipeline has its own tests and is slow on two cores); the codec
sits in ``<data>/codec`` as a tokenized dataset keeps it. Each test runs as few
``trainer.fit()`` calls as it can: on two cores one costs tens of seconds.
"""

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from music_gen import MusicGen
from music_gen.cli import main
from music_gen.config import load_config
from music_gen.errors import MusicGenError
from music_gen.models.codebooks import tiny_calibrated_codec
from music_gen.models.codec import TransformersCodec
from music_gen.pipelines import checkpoints, synth
from music_gen.pipelines.train import train
from music_gen.platform import registry, tracking
from music_gen.testing import make_synth_dataset, transformers_musicgen, write_dataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TINY = [
    "model.dim=32", "model.num_layers=2", "model.num_heads=2", "model.max_frames=64",
    "model.text.dim=16", "model.text.num_layers=1", "model.text.num_heads=2",
    "train.cpus_per_worker=0.5", "train.batch_size=4", "train.lr=3e-3", "train.warmup_steps=2",
    "train.shuffle_buffer=0", "train.eval_sample_seconds=0.4", "train.keep_checkpoints=1",
    "data.val_fraction=0.2",
]  # fmt: skip


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """24 synth clips of 1.5 s (4 classes) encoded with the offline codec (K=4, 64 codes)."""
    codec = tiny_calibrated_codec(num_codebooks=4, cardinality=64)
    classes = ("sine_pad", "saw_bass", "bell", "noise_drums")
    root = tmp_path_factory.mktemp("data")
    return make_synth_dataset(root, codec, num_clips=24, seconds=1.5, classes=classes)


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


REGISTER_S = 3.0
"""Ray registers a persisted checkpoint when it next polls the workers (every 2 s)."""


def kill_a_worker_after_first_checkpoint(run_dir, killed: list, timeout_s: float = 300.0):
    """SIGKILL one Train worker process (found in Ray's actor table, never by name) once the
    run's first checkpoint is on disk and Ray has had time to register it."""
    # The GCS actor table of this process's cluster: ray.util.state would need the
    # dashboard (off in tests) and picks a cluster by itself when several run here.
    from ray._private.state import actors

    deadline = time.monotonic() + timeout_s
    while not any(run_dir.glob("checkpoint_*")):
        if time.monotonic() > deadline:
            return
        time.sleep(0.05)
    time.sleep(REGISTER_S)
    workers = [
        actor["Pid"]
        for actor in actors().values()
        if actor["ActorClassName"] == "RayTrainWorker" and actor["State"] == "ALIVE"
    ]
    if workers:
        os.kill(workers[0], signal.SIGKILL)
        killed.append(workers[0])


def test_killed_worker_restarts_and_rerun_resumes(ray_cluster, data_dir, work):
    args = [
        "train.num_workers=2", "train.checkpoint_every=4", "train.eval_every=100",
        "train.log_every=1", "train.max_failures=1", "train.eval_samples=0",
    ]  # fmt: skip
    killed: list[int] = []
    killer = threading.Thread(
        target=kill_a_worker_after_first_checkpoint, args=(work / "runs" / "resume", killed)
    )
    killer.start()
    first = train(config(data_dir, work, "resume", "train.steps=60", *args))
    killer.join()
    assert killed, "no Train worker was killed while the run was going"
    # The group restarted from a checkpoint, not from scratch, and finished.
    assert 0 < first["start_step"] < 60 and first["start_step"] % 4 == 0
    assert first["end_step"] == 60

    # Re-running the same run with more steps continues from the last checkpoint. It also
    # switches to FSDP: checkpoints hold whole tensors, so the strategy may change on resume.
    second = train(config(data_dir, work, "resume", "train.steps=64", "train.strategy=fsdp", *args))
    assert second["start_step"] == 60 and second["end_step"] == 64
    assert second["run_id"] == first["run_id"]  # one MLflow run across restarts
    steps = [m.step for m in tracking.client().get_metric_history(first["run_id"], "train_loss")]
    assert sorted(set(steps)) == list(range(1, 65))
    assert checkpoints.read_state(second["checkpoint"])["step"] == 64
    model = MusicGen.from_pretrained(second["checkpoint"])  # gathered from the FSDP shards
    assert model.generate_codes(["drums"], duration=0.2, seed=0).shape == (1, 4, 10)


def test_finetune_from_a_transformers_musicgen_dir(ray_cluster, work, tmp_path):
    hf_dir = tmp_path / "hf"
    transformers_musicgen(hf_dir)  # 16 kHz, 50 Hz, 4 x 64 codes
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


def test_lora_finetune_saves_an_adapter_and_resumes_on_two_workers(ray_cluster, data_dir, work):
    from music_gen.models import formats, lora
    from music_gen.models.codec import load_codec

    base_cfg = config(data_dir, work, "unused")
    torch.manual_seed(3)
    base = MusicGen.from_config(base_cfg.model, load_codec(f"{data_dir}/codec"))
    base_dir = base.save_pretrained(work / "lora-base")
    args = ["train.lora.rank=4", "train.checkpoint_every=2", "train.eval_samples=0",
            "train.log_every=1", "train.lr=1e-2"]  # fmt: skip
    cfg = config(data_dir, work, "lora", "train.steps=2", "train.num_workers=1", *args)
    cfg.train.init = str(base_dir)
    first = train(cfg)
    assert first["end_step"] == 2

    # Resumed with two more steps on two DDP workers: the adapter comes back, the base stays.
    cfg = config(data_dir, work, "lora", "train.steps=4", "train.num_workers=2", *args)
    cfg.train.init = str(base_dir)
    second = train(cfg)
    assert second["start_step"] == 2 and second["end_step"] == 4
    final = checkpoints.newest_complete(work / "runs" / "lora")[1]
    names = {p.name for p in final.iterdir()}
    assert names == {*formats.ADAPTER_ENTRIES, checkpoints.TRAIN_STATE}  # no full model
    spec = lora.read_spec(final)
    assert (spec.rank, spec.base) == (4, str(base_dir))
    adapter_bytes = (final / formats.ADAPTER_FILE).stat().st_size
    assert adapter_bytes < (base_dir / formats.WEIGHTS_FILE).stat().st_size / 3

    tuned = MusicGen.from_pretrained(final)  # the base with the adapter merged
    before, after = base.lm.state_dict(), tuned.lm.state_dict()
    assert before.keys() == after.keys()
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and all(".self_attn." in k or ".cross_attn." in k for k in moved)
    # The run's logged model is the adapter: it loads by URI over the same base.
    by_uri = MusicGen.from_pretrained(second["run_uri"])
    codes = tuned.generate_codes(["a bell"], duration=0.2, seed=0)
    assert torch.equal(by_uri.generate_codes(["a bell"], duration=0.2, seed=0), codes)


def train_worker_ids() -> set[str]:
    """Every Train worker actor this cluster has started (alive or dead)."""
    from ray._private.state import actors

    return {a["ActorID"] for a in actors().values() if a["ActorClassName"] == "RayTrainWorker"}


def test_worker_user_errors_fail_at_once_as_one_line(ray_cluster, data_dir, work):
    # A user error that shows only inside the workers: it would fail the same way on every
    # retry, so the run ends after the first worker group, whatever train.max_failures says.
    cfg = config(data_dir, work, "broken", "train.steps=2", "train.max_failures=3",
                 "train.num_workers=2")  # fmt: skip
    cfg.model.text.source = str(work / "no-such-text-encoder")
    before = train_worker_ids()
    with pytest.raises(MusicGenError, match="cannot load text encoder") as info:
        train(cfg)
    assert "\n" not in str(info.value)
    assert len(train_worker_ids() - before) == 2  # one group of two workers, no retry


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
        (["--data", data_dir, "train.lora.rank=4"], "set train.init"),
        (["--data", data_dir, "train.lora.targets=[]"], "train.lora.targets"),
    ]
    for args, message in cases:
        assert main(["train", storage, *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert message in err and err.count("\n") == 0, err
