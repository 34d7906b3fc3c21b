"""MLflow tracking: where runs go, what a training run logs, the final model.

Defaults need no server: the tracking store is ``sqlite:///<work dir>/mlflow.db`` and
artifacts go to ``<work dir>/mlartifacts`` (work dir: ``$MUSIC_GEN_WORK_DIR`` or
``./work``). ``MLFLOW_TRACKING_URI`` (or ``train.tracking_uri``) points at a server.

A training run is one MLflow run, found again by its name and storage when the same
command is re-run (so a resumed run keeps logging into the same MLflow run). The
driver creates it and logs the parameters and the resolved config; rank 0 of the
workers logs metrics and samples through ``RunLogger``; the driver logs the final
model as an MLflow pyfunc model whose artifacts are our checkpoint directory (the
model code is a file, not a pickle), registered (when asked) by
``registry.register_model``, the one registration.

This module is the one owner of the tracking URI (``tracking_uri``; ``activate`` is the
only place that sets MLflow's global one), of experiment creation (with the artifact
location beside a sqlite store) and of model logging. ``shared_tracking`` gives a sweep
a URI that concurrent trials can all log to (a local ``mlflow server`` over the sqlite
store); ``local_server`` starts that server, as a cluster's head node would on
PostgreSQL.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from music_gen.errors import MusicGenError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Its download bars would clutter the training log (log_model downloads to validate).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Nor a "View run at" link each time a run on a tracking server ends.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

RUN_NAME_TAG = "music_gen.run_name"
STORAGE_TAG = "music_gen.storage"
MODEL_NAME = "model"
"""Name of the logged model in a run (``runs:/<run id>/model``)."""
CHECKPOINT_ARTIFACT = "checkpoint"
"""Key of the checkpoint directory in the pyfunc model's artifacts."""

# The pyfunc model's code, logged as a file ("models from code"): loading it imports
# music_gen instead of unpickling an object.
PYFUNC_CODE = """\
from mlflow.models import set_model

from music_gen.platform.tracking import MusicGenPyfunc

set_model(MusicGenPyfunc())
"""


def work_dir() -> Path:
    """The platform's local state directory (``$MUSIC_GEN_WORK_DIR`` or ``./work``), absolute."""
    return Path(os.environ.get("MUSIC_GEN_WORK_DIR", "work")).expanduser().resolve()


def tracking_uri(explicit: str | None = None, create: bool = True) -> str:
    """``explicit``, else ``$MLFLOW_TRACKING_URI``, else the sqlite file in the work dir
    (whose folder is made unless ``create`` is false)."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = work_dir()
    if create:
        root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


def existing_store(explicit: str | None = None, wanted: str = "") -> str:
    """The tracking URI to read from, refused when it is a local store that does not exist.

    Reading (resolving ``runs:/`` or ``models:/`` URIs) must not create a store: MLflow
    would make an empty ``mlflow.db`` (and ``./work``) wherever the user happens to be.
    """
    uri = tracking_uri(explicit, create=False)
    local = _local_store_path(uri)
    if local is not None and not local.exists():
        raise MusicGenError(
            f"no MLflow store at {local}, so no such run or model"
            + (f" as '{wanted}'" if wanted else "")
            + "; set "
            "MLFLOW_TRACKING_URI (or MUSIC_GEN_WORK_DIR) to the store training logged to"
        )
    return uri


def _local_store_path(uri: str) -> Path | None:
    """The file or folder of an embedded store (``sqlite:///x.db``, ``file:///d``, a path)."""
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///") :])
    if uri.startswith("file://"):
        return Path(uri[len("file://") :])
    if "://" not in uri and ":" not in uri.split("/", 1)[0]:
        return Path(uri)
    return None


def _artifact_root(uri: str) -> str | None:
    """Artifacts beside a local sqlite store (else MLflow would use ./mlruns of the cwd)."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///") :]).parent / "mlartifacts").resolve().as_uri()
    return None


def client(uri: str | None = None):
    from mlflow import MlflowClient

    uri = tracking_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlflow_client, name: str) -> str:
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = _artifact_root(mlflow_client.tracking_uri)
    try:
        return mlflow_client.create_experiment(name, artifact_location=location)
    except Exception:  # created meanwhile by another process
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def is_embedded(uri: str) -> bool:
    """Whether ``uri`` is a store opened in-process (sqlite or files), not a server."""
    return not uri.startswith(("http://", "https://", "databricks"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def shared_tracking(uri: str | None = None) -> Iterator[str]:
    """A tracking URI that many processes can log to at once.

    A server URI (``http://...``, what a cluster uses) is yielded as it is. For the
    embedded sqlite store, a local ``mlflow server`` on it serves the block (one writer
    process: several processes writing one sqlite file lose updates to "database is
    locked"); artifacts still go straight to the store's ``mlartifacts`` folder.
    """
    uri = tracking_uri(uri)
    if not uri.startswith("sqlite:///"):
        yield uri
        return
    log = Path(uri[len("sqlite:///") :]).parent / "mlflow-server.log"
    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with local_server(uri, _artifact_root(uri), log) as url:
            yield url
    finally:
        # ``activate`` may have pointed the process at the server, which is gone now.
        _restore_global(saved)


@contextlib.contextmanager
def local_server(
    backend_store_uri: str, artifact_root: str, log_path: Path, timeout_s: float = 180.0
) -> Iterator[str]:
    """``mlflow server`` on a free loopback port for the block; yields its URL.

    What a cluster runs on its head node (there with ``--host 0.0.0.0``, a PostgreSQL
    backend store and an artifact root every node reaches).
    """
    port = _free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend_store_uri,
        "--default-artifact-root", artifact_root, "--host", "127.0.0.1", "--port", str(port),
        "--workers", "1",
    ]  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        # Its own session, so that stopping it (by its process group) ends its workers too.
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(server, url, timeout_s, log_path)
        yield url
    finally:
        _stop(server)


def _restore_global(saved: str | None) -> None:
    import mlflow

    mlflow.set_tracking_uri(saved)
    mlflow.set_registry_uri(saved)
    if saved is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        os.environ.pop("MLFLOW_REGISTRY_URI", None)


def _wait_healthy(server: subprocess.Popen, url: str, timeout_s: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-1:]
            raise MusicGenError(f"the local MLflow server exited: {' '.join(tail)} ({log_path})")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    _stop(server)
    raise MusicGenError(f"the local MLflow server did not answer within {timeout_s:g} s")


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=15)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGKILL)
        server.wait()


def flatten(tree: dict, prefix: str = "") -> dict[str, str]:
    """``{"train": {"lr": 1e-4}}`` -> ``{"train.lr": "0.0001"}`` (MLflow params are strings)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = str(value)[:6000]
    return flat


def start_run(cfg, storage: str, parent_run_id: str | None = None) -> str:
    """The MLflow run of a training run: the one with this name and storage, or a new one.

    A new run gets every config value as a parameter; a resumed one keeps its parameters
    (MLflow forbids changing them) and gets the new resolved config as an artifact.
    ``parent_run_id`` nests a new run under another (a sweep's trials under the sweep).
    """
    import yaml
    from mlflow.entities import Param, RunStatus

    mlflow_client = client(cfg.train.tracking_uri)
    try:
        exp = experiment_id(mlflow_client, cfg.train.experiment)
    except Exception as exc:
        raise MusicGenError(
            f"MLflow tracking store {mlflow_client.tracking_uri} is not usable: {exc}"
        ) from None
    query = f"tags.`{RUN_NAME_TAG}` = '{cfg.train.name}' and tags.`{STORAGE_TAG}` = '{storage}'"
    runs = mlflow_client.search_runs(
        [exp], filter_string=query, max_results=1, order_by=["attributes.start_time DESC"]
    )
    config_tree = cfg.model_dump(mode="json")
    if runs:
        run_id = runs[0].info.run_id
        mlflow_client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        name = f"config/resumed-{int(time.time())}.yaml"
    else:
        tags = {RUN_NAME_TAG: cfg.train.name, STORAGE_TAG: storage}
        if parent_run_id:
            tags["mlflow.parentRunId"] = parent_run_id
        run = mlflow_client.create_run(exp, run_name=cfg.train.name, tags=tags)
        run_id = run.info.run_id
        params = [Param(k, v) for k, v in flatten(config_tree).items()]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 per batch
            mlflow_client.log_batch(run_id, params=params[start : start + 100])
        name = "config/config.yaml"
    mlflow_client.log_text(run_id, yaml.safe_dump(config_tree, sort_keys=False), name)
    return run_id


def end_run(uri: str | None, run_id: str, status: str = "FINISHED") -> None:
    client(uri).set_terminated(run_id, status=status)


class RunLogger:
    """What rank 0 logs during training; every other rank gets ``enabled=False`` (no-ops)."""

    def __init__(self, uri: str | None, run_id: str | None, enabled: bool = True):
        self.enabled = enabled and run_id is not None
        self.run_id = run_id
        self.client = client(uri) if self.enabled else None

    def metrics(self, values: dict[str, float], step: int) -> None:
        if not self.enabled:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in values.items() if v is not None]
        self.client.log_batch(self.run_id, metrics=batch)

    def artifacts(self, directory: str | Path, artifact_path: str) -> None:
        if self.enabled:
            self.client.log_artifacts(self.run_id, str(directory), artifact_path)


def _requirements() -> list[str]:
    """The package's own requirements (pinned in pyproject) for the model's environment."""
    from importlib import metadata

    try:
        requires = metadata.requires("music-gen") or []
    except metadata.PackageNotFoundError:
        requires = []
    core = [r for r in requires if "extra ==" not in r]
    return core or ["torch", "transformers", "safetensors"]


def activate(uri: str | None = None) -> str:
    """Point MLflow's process-wide (fluent) API at ``uri``; returns it.

    The one place that sets the global URIs: ``mlflow.pyfunc.log_model`` and
    ``models:/`` downloads have no client argument. Everything else passes a client.
    """
    import mlflow

    uri = tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def log_model(
    uri: str | None, run_id: str, model_dir: str | Path, register_as: str | None = None
) -> dict:
    """Log ``model_dir`` (our checkpoint layout) as the run's MLflow model; returns its URIs.

    ``register_as`` also registers it (``registry.register_model``, the one registration)
    as a new version of that registered model, tagged with the run's metrics.
    """
    import mlflow

    uri = activate(uri)
    with tempfile.TemporaryDirectory() as tmp:
        code = Path(tmp) / "music_gen_model.py"
        code.write_text(PYFUNC_CODE)
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=str(code),
                artifacts={CHECKPOINT_ARTIFACT: str(model_dir)},
                pip_requirements=_requirements(),
            )
    result = {"model_uri": info.model_uri, "run_uri": f"runs:/{run_id}/{MODEL_NAME}"}
    if register_as:
        from music_gen.platform import registry

        version = registry.register_model(
            info.model_uri, register_as, tracking_uri=uri, run_id=run_id
        )
        result["registered"] = f"models:/{register_as}/{version}"
    return result


try:  # the pyfunc wrapper needs mlflow; the rest of this module imports it lazily
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover - mlflow is a dependency
    _PythonModel = object


class MusicGenPyfunc(_PythonModel):
    """The logged model: ``predict`` takes prompts and returns generated codes.

    Platform code does not go through it: ``MusicGen.from_pretrained("models:/NAME@ALIAS")``
    downloads the checkpoint artifact and loads it directly.
    """

    def load_context(self, context):
        from music_gen import MusicGen

        self.model = MusicGen.from_pretrained(context.artifacts[CHECKPOINT_ARTIFACT])

    def predict(self, context, model_input: list[str], params=None):
        """``model_input``: prompts; ``params``: ``duration`` in seconds (default 5)."""
        prompts = [str(p) for p in model_input]
        params = params or {}
        codes = self.model.generate_codes(prompts, duration=float(params.get("duration", 5.0)))
        return codes.tolist()
