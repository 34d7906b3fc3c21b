"""MLflow stores the sweep and registry tests run on: the embedded sqlite default, and
an ``mlflow server`` with a PostgreSQL backend store (what a cluster runs).

The PostgreSQL cluster is a throwaway one in a temporary directory (``initdb`` +
``pg_ctl``, as the ``postgres`` user when the tests run as root), started once per
session and only when a test asks for it. Without PostgreSQL on the machine the
postgres-backed tests skip, saying so.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from music_gen.platform import tracking

STORES = ["sqlite", "postgres"]


def cluster_store() -> str:
    """The store a cluster would run (postgres) where this machine has PostgreSQL, else
    sqlite: for a test too slow to run on both."""
    return "postgres" if _pg_bin("initdb") and _pg_bin("pg_ctl") else "sqlite"


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _as_postgres(command: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: run it as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return command
    return ["runuser", "-u", "postgres", "--", *command]


@pytest.fixture(scope="session")
def postgres_uri():
    """``postgresql://`` URI of a fresh database on a throwaway local cluster."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("no PostgreSQL on this machine (apt-get install postgresql)")
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        pytest.skip("running as root without runuser: cannot start PostgreSQL")
    try:
        import psycopg  # noqa: F401  (SQLAlchemy's default PostgreSQL driver)
    except ImportError:
        pytest.skip("psycopg is not installed (pip install 'psycopg[binary]')")
    root = Path(tempfile.mkdtemp(prefix="music-gen-pg-"))
    data = root / "data"
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
    port = tracking._free_port()
    log = root / "postgres.log"
    run = lambda cmd: subprocess.run(  # noqa: E731
        _as_postgres(cmd), check=True, capture_output=True, text=True, timeout=120
    )
    run([initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"])
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    run([pg_ctl, "-D", str(data), "-o", options, "-l", str(log), "-w", "start"])
    try:
        psql = _pg_bin("psql")
        run([psql, "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-c",
             "CREATE DATABASE mlflow"])  # fmt: skip
        yield f"postgresql://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            _as_postgres([pg_ctl, "-D", str(data), "-m", "fast", "-w", "stop"]),
            capture_output=True, timeout=120,
        )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(postgres_uri, tmp_path_factory):
    """URL of an ``mlflow server`` on the PostgreSQL store with a local artifact root."""
    root = tmp_path_factory.mktemp("mlflow-server")
    artifacts = (root / "artifacts").as_uri()
    with tracking.local_server(postgres_uri, artifacts, root / "server.log") as url:
        yield url


def use_store(request, kind: str, work: Path):
    """Point this process at ``kind``'s store; returns a MonkeyPatch to undo it."""
    patch = pytest.MonkeyPatch()
    patch.setenv("MUSIC_GEN_WORK_DIR", str(work))
    if kind == "sqlite":
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        patch.setenv("MLFLOW_TRACKING_URI", request.getfixturevalue("postgres_server"))
    return patch
