"""A small data -> train run through the real command line prints only our own lines.

Tokenization and training each run as their own process starting its own local Ray
cluster, as a user's would (the audio and the codec they need are made in this process,
without Ray, to save two Python start-ups): Ray's output (workers' copies of the progress,
Ray Data's execution plans, start-up notices) must stay in Ray's log folder.
"""

import os
import subprocess
import sys

import pytest

from music_gen.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RAY_NOISE = (
    "pid=", "repeated", "core_worker", "Token authentication", "Traceback", "WARNING", "Warning",
)  # fmt: skip


def music_gen(*args, cwd, env) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "music_gen.cli", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def test_data_then_train_print_only_our_lines(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MUSIC_GEN_VERBOSE")}
    env.update(MUSIC_GEN_WORK_DIR=str(tmp_path / "work"), PYTHONPATH=os.getcwd())
    env.pop("MLFLOW_TRACKING_URI", None)
    run = {"cwd": tmp_path, "env": env}
    audio, codec = str(tmp_path / "audio"), str(tmp_path / "codec")
    assert main(["data", "synth", "-o", audio, "--num-clips", "12", "--seconds", "1.5"]) == 0
    assert main(["codec", "calibrate", "-i", audio, "-o", codec, "codec.num_codebooks=4",
                 "codec.cardinality=64", "--max-seconds", "18"]) == 0  # fmt: skip
    tokenized = music_gen(
        "data", "tokenize", "-i", "audio", "-o", "tokens", "--codec", "codec", "--no-progress",
        "data.num_actors=1", "data.encode_num_cpus=0.5", "data.decode_num_cpus=0.25", **run,
    )  # fmt: skip
    trained = music_gen(
        "train", "--data", "tokens", "--name", "quiet", "train.steps=4", "train.log_every=2",
        "train.checkpoint_every=4", "train.eval_every=4", "train.eval_samples=0",
        "train.batch_size=2", "train.num_workers=2", "train.cpus_per_worker=0.5",
        "data.val_fraction=0.2", "model.dim=32", "model.num_layers=1", "model.num_heads=2",
        "model.max_frames=64", "model.text.dim=16", "model.text.num_layers=1",
        "model.text.num_heads=2", **run,
    )  # fmt: skip
    for output in (tokenized, trained):
        lines = [line for line in output.splitlines() if line.strip()]
        noisy = [line for line in lines if any(word in line for word in RAY_NOISE)]
        assert not noisy, output
    assert tokenized.splitlines()[0].startswith("files read"), tokenized
    lines = trained.splitlines()
    # One start line, one per log interval and one validation line (rank 0 alone), a summary.
    progress = [line for line in lines if line.startswith("[train]")]
    assert len(progress) == 4, trained
    assert sum("step 2/4" in line for line in progress) == 1, trained
    assert lines[len(progress)].startswith("trained quiet to step 4"), trained
    assert len(lines) == len(progress) + 5, trained  # trained, checkpoint, best, mlflow, model
