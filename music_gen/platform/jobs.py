"""Run any ``music-gen`` command on a Ray cluster as a Ray Job (the job-submission edge).

::

    music-gen submit --address http://head:8265 -- train --config configs/train/small.yaml
    music-gen submit --follow -- evaluate --model models:/tiny@production --data s3://b/val
    music-gen submit status JOB | logs JOB [--follow] | stop JOB

Address: ``--address``, else ``RAY_API_SERVER_ADDRESS`` or ``RAY_ADDRESS``, else a
local cluster started with ``ray start --head``. It may be the dashboard's HTTP
address (``http://head:8265``, preferred) or the cluster's GCS address
(``head:6379``). ``--address`` wins over the environment (Ray's own client lets
``RAY_ADDRESS`` override its argument; ``connect`` hides it while it resolves).

What the job carries (``runtime_env``): ``working_dir`` is the project root (the
``music_gen`` package, ``configs/``, ``pyproject.toml``), uploaded to the cluster and
made the job's working directory, so the cluster runs this checkout's code and the
relative config paths of the command resolve there. Left out: ``.venv``, ``.git``,
``work/`` (local data, runs, MLflow store), caches and test outputs (the
``.gitignore`` is honoured as well). Data and checkpoints must therefore be paths
the cluster can read (shared storage, ``s3://``, ``gs://``). Environment variables:
telemetry off (``RAY_USAGE_STATS_ENABLED=0``, ``MLFLOW_DISABLE_TELEMETRY=true``,
``HF_HUB_DISABLE_TELEMETRY=1``), ``MLFLOW_TRACKING_URI`` and ``HF_HUB_OFFLINE``
passed on when set here, and any ``--env KEY=VALUE``. The cluster's Python must
have the dependencies installed (the Docker image does). The entrypoint is
``python -m music_gen.cli <the command after -->``.

Token authentication (Ray 2.60): a new local cluster enables it and writes its
token to ``~/.ray/auth_token``; ``ray start --head`` enables it when a token exists
or ``RAY_AUTH_MODE=token``. Then every dashboard request (including
``/api/version``) and every GCS call needs the token, but Ray's
``JobSubmissionClient`` only attaches it when token mode is on in the *client's*
process, which it is not in a fresh ``music-gen`` process: a plain client gets
"401 Unauthorized". So ``connect`` looks the token up the way Ray does
(``RAY_AUTH_TOKEN``, else the file named by ``RAY_AUTH_TOKEN_PATH``, else
``~/.ray/auth_token``, via Ray's ``AuthenticationTokenLoader``) and (1) sends it as
``Authorization: Bearer <token>`` on every request, including the log-tailing
websocket, and (2) turns token mode on for this process (as ``ray.init`` does when
joining a cluster), which the GCS (gRPC) calls behind a ``host:port`` address need.
``RAY_AUTH_MODE=disabled`` opts out. For a remote cluster, copy its token
(``ray get-auth-token`` on the head) into ``RAY_AUTH_TOKEN`` or the token file.
The token is never put in the job's runtime environment: the cluster's own
processes already have it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from music_gen.errors import MusicGenError, UsageError

ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
EXCLUDES = [
    ".git",
    ".venv",
    "work",
    "mlruns",
    "mlartifacts",
    "ray_results",
    "*.db",
    "**/__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "*.egg-info",
    "build",
    "dist",
    "*.wav",
    "*.flac",
    "*.mp3",
    "*.ogg",
    "*.safetensors",
    "*.pt",
    "*.ckpt",
]
JOB_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PYTHONUNBUFFERED": "1",  # logs reach `--follow` as they are printed
}
PASS_THROUGH = ("MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
POLL_SECONDS = 1.0


# --- connecting ------------------------------------------------------------------------------


def auth_token() -> str | None:
    """The cluster token as Ray finds it (env, token path, ~/.ray/auth_token), or None."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    from ray._raylet import AuthenticationTokenLoader

    loader = AuthenticationTokenLoader.instance()
    if not loader.has_token(ignore_auth_mode=True):
        return None
    return loader.get_raw_token(ignore_auth_mode=True).strip() or None


def _enable_token_mode() -> None:
    """Token mode for this process, as ``ray.init`` does when it joins a cluster: GCS calls
    then carry the token. Ray's helper logs a warning meant for cluster owners; muted."""
    try:
        from ray._private.authentication import authentication_token_setup as setup
    except ImportError:  # a Ray without token auth: nothing to enable
        return
    quiet = logging.getLogger(setup.__name__)
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        setup.maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    finally:
        quiet.setLevel(level)


@contextlib.contextmanager
def _without_env(names):
    saved = {name: os.environ.pop(name) for name in names if name in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def describe_address(address: str | None) -> str:
    if address:
        return address
    for name in ADDRESS_VARIABLES:
        if os.environ.get(name):
            return f"{os.environ[name]} (from {name})"
    return "a local cluster"


def connect(address: str | None = None):
    """A ``JobSubmissionClient`` for ``address`` (or the environment's), token attached."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    if token:
        _enable_token_mode()
    where = describe_address(address)
    hidden = ADDRESS_VARIABLES if address else ()
    try:
        with _without_env(hidden):
            return JobSubmissionClient(address, headers=headers)
    except AuthenticationError:
        problem = "refused the token" if token else "needs a token and none was found"
        raise MusicGenError(
            f"the Ray cluster at {where} {problem}: set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH "
            "to the cluster's token (`ray get-auth-token` on the head)"
        ) from None
    except ConnectionError as exc:
        if address is None and not any(os.environ.get(n) for n in ADDRESS_VARIABLES):
            raise MusicGenError(
                "no Ray cluster to submit to: pass --address URL (e.g. http://head:8265) or "
                "set RAY_ADDRESS, or start one with `ray start --head`"
            ) from None
        raise MusicGenError(
            f"cannot reach the Ray cluster at {where}: {_first_line(exc)}"
        ) from None
    except (ValueError, RuntimeError) as exc:
        raise MusicGenError(f"cannot use the Ray cluster at {where}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- what the job carries ------------------------------------------------------------------------


def project_root() -> Path | None:
    """The checkout that holds the ``music_gen`` package (None for a wheel install)."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "pyproject.toml").is_file() and (root / "music_gen").is_dir() else None


def runtime_env(working_dir: str | None = None, env: dict[str, str] | None = None) -> dict:
    """The job's runtime environment: the project as ``working_dir``, telemetry off."""
    env_vars = dict(JOB_ENV)
    env_vars.update({name: os.environ[name] for name in PASS_THROUGH if os.environ.get(name)})
    env_vars.update(env or {})
    spec: dict = {"env_vars": env_vars, "excludes": list(EXCLUDES)}
    root = Path(working_dir) if working_dir else project_root()
    if root is None:
        # Installed from a wheel: ship the package itself; configs come from the cwd.
        package = Path(__file__).resolve().parents[1]
        spec["py_modules"] = [str(package)]
        root = Path.cwd()
    if not root.is_dir():
        raise UsageError(f"--working-dir {root} is not a directory")
    spec["working_dir"] = str(root)
    return spec


def entrypoint(command: list[str]) -> str:
    """The shell command the cluster runs: ``python -m music_gen.cli <command>``."""
    if not command:
        raise UsageError(
            "nothing to submit: give a music-gen command after --, e.g. "
            "music-gen submit -- train --config configs/train/debug.yaml"
        )
    if command[0] in ("music-gen", "music_gen"):
        command = command[1:]  # `submit -- music-gen train` means the same as `-- train`
    return "python -m music_gen.cli " + shlex.join(command)


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env takes KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


# --- the job commands --------------------------------------------------------------------------


def submit(client, command: list[str], working_dir=None, env=None, submission_id=None) -> str:
    """Submit ``music-gen <command>``; returns the job (submission) id."""
    spec = runtime_env(working_dir, env)
    try:
        return client.submit_job(
            entrypoint=entrypoint(command),
            runtime_env=spec,
            submission_id=submission_id,
            metadata={"submitted_by": "music-gen"},
        )
    except (RuntimeError, ValueError) as exc:
        raise MusicGenError(f"the cluster rejected the job: {_first_line(exc)}") from None


def _known_job(call, job_id: str):
    """Run a client call about one job; an unknown id becomes a one-line error."""
    try:
        return call(job_id)
    except RuntimeError as exc:
        if "404" in str(exc) or "does not exist" in str(exc):
            raise MusicGenError(f"no job '{job_id}' on this cluster") from None
        raise MusicGenError(f"job '{job_id}': {_first_line(exc)}") from None


def job_status(client, job_id: str) -> tuple[str, str]:
    """``(status, message)`` of a job, e.g. ``("FAILED", "Job entrypoint command failed")``."""
    info = _known_job(client.get_job_info, job_id)
    return str(getattr(info.status, "value", info.status)), info.message or ""


def job_logs(client, job_id: str) -> str:
    return _known_job(client.get_job_logs, job_id)


def stop_job(client, job_id: str) -> bool:
    """Ask a job to stop; False when it had already finished."""
    return bool(_known_job(client.stop_job, job_id))


def follow(client, job_id: str, out=None, timeout: float | None = None) -> str:
    """Stream a job's logs to ``out`` until it ends; returns its final status."""
    out = out or sys.stdout
    job_status(client, job_id)  # an unknown id fails here, not inside the websocket

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except Exception as exc:  # a dropped stream must not lose the job: poll its status instead
        print(f"music-gen: log stream ended early ({_first_line(exc)})", file=sys.stderr)
    return wait(client, job_id, timeout)


def wait(client, job_id: str, timeout: float | None = None) -> str:
    """Poll until the job is SUCCEEDED, FAILED or STOPPED; returns that status."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        status, _ = job_status(client, job_id)
        if status in TERMINAL:
            return status
        if deadline is not None and time.monotonic() > deadline:
            raise MusicGenError(f"job '{job_id}' still {status} after {timeout:g} s")
        time.sleep(POLL_SECONDS)


def exit_code(status: str) -> int:
    """Process exit code for a finished job: 0 when it succeeded, else 1."""
    return 0 if status == "SUCCEEDED" else 1
