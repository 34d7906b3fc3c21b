"""Re-running a training run and stopping one with Ctrl-C, through the real CLI.

A re-run whose settings would change the model refuses in one line naming the change
(nothing of the old run is touched), one that only asks for more steps resumes, and
``--overwrite`` starts afresh. A `music-gen train` subprocess (joined to the session's
cluster) stopped with SIGINT exits 130 saying which checkpoint step it can resume from;
the re-run resumes from the newest complete checkpoint on disk and ignores a newer,
half-written one.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from music_gen.cli import main
from music_gen.pipelines import checkpoints
from tests.integration import test_train

TINY = test_train.TINY
data_dir, work = test_train.data_dir, test_train.work  # the tiny dataset, a private work dir

pytestmark = [pytest.mark.integration, pytest.mark.slow]

QUICK = [
    "train.num_workers=1", "train.eval_every=1000", "train.log_every=1000",
    "train.eval_samples=0", "train.val_batches=1",
]  # fmt: skip


def command(data_dir, work, name, *overrides):
    storage = f"train.storage={work / 'runs'}"
    return ["train", "--data", str(data_dir), "--name", name, storage, *TINY, *QUICK, *overrides]


def test_rerun_refuses_changed_model_resumes_more_steps_and_overwrites(
    ray_cluster, data_dir, work, capsys
):
    args = lambda *more: command(data_dir, work, "rerun", *more)  # noqa: E731
    assert main(args("train.steps=2", "train.checkpoint_every=2")) == 0
    first = capsys.readouterr().out
    run_dir = work / "runs" / "rerun"
    before = sorted(p.name for p in run_dir.glob("checkpoint_0*"))
    assert before == ["checkpoint_0000002"]

    # A changed model setting: one line naming it and the ways on, nothing deleted.
    assert main(args("train.steps=2", "train.checkpoint_every=2", "model.dim=64")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.dim 32 -> 64" in err, err
    assert "new train.name" in err and "--overwrite" in err
    assert sorted(p.name for p in run_dir.glob("checkpoint_0*")) == before
    assert checkpoints.read_state(run_dir / before[0])["config"]["model"]["dim"] == 32

    # More steps (and another checkpoint interval) may change: it resumes.
    assert main(args("train.steps=4", "train.checkpoint_every=4")) == 0
    out = capsys.readouterr().out
    assert "trained rerun to step 4 (resumed at step 2)" in out, out
    run_id = re.search(r"mlflow run +(\w+)", first).group(1)
    assert re.search(r"mlflow run +(\w+)", out).group(1) == run_id  # the same MLflow run

    # The same command again: nothing left to train, so no worker starts; it says so and
    # reports the last figures.
    assert main(args("train.steps=4", "train.checkpoint_every=4")) == 0
    out = capsys.readouterr().out
    assert "already at step 4" in out and "(resumed at step 4), val_loss " in out, out
    assert "worker(s)" not in out and re.search(r"mlflow run +(\w+)", out).group(1) == run_id

    # --overwrite discards the old checkpoints and starts from step 0 with the new model.
    assert main(args("train.steps=2", "train.checkpoint_every=2", "model.dim=64",
                     "--overwrite")) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "trained rerun to step 2" in out and "resumed" not in out, out
    assert sorted(p.name for p in run_dir.glob("checkpoint_0*")) == ["checkpoint_0000002"]
    assert checkpoints.read_state(run_dir / "checkpoint_0000002")["config"]["model"]["dim"] == 64
    assert re.search(r"mlflow run +(\w+)", out).group(1) != run_id  # its own MLflow run


def wait_for_complete_checkpoints(run_dir, count: int, process, timeout_s: float = 300.0):
    deadline = time.monotonic() + timeout_s
    while len(checkpoints.complete_checkpoints(run_dir)) < count:
        if process.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_ctrl_c_exits_130_and_rerun_resumes_from_newest_complete_checkpoint(
    ray_cluster, data_dir, work, capsys
):
    args = command(data_dir, work, "ctrlc", "train.steps=400", "train.checkpoint_every=3")
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.get_runtime_context().gcs_address)
    process = subprocess.Popen(
        [sys.executable, "-m", "music_gen.cli", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    run_dir = work / "runs" / "ctrlc"
    try:
        started = wait_for_complete_checkpoints(run_dir, 2, process)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    assert started, err
    assert process.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    stopped = re.fullmatch(
        r"music-gen: interrupted: run 'ctrlc' stopped; last checkpoint step (\d+) \((.+)\): "
        r"re-run the same command \(train.name=ctrlc, .*\) to resume there",
        lines[0],
    )
    assert stopped, lines[0]
    step = int(stopped.group(1))
    assert (step, run_dir / checkpoints.checkpoint_dir_name(step)) == checkpoints.newest_complete(
        run_dir
    )
    assert step >= 6 and step % 3 == 0

    # A newer checkpoint cut short (every file but the marker) is not resumed from.
    newer = run_dir / checkpoints.checkpoint_dir_name(step + 30)
    newer.mkdir()
    (newer / checkpoints.TRAIN_STATE).mkdir()
    state = checkpoints.read_state(run_dir / checkpoints.checkpoint_dir_name(step))
    (newer / checkpoints.TRAIN_STATE / checkpoints.STATE_FILE).write_text(str(state))

    rerun = command(data_dir, work, "ctrlc", f"train.steps={step + 3}", "train.checkpoint_every=3")
    assert main(rerun) == 0
    out = capsys.readouterr().out
    assert f"trained ctrlc to step {step + 3} (resumed at step {step})" in out, out
    final = run_dir / checkpoints.checkpoint_dir_name(step + 3)
    assert checkpoints.is_complete(final) and checkpoints.read_state(final)["step"] == step + 3
    assert not newer.exists()  # dirs Ray never registered are dropped once the run is done
