"""What a re-run may change (``resume.RESUMABLE``), the differences it names, and which
checkpoint directories count as complete. No Ray: the integration tests drive the CLI."""

import json

import pytest

from music_gen.config import load_config
from music_gen.errors import ConfigError
from music_gen.pipelines import checkpoints
from music_gen.pipelines.train import resume


def saved(*overrides):
    """A config as a checkpoint's state.json holds it (JSON round trip)."""
    return json.loads(json.dumps(load_config(overrides=list(overrides)).model_dump(mode="json")))


def test_changes_of_the_model_or_the_data_are_named_and_resumable_ones_are_not():
    old = saved("model.dim=32", "train.steps=10", "train.segment_curriculum={0: 0.5}")
    new = load_config(
        overrides=[
            "model.dim=64", "model.text.dim=8", "data.val_fraction=0.2",  # refused
            "train.steps=20", "train.num_workers=2", "train.checkpoint_every=5",  # allowed
            "data.segment_seconds=3",  # tokenization only: not read by training
            "train.segment_curriculum={0: 0.5}",
        ]
    ).model_dump(mode="json")  # fmt: skip
    assert resume.config_changes(old, new) == [
        "data.val_fraction 0.05 -> 0.2",
        "model.dim 32 -> 64",
        "model.text.dim 64 -> 8",
    ]
    assert resume.config_changes(old, saved("model.dim=32", "train.steps=99",
                                            "train.segment_curriculum={0: 0.5}")) == []  # fmt: skip
    assert resume.config_changes(old, saved("model.dim=32", "train.steps=10")) == [
        'train.segment_curriculum {"0": 0.5} -> {}'
    ]


def write_checkpoint(run, step, cfg, complete=True):
    directory = run / checkpoints.checkpoint_dir_name(step)
    (directory / checkpoints.TRAIN_STATE).mkdir(parents=True)
    state = {"step": step, "config": cfg}
    (directory / checkpoints.TRAIN_STATE / checkpoints.STATE_FILE).write_text(json.dumps(state))
    if complete:
        marker = checkpoints.marker_path(directory)
        with open(marker, "wb") as out:
            out.write(checkpoints.marker_bytes(step))
    return directory


def test_newest_complete_checkpoint_skips_half_written_ones(tmp_path):
    run = tmp_path / "run"
    assert checkpoints.newest_complete(run) is None
    write_checkpoint(run, 4, {})
    eight = write_checkpoint(run, 8, {})
    write_checkpoint(run, 12, {}, complete=False)  # cut short: no marker
    (run / "checkpoint_tmp").mkdir()
    assert checkpoints.newest_complete(run) == (8, eight)
    assert [s for s, _ in checkpoints.complete_checkpoints(run)] == [4, 8]
    assert checkpoints.checkpoint_step("/a/b/checkpoint_0000012") == 12
    assert checkpoints.checkpoint_step("/a/b/checkpoint_tmp") is None


def test_rerun_check_refuses_in_one_line_and_overwrite_discards(tmp_path):
    cfg = load_config(overrides=["model.dim=32", "train.name=x"])
    old = write_checkpoint(tmp_path / "x", 4, cfg.model_dump(mode="json"))
    assert resume.check_rerun(cfg, str(tmp_path)) is False  # the same settings resume
    changed = load_config(overrides=["model.dim=64", "train.name=x", "train.steps=5"])
    with pytest.raises(ConfigError, match=r"\(model\.dim 32 -> 64\): re-run with a new") as info:
        resume.check_rerun(changed, str(tmp_path))
    assert "\n" not in str(info.value) and "--overwrite" in str(info.value)
    assert old.is_dir()  # nothing of the old run was touched
    assert resume.check_rerun(changed, str(tmp_path), overwrite=True) is True
    assert not (tmp_path / "x").exists()
    assert resume.check_rerun(changed, "s3://bucket/runs") is False  # remote: not read here


def test_workers_resume_from_the_newest_complete_checkpoint_not_only_rays_record(tmp_path):
    from ray.train import Checkpoint

    from music_gen.pipelines.train.worker import choose_checkpoint

    run = tmp_path / "run"
    four = write_checkpoint(run, 4, {})
    eight = write_checkpoint(run, 8, {})  # persisted, not yet registered by Ray
    write_checkpoint(run, 12, {}, complete=False)
    recorded = Checkpoint.from_directory(str(four))
    assert choose_checkpoint(recorded, str(run), world=1).path == str(eight)
    assert choose_checkpoint(None, str(run), world=1).path == str(eight)
    ahead = Checkpoint.from_directory(str(write_checkpoint(run, 16, {})))
    assert choose_checkpoint(ahead, str(run), world=1) is ahead  # Ray's record is as new
    assert choose_checkpoint(recorded, None, world=1) is recorded  # remote storage: Ray's
