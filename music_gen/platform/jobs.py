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

What the job carries (``runtime_env``): ``working_dir`` is the folder the user runs
``submit`` from (or ``--working-dir``), uploaded to the cluster and made the job's
working directory, so the command's relative paths (configs, data) resolve there as they
do here. The ``music_gen`` package travels too (``py_modules``) unless it is inside that
folder, so the cluster runs the submitter's code. Left out: ``.git``, ``.venv``, caches,
build outputs and the platform's own state (``work/runs``, ``work/mlartifacts``,
``work/models``, ``mlflow.db``); ``.rayignore`` files are honoured, ``.gitignore`` is not
(it leaves out data that the command needs, ``work/`` above all). Before anything is
uploaded, ``plan_upload`` lists the files, refuses an upload over Ray's 512 MiB package
limit and any local path in the command that would not reach the cluster (outside the
folder, or left out), and the command prints what it uploads. Large data belongs on
storage every node reads (``s3://``, ``gs://``, a shared mount). Environment variables:
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
from dataclasses import dataclass
from pathlib import Path

from music_gen.errors import MusicGenError, UsageError

ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")
EXCLUDES = [
    ".git",
    ".venv",
    "work/runs",
    "work/mlartifacts",
    "work/models",
    "work/mlflow.db",
    "mlruns",
    "mlartifacts",
    "ray_results",
    "**/__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".mypy_cache",
    ".hypothesis",
    "*.egg-info",
    "build",
    "dist",
]
"""Left out of the upload (gitignore patterns, relative to the working dir)."""
MAX_UPLOAD_BYTES = 512 * 1024**2
"""Ray's limit on one runtime-env package (its gRPC message size)."""
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
    from ray._raylet import AuthenticationTokenLoader  # type: ignore[attr-defined]

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


@contextlib.contextmanager
def _with_env(values: dict[str, str]):
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


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


@dataclass
class Upload:
    """What a job's ``working_dir`` will carry."""

    root: Path
    files: set[Path]
    bytes: int
    ships_package: bool

    def describe(self) -> str:
        extra = " and the music_gen package" if self.ships_package else ""
        return f"uploading {self.root} ({len(self.files)} files, {self.bytes / 1e6:.1f} MB){extra}"


def package_dir() -> Path:
    return Path(__file__).resolve().parents[1]


def plan_upload(working_dir: str | None = None) -> Upload:
    """The files Ray will upload from ``working_dir`` (default: the current folder), found
    with Ray's own walk and exclude rules."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    root = Path(working_dir or Path.cwd()).expanduser().resolve()
    if not root.is_dir():
        raise UsageError(f"--working-dir {root} is not a directory")
    files: set[Path] = set()
    sizes = [0]

    def add(path: Path) -> None:
        if path.is_file():
            files.add(path.resolve())
            sizes[0] += path.stat().st_size

    quiet = logging.getLogger("music_gen.upload")  # Ray logs each .rayignore it reads
    quiet.setLevel(logging.WARNING)
    _dir_travel(root, [_get_excludes(root, EXCLUDES)], add, include_gitignore=False, logger=quiet)
    inside = package_dir().is_relative_to(root)
    upload = Upload(root, files, sizes[0], ships_package=not inside)
    if upload.bytes > MAX_UPLOAD_BYTES:
        raise UsageError(
            f"{root} holds {upload.bytes / 1e6:.0f} MB to upload, over Ray's "
            f"{MAX_UPLOAD_BYTES // 1024**2} MiB limit: put data on storage the cluster reads "
            "(s3://, gs://, a shared mount), or submit from a smaller --working-dir"
        )
    return upload


def _local_paths(command: list[str]) -> list[str]:
    """Arguments (and ``key=value`` override values) that name existing relative paths."""
    found = []
    for word in command:
        value = word.partition("=")[2] if "=" in word and not word.startswith("-") else word
        if value and "://" not in value and not value.startswith("/") and Path(value).exists():
            found.append(value)
    return found


def check_paths(command: list[str], upload: Upload) -> None:
    """Refuse a command whose local paths would not exist on the cluster."""
    for value in _local_paths(command):
        path = Path(value).resolve()
        if not path.is_relative_to(upload.root):
            raise UsageError(
                f"'{value}' is outside the uploaded folder {upload.root}: submit from a folder "
                "that holds it (--working-dir), or give a path the cluster reads (s3://, ...)"
            )
        wanted = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        if any(p.resolve() not in upload.files for p in wanted):
            raise UsageError(
                f"'{value}' is left out of the upload (platform state, caches or .rayignore): "
                "give the cluster a path it reads (s3://, a shared mount)"
            )


def runtime_env(
    working_dir: str | None = None,
    env: dict[str, str] | None = None,
    upload: Upload | None = None,
) -> dict:
    """The job's runtime environment: the working dir (and the package), telemetry off."""
    upload = upload or plan_upload(working_dir)
    env_vars = dict(JOB_ENV)
    env_vars.update({name: os.environ[name] for name in PASS_THROUGH if os.environ.get(name)})
    env_vars.update(env or {})
    spec: dict = {
        "env_vars": env_vars,
        "excludes": list(EXCLUDES),
        "working_dir": str(upload.root),
    }
    if upload.ships_package:
        spec["py_modules"] = [str(package_dir())]
    return spec


def entrypoint(command: list[str]) -> str:
    """The shell command the cluster runs: ``exec python -m music_gen.cli <command>``.

    ``exec``: the job's process is Python itself, not a shell with Python as its child.
    Ray stops a job by signalling its process and the children it finds at that moment,
    so a Python child the shell started later could outlive the stop (seen in CI: a
    stopped `data synth` job went on writing clips for minutes, orphaned)."""
    if not command:
        raise UsageError(
            "nothing to submit: give a music-gen command after --, e.g. "
            "music-gen submit -- train --config configs/train/debug.yaml"
        )
    if command[0] in ("music-gen", "music_gen"):
        command = command[1:]  # `submit -- music-gen train` means the same as `-- train`
    return "exec python -m music_gen.cli " + shlex.join(command)


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"--env takes KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


# --- the job commands --------------------------------------------------------------------------


def submit(
    client, command: list[str], working_dir=None, env=None, submission_id=None, upload=None
) -> str:
    """Submit ``music-gen <command>``; returns the job (submission) id."""
    spec = runtime_env(working_dir, env, upload)
    try:
        # The upload follows EXCLUDES and .rayignore, not .gitignore (see the module doc).
        with _with_env({"RAY_RUNTIME_ENV_IGNORE_GITIGNORE": "1"}):
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
