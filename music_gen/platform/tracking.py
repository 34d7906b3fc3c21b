"""MLflow tracking: where runs go, what a training run logs, the final model.

Defaults need no server: the tracking store is ``sqlite:///<work dir>/mlflow.db`` and
artifacts go to ``<work dir>/mlartifacts`` (work dir: ``$MUSIC_GEN_WORK_DIR`` or
``./work``). ``MLFLOW_TRACKING_URI`` (or ``train.tracking_uri``) points at a server.

A training run is one MLflow run, found again by its name and storage when the same
command is re-run (so a resumed run keeps logging into the same MLflow run). The
driver creates it and logs the parameters and the resolved config; rank 0 of the
workers logs metrics and samples through ``RunLogger``; the driver logs the final
model as an MLflow pyfunc model whose artifacts are our checkpoint directory (the
model code is a file, not a pickle), ready for ``mlflow.register_model``.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from music_gen.errors import MusicGenError

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# Its download bars would clutter the training log (log_model downloads to validate).
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

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


def tracking_uri(explicit: str | None = None) -> str:
    """``explicit``, else ``$MLFLOW_TRACKING_URI``, else the sqlite file in the work dir."""
    uri = explicit or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root = work_dir()
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{root / 'mlflow.db'}"


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


def start_run(cfg, storage: str) -> str:
    """The MLflow run of a training run: the one with this name and storage, or a new one.

    A new run gets every config value as a parameter; a resumed one keeps its parameters
    (MLflow forbids changing them) and gets the new resolved config as an artifact.
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
        run = mlflow_client.create_run(
            exp, run_name=cfg.train.name, tags={RUN_NAME_TAG: cfg.train.name, STORAGE_TAG: storage}
        )
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


def log_model(
    uri: str | None, run_id: str, model_dir: str | Path, register_as: str | None = None
) -> dict:
    """Log ``model_dir`` (our checkpoint layout) as the run's MLflow model; returns its URIs.

    ``register_as`` also registers it as a new version of that registered model.
    """
    import mlflow

    uri = tracking_uri(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
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
        version = mlflow.register_model(info.model_uri, register_as)
        result["registered"] = f"models:/{register_as}/{version.version}"
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
