"""The MLflow model registry edge: model URIs to local checkpoint directories.

``download_model("models:/NAME@ALIAS")`` (or ``models:/NAME/VERSION``, ``runs:/RUN/PATH``,
``models:/m-<logged model id>``) resolves the URI, downloads the model's artifacts
into ``<work dir>/models/`` (once, except ``runs:/`` which a resumed run may log
again) and returns the directory that holds our checkpoint
(``music_gen.json``), which ``MusicGen.from_pretrained`` then loads. An alias is resolved
to its version first, so moving the alias makes the next call fetch the new version.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from pathlib import Path

from music_gen.errors import CheckpointError, UsageError
from music_gen.platform import tracking

CHECKPOINT_FILE = "music_gen.json"
_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+|latest)$")


def cache_dir() -> Path:
    return tracking.work_dir() / "models"


def resolve(uri: str, tracking_uri: str | None = None) -> tuple[str, str, bool]:
    """A model URI -> ``(artifact URI to download, cache key, whether it never changes)``,
    aliases resolved to versions."""
    from mlflow.exceptions import MlflowException

    client = tracking.client(tracking_uri)
    try:
        if match := _ALIAS.match(uri):
            name = match["name"]
            version = client.get_model_version_by_alias(name, match["alias"]).version
            return f"models:/{name}/{version}", f"{name}/{version}", True
        if match := _VERSION.match(uri):
            name, version = match["name"], match["version"]
            if version == "latest":
                versions = client.search_model_versions(f"name = '{name}'")
                if not versions:
                    raise CheckpointError(f"registered model '{name}' has no versions")
                version = str(max(int(v.version) for v in versions))
            client.get_model_version(name, version)  # raises when missing
            return f"models:/{name}/{version}", f"{name}/{version}", True
    except MlflowException as exc:
        raise CheckpointError(
            f"cannot resolve '{uri}' in the MLflow registry at {client.tracking_uri}: "
            f"{exc.message.splitlines()[0]}"
        ) from None
    if uri.startswith("runs:/"):
        uri = _logged_model_of_run(client, uri)
    if uri.startswith(("models:/", "runs:/")):
        # A logged model id never changes; runs:/RUN/model does when a resumed run logs again.
        key = "uri-" + hashlib.sha1(uri.encode()).hexdigest()[:16]
        return uri, key, uri.startswith("models:/")
    raise UsageError(f"'{uri}' is not a models:/ or runs:/ URI")


def _logged_model_of_run(client, uri: str) -> str:
    """``runs:/RUN/NAME`` -> ``models:/<model id>`` of the newest model NAME the run logged.

    MLflow 3 keeps logged models apart from run artifacts, so ``runs:/`` URIs of models
    no longer download as artifact paths; other ``runs:/`` paths are left as they are.
    """
    from mlflow.exceptions import MlflowException

    run_id, _, name = uri[len("runs:/") :].partition("/")
    try:
        experiment = client.get_run(run_id).info.experiment_id
        models = client.search_logged_models(
            experiment_ids=[experiment],
            filter_string=f"source_run_id = '{run_id}' AND name = '{name.strip('/')}'",
        )
    except MlflowException as exc:
        raise CheckpointError(f"cannot resolve '{uri}': {exc.message.splitlines()[0]}") from None
    if not models:
        return uri
    newest = max(models, key=lambda model: model.creation_timestamp)
    return f"models:/{newest.model_id}"


def find_checkpoint(root: Path) -> Path | None:
    """The directory under ``root`` (itself included) that holds ``music_gen.json``."""
    if (root / CHECKPOINT_FILE).is_file():
        return root
    found = sorted(root.rglob(CHECKPOINT_FILE), key=lambda p: len(p.parts))
    return found[0].parent if found else None


def download_model(uri: str, tracking_uri: str | None = None) -> Path:
    """Local directory of our checkpoint for ``models:/...`` or ``runs:/...`` (cached)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    artifact_uri, key, immutable = resolve(uri, tracking_uri)
    target = cache_dir() / key
    if immutable and target.is_dir() and (found := find_checkpoint(target)) is not None:
        return found
    target.parent.mkdir(parents=True, exist_ok=True)
    # models:/ URIs resolve through the global tracking URI, whatever is passed below.
    mlflow.set_tracking_uri(tracking.tracking_uri(tracking_uri))
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_uri,
                dst_path=tmp,
                tracking_uri=tracking.tracking_uri(tracking_uri),
            )
        except MlflowException as exc:
            raise CheckpointError(
                f"cannot download '{uri}': {exc.message.splitlines()[0]}"
            ) from None
        if find_checkpoint(Path(local)) is None:
            raise CheckpointError(f"'{uri}' holds no music-gen checkpoint ({CHECKPOINT_FILE})")
        # Download beside the cache, then move: a half-finished download is never used.
        if not immutable:
            shutil.rmtree(target, ignore_errors=True)
        try:
            Path(tmp).rename(target)
            Path(tmp).mkdir()  # so that TemporaryDirectory's cleanup finds what it made
        except OSError:  # another process (a serve replica) got there first
            if find_checkpoint(target) is None:
                raise
    return find_checkpoint(target)


def register_model(model_uri: str, name: str, alias: str | None = None, tracking_uri=None) -> str:
    """Register a logged model as a new version of ``name`` (and point ``alias`` at it)."""
    import mlflow

    uri = tracking.tracking_uri(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    version = mlflow.register_model(model_uri, name).version
    if alias:
        tracking.client(uri).set_registered_model_alias(name, alias, version)
    return str(version)
