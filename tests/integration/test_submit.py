"""`music-gen submit` against a real Ray head started by this module, token auth on.

The head is its own cluster (``ray start --head --block`` in a new process group, its
own temp dir and ports, one CPU), independent of the session's ``ray_cluster``. It
runs with ``RAY_AUTH_MODE=token`` and a token of its own; the CLI runs in
subprocesses that get the token only through ``RAY_AUTH_TOKEN``, as a user would.
The head is torn down by killing its process group, never with ``ray stop``: that
stops every Ray process on the machine, other clusters included.
"""

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
START_TIMEOUT = 90.0
CLI_TIMEOUT = 120.0
PORT_FLAGS = (
    "port",
    "dashboard-port",
    "ray-client-server-port",
    "dashboard-agent-listen-port",
    "dashboard-agent-grpc-port",
    "runtime-env-agent-port",
    "metrics-export-port",
)


@dataclass
class Head:
    url: str
    token: str
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def base_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_USAGE_STATS_ENABLED="0", PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    return env


def wait_for_dashboard(url: str, proc: subprocess.Popen, log: Path) -> None:
    """Until the dashboard answers at all (401 counts: token auth guards every route)."""
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"ray start exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url + "/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"the Ray dashboard did not come up in {START_TIMEOUT:g} s")


@pytest.fixture(scope="module")
def head():
    # A short temp dir: Ray's unix socket paths must stay under ~100 characters.
    temp_dir = Path(tempfile.mkdtemp(prefix="mgray", dir="/tmp"))
    ports = {flag: free_port() for flag in PORT_FLAGS}
    token = secrets.token_hex(16)
    env = base_env() | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    command = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--num-cpus=1",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        "--disable-usage-stats",
        f"--object-store-memory={100 * 1024**2}",
        f"--temp-dir={temp_dir}",
        *[f"--{flag}={port}" for flag, port in ports.items()],
    ]
    log = temp_dir / "head.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{ports['dashboard-port']}"
    try:
        wait_for_dashboard(url, proc, log)
        yield Head(url, token, log)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the whole group: raylet, GCS, workers, jobs
        proc.wait(timeout=30)
        shutil.rmtree(temp_dir, ignore_errors=True)


def cli(*args: str, token: str | None, extra_env: dict | None = None):
    env = base_env() | (extra_env or {})
    if token is not None:
        env["RAY_AUTH_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "music_gen.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT,
    )


def test_submit_follow_status_logs_stop(head, tmp_path):
    out = tmp_path / "job.wav"
    result = cli(
        "submit",
        "--address",
        head.url,
        "--follow",
        "--",
        "generate",
        "a calm sine pad",
        "--random-init",
        "--duration",
        "0.2",
        "--seed",
        "0",
        "-o",
        str(out),
        "model.dim=32",  # an override travels to the job untouched
        "model.text.dim=16",
        token=head.token,
    )
    assert result.returncode == 0, result.stderr + result.stdout
    job_id = result.stdout.splitlines()[0]
    assert job_id.startswith("raysubmit_")
    assert str(out) in result.stdout  # the job's own output, streamed by --follow
    assert f"job {job_id} SUCCEEDED" in result.stderr
    assert out.is_file() and out.stat().st_size > 0  # same machine: the job wrote it

    status = cli("submit", "--address", head.url, "status", job_id, token=head.token)
    assert status.returncode == 0 and status.stdout.startswith("SUCCEEDED")
    logs = cli("submit", "--address", head.url, "logs", job_id, token=head.token)
    assert logs.returncode == 0 and str(out) in logs.stdout
    stop = cli("submit", "--address", head.url, "stop", job_id, token=head.token)
    assert stop.returncode == 0 and "was not running" in stop.stdout


def test_failed_job_exits_non_zero(head):
    result = cli(
        "submit",
        "--follow",
        "--",
        "data",
        "validate",
        "/nonexistent/dataset",
        token=head.token,
        extra_env={"RAY_ADDRESS": head.url},  # the address from the environment
    )
    assert result.returncode == 1, result.stderr + result.stdout
    assert "music-gen: error:" in result.stdout  # the job's one-line error, in its logs
    assert "FAILED" in result.stderr


def test_stop_a_running_job_then_follow_its_logs(head, tmp_path):
    submitted = cli(
        "submit",
        "--address",
        head.url,
        "--",
        "data",
        "synth",
        "-o",
        str(tmp_path / "many"),
        "--num-clips",
        "100000",  # minutes of work: still running when stopped
        token=head.token,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    stop = cli("submit", "--address", head.url, "stop", job_id, token=head.token)
    assert stop.returncode == 0 and f"stop requested for {job_id}" in stop.stdout
    followed = cli("submit", "--address", head.url, "logs", job_id, "--follow", token=head.token)
    assert followed.returncode == 1 and f"job {job_id} STOPPED" in followed.stderr
    # Stopped means stopped: nothing goes on writing clips once the job is STOPPED.
    written = lambda: len(list((tmp_path / "many").glob("*")))  # noqa: E731
    before = written()
    time.sleep(3.0)
    assert written() == before, "the stopped job's command is still running"


def test_unknown_job_and_address_precedence(head):
    # --address wins over a RAY_ADDRESS that points nowhere.
    result = cli(
        "submit",
        "--address",
        head.url,
        "status",
        "raysubmit_nope",
        token=head.token,
        extra_env={"RAY_ADDRESS": "http://127.0.0.1:9"},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "music-gen: error: no job 'raysubmit_nope' on this cluster"
    ]


def test_wrong_token_is_a_one_line_error(head):
    result = cli("submit", "--address", head.url, "status", "x", token="not-the-token")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused the token" in lines[0]


def test_runtime_env_carries_the_project_and_not_the_clutter():
    from music_gen.platform import jobs

    spec = jobs.runtime_env(str(ROOT), env={"EXTRA": "1"})
    assert Path(spec["working_dir"]) == ROOT and "py_modules" not in spec  # the package is in it
    assert {".venv", ".git", "work/runs", "work/mlflow.db"} <= set(spec["excludes"])
    assert spec["env_vars"]["RAY_USAGE_STATS_ENABLED"] == "0"
    assert spec["env_vars"]["MLFLOW_DISABLE_TELEMETRY"] == "true"
    assert spec["env_vars"]["EXTRA"] == "1"
    assert jobs.entrypoint(["music-gen", "train", "train.lr=3e-4", "a b"]) == (
        "exec python -m music_gen.cli train train.lr=3e-4 'a b'"
    )
