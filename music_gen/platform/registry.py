"""The MLflow model registry: model URIs to local checkpoint directories, registration,
gated promotion of aliases and rollback.

``download_model("models:/NAME@ALIAS")`` (or ``models:/NAME/VERSION``, ``runs:/RUN/PATH``,
``models:/m-<logged model id>``) resolves the URI, downloads the model's artifacts
into ``<work dir>/models/`` (once, except ``runs:/`` which a resumed run may log
again) and returns the directory that holds our checkpoint
(``music_gen.json``), which ``MusicGen.from_pretrained`` then loads. An alias is resolved
to its version first, so moving the alias makes the next call fetch the new version.

``register_model`` is the one registration (training's ``train.register_as``, a sweep's
best trial and ``music-gen registry register`` all go through it); ``promote`` moves an
alias behind a metric gate and writes the move down on the version; ``rollback`` reads
it back. Aliases only: MLflow's stages are deprecated.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from pathlib import Path

from music_gen.errors import CheckpointError, MusicGenError, UsageError
from music_gen.models import formats
from music_gen.platform import tracking

CHECKPOINT_FILE = formats.FORMAT_FILE
MODEL_MARKERS = (formats.FORMAT_FILE, formats.ADAPTER_CONFIG)
_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+|latest)$")


def cache_dir() -> Path:
    return tracking.work_dir() / "models"


def resolve(uri: str, tracking_uri: str | None = None) -> tuple[str, str, bool]:
    """A model URI -> ``(artifact URI to download, cache key, whether it never changes)``,
    aliases resolved to versions."""
    from mlflow.exceptions import MlflowException

    if not uri.startswith(("models:/", "runs:/")):
        raise UsageError(f"'{uri}' is not a models:/ or runs:/ URI")
    client = tracking.client(tracking.existing_store(tracking_uri, uri))  # never creates one
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
    """The directory under ``root`` (itself included) that holds ``music_gen.json`` (a
    model) or ``adapter.json`` (a LoRA adapter, which names its base)."""
    found = sorted(
        (path for name in MODEL_MARKERS for path in root.rglob(name)), key=lambda p: len(p.parts)
    )
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
    # models:/ URIs resolve through the global registry URI, whatever is passed below.
    tracking.activate(tracking_uri)
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


# --- registration, promotion, rollback ---------------------------------------------
# MLflow keeps no alias history, so promotions are written down as version tags:
# the new holder records who moved the alias, when, why and which version held it
# before; rollback reads that record off the current holder.

METRIC_TAG = "metric."
"""Version tags ``metric.<name>`` hold the figures the promotion gate compares."""
SOURCE_TAG = "music_gen.source"
PROMOTION_TAG = "promotion.{alias}.{field}"
ROLLBACK_TAG = "rollback.{alias}.{field}"
GATE_METRICS = {"val_loss": "min", "eval_loss": "min", "eval_fad": "min"}
"""Metrics the gate knows and which way is better (``eval_*``: ``music-gen evaluate``)."""
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$", re.IGNORECASE)


def _fail(exc, what: str) -> MusicGenError:
    return MusicGenError(f"{what}: {exc.message.splitlines()[0]}")


def metric_tags(metrics: dict[str, float]) -> dict[str, str]:
    return {f"{METRIC_TAG}{k}": repr(float(v)) for k, v in metrics.items() if v is not None}


def register_model(
    model_uri: str,
    name: str,
    alias: str | None = None,
    tracking_uri: str | None = None,
    run_id: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Register a logged model (``models:/m-...`` or ``runs:/RUN/model``) as a new version
    of ``name``; returns the version. The version is tagged with the source run's metrics
    (``metric.<name>``) and ``tags``, all in the one call that creates it. ``alias``
    points straight at it (no gate: use ``promote`` for that)."""
    from mlflow.exceptions import MlflowException

    client = tracking.client(tracking_uri)
    _check_name(name)
    if model_uri.startswith("runs:/"):
        run_id = run_id or model_uri[len("runs:/") :].partition("/")[0]
        model_uri = _logged_model_of_run(client, model_uri)
        if model_uri.startswith("runs:/"):
            raise MusicGenError(f"run {run_id} has no logged model '{tracking.MODEL_NAME}'")
    model_id = model_uri[len("models:/") :] if model_uri.startswith("models:/m-") else None
    all_tags = {SOURCE_TAG: model_uri}
    if run_id:
        try:
            all_tags |= metric_tags(client.get_run(run_id).data.metrics)
        except MlflowException as exc:
            raise _fail(exc, f"cannot read run {run_id}") from None
    all_tags |= tags or {}
    try:
        try:
            client.create_registered_model(name)
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
                raise
        # No waiting (and no "Waiting up to 300 seconds" line): MLflow's own stores
        # create versions READY.
        version = client.create_model_version(
            name, source=model_uri, run_id=run_id, tags=all_tags, model_id=model_id,
            await_creation_for=0,
        ).version  # fmt: skip
        if alias:
            client.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        raise _fail(exc, f"cannot register '{model_uri}' as '{name}'") from None
    return str(version)


def _check_name(name: str) -> None:
    if not name or "/" in name or "@" in name or name != name.strip():
        raise UsageError(f"'{name}' is not a registered model name (no '/', '@' or spaces)")


def _check_alias(alias: str) -> None:
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", alias or "") or _RESERVED_ALIAS.match(alias):
        raise UsageError(
            f"'{alias}' is not a usable alias (letters, digits, '_' and '-'; not 'latest' or 'v<N>')"
        )


def register_source(
    name: str,
    *,
    run_id: str | None = None,
    checkpoint: str | None = None,
    model: str | None = None,
    tracking_uri: str | None = None,
    experiment: str = "registry",
) -> dict:
    """``music-gen registry register``: a new version of ``name`` from a training run's
    logged model, a checkpoint directory (its training metrics recorded) or any source
    ``MusicGen.from_pretrained`` loads. Everything is checked and logged before the
    registry is touched."""
    if sum(x is not None for x in (run_id, checkpoint, model)) != 1:
        raise UsageError("give exactly one of --run, --checkpoint, --model")
    _check_name(name)
    if run_id is not None:
        version = register_model(f"runs:/{run_id}/{tracking.MODEL_NAME}", name, None, tracking_uri)
        return {"name": name, "version": version, "run_id": run_id}
    logged = _log_source(checkpoint or model, checkpoint is not None, tracking_uri, experiment)
    version = register_model(logged["model_uri"], name, None, tracking_uri, run_id=logged["run_id"])
    return {"name": name, "version": version, "run_id": logged["run_id"]}


def _log_source(src: str, is_checkpoint: bool, tracking_uri: str | None, experiment: str) -> dict:
    """Load ``src`` (fails on anything corrupt), save it in our layout and log it in a
    run of its own, with the checkpoint's training metrics when it has them."""
    from music_gen import MusicGen
    from music_gen.pipelines import checkpoints

    path = Path(src)
    if is_checkpoint and not any((path / name).is_file() for name in MODEL_MARKERS):
        raise CheckpointError(f"{src} is not a music-gen checkpoint ({CHECKPOINT_FILE} missing)")
    mg = MusicGen.from_pretrained(src)  # raises CheckpointError for a bad source
    metrics = {}
    if is_checkpoint and (path / checkpoints.TRAIN_STATE / checkpoints.STATE_FILE).is_file():
        state_metrics = checkpoints.read_state(path).get("metrics", {})
        metrics = {k: float(v) for k, v in state_metrics.items() if isinstance(v, int | float)}
    client = tracking.client(tracking_uri)
    run = client.create_run(
        tracking.experiment_id(client, experiment), run_name=f"register {path.name or src}"
    )
    run_id = run.info.run_id
    try:
        client.set_tag(run_id, SOURCE_TAG, str(src))
        if metrics:
            tracking.RunLogger(tracking_uri, run_id).metrics(metrics, int(metrics.get("step", 0)))
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = mg.save_pretrained(Path(tmp) / "model")
            logged = tracking.log_model(tracking_uri, run_id, model_dir)
    except BaseException:
        tracking.end_run(tracking_uri, run_id, "FAILED")
        raise
    tracking.end_run(tracking_uri, run_id)
    return {"run_id": run_id, **logged}


def record_metrics(
    name: str, version: str, metrics: dict[str, float], tracking_uri: str | None = None
) -> None:
    """Write evaluation figures on a version (``metric.<name>`` tags) for the gate."""
    client = tracking.client(tracking_uri)
    _version(client, name, version)
    for key, value in metric_tags(metrics).items():
        client.set_model_version_tag(name, str(version), key, value)


def registered_version(uri: str, tracking_uri: str | None = None) -> tuple[str, str]:
    """``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` -> ``(name, version)``: the
    version a figure measured on ``uri`` belongs to (checked to exist)."""
    if not (_ALIAS.match(uri) or _VERSION.match(uri)):
        raise UsageError(
            f"--register-metrics needs a registered model (--model models:/NAME/VERSION or "
            f"models:/NAME@ALIAS), not '{uri}'"
        )
    _, key, _ = resolve(uri, tracking_uri)
    name, version = key.split("/")
    return name, version


def _version(client, name: str, version: str):
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException:
        raise MusicGenError(f"no registered model '{name}' in {client.tracking_uri}") from None
    if not str(version).isdigit():
        raise UsageError(f"version must be a number (got '{version}')")
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        raise MusicGenError(f"'{name}' has no version {version}") from None


def _holder(client, name: str, alias: str):
    """The version ``alias`` points at, or ``None``."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def metric_of(version, metric: str) -> float | None:
    raw = version.tags.get(f"{METRIC_TAG}{metric}")
    try:
        return float(raw) if raw is not None else None
    except ValueError:
        return None


def gate(candidate, holder, metric: str, margin: float) -> str | None:
    """Why ``candidate`` may not replace ``holder`` (``None``: it may).

    Lower is better for every gate metric: the candidate passes when its figure is at
    most the holder's plus ``margin``.
    """
    if holder is None or str(holder.version) == str(candidate.version):
        return None
    new, old = metric_of(candidate, metric), metric_of(holder, metric)
    if new is None:
        return (
            f"version {candidate.version} has no recorded {metric} (register it from a run, "
            "or run `music-gen evaluate --register-metrics`)"
        )
    if old is None:
        return None  # nothing to compare against: the holder was never measured
    if new > old + margin:
        return (
            f"version {candidate.version} has {metric} {new:.4f}, worse than version "
            f"{holder.version}'s {old:.4f} by more than the margin {margin:g}"
        )
    return None


def promote(
    name: str,
    version: str,
    alias: str = "production",
    *,
    metric: str = "val_loss",
    margin: float = 0.0,
    force: bool = False,
    reason: str = "",
    tracking_uri: str | None = None,
) -> dict:
    """Point ``alias`` at ``version`` if it passes the gate (or ``force``), recording who,
    when, why and the previous holder on the version. Nothing is written on refusal."""
    if metric not in GATE_METRICS:
        raise UsageError(f"unknown gate metric '{metric}' (choose from {', '.join(GATE_METRICS)})")
    if margin < 0:
        raise UsageError("--margin must not be negative")
    _check_alias(alias)
    client = tracking.client(tracking_uri)
    candidate = _version(client, name, version)
    holder = _holder(client, name, alias)
    refusal = gate(candidate, holder, metric, margin)
    if refusal and not force:
        raise MusicGenError(f"promotion refused: {refusal} (use --force to promote anyway)")
    number = str(candidate.version)
    holds = holder is not None and str(holder.version) == number
    previous = str(holder.version) if holder is not None and not holds else ""
    record = {
        "by": _who(),
        "at": _now(),
        "reason": reason,
        "previous": previous or (holder.tags.get(_tag(PROMOTION_TAG, alias, "previous"), "")
                                 if holder is not None else ""),
        "forced": str(bool(refusal and force)).lower(),
        "metric": metric,
    }  # fmt: skip
    for field, value in record.items():
        client.set_model_version_tag(name, number, _tag(PROMOTION_TAG, alias, field), value)
    client.set_registered_model_alias(name, alias, number)
    return {"name": name, "alias": alias, "version": number, "previous": previous,
            "forced": record["forced"] == "true", "gate": refusal}  # fmt: skip


def rollback(
    name: str, alias: str = "production", *, reason: str = "", tracking_uri: str | None = None
) -> dict:
    """Return ``alias`` to the version that held it before the current holder."""
    _check_alias(alias)
    client = tracking.client(tracking_uri)
    _registered(client, name)
    holder = _holder(client, name, alias)
    if holder is None:
        raise MusicGenError(f"'{name}' has no alias '{alias}' to roll back")
    previous = holder.tags.get(_tag(PROMOTION_TAG, alias, "previous"), "")
    if not previous:
        raise MusicGenError(
            f"'{name}@{alias}' (version {holder.version}) has no previous holder to roll back to"
        )
    target = str(_version(client, name, previous).version)
    current = str(holder.version)
    record = {"by": _who(), "at": _now(), "reason": reason, "to": target}
    for field, value in record.items():
        client.set_model_version_tag(name, current, _tag(ROLLBACK_TAG, alias, field), value)
    client.set_registered_model_alias(name, alias, target)
    return {"name": name, "alias": alias, "version": target, "from": current}


def _registered(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        raise MusicGenError(f"no registered model '{name}' in {client.tracking_uri}") from None


def _tag(template: str, alias: str, field: str) -> str:
    return template.format(alias=alias, field=field)


def _who() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


def describe(version, aliases: list[str]) -> dict:
    """One version as ``registry list``/``show`` print it."""
    from datetime import UTC, datetime

    created = datetime.fromtimestamp(version.creation_timestamp / 1000, UTC)
    metrics = {
        key[len(METRIC_TAG) :]: value
        for key, value in version.tags.items()
        if key.startswith(METRIC_TAG)
    }
    return {
        "name": version.name,
        "version": str(version.version),
        "aliases": aliases,
        "metrics": metrics,
        "run_id": version.run_id or "",
        "source": version.tags.get(SOURCE_TAG, version.source),
        "created": created.isoformat(timespec="seconds"),
        "tags": dict(version.tags),
    }


def list_versions(name: str | None = None, tracking_uri: str | None = None) -> list[dict]:
    """Every version of ``name`` (or of every registered model), newest last."""
    client = tracking.client(tracking_uri)
    if name is not None:
        models = [_registered(client, name)]
    else:
        models = list(client.search_registered_models())
    rows = []
    for model in sorted(models, key=lambda m: m.name):
        aliases: dict[str, list[str]] = {}
        for alias, version in (model.aliases or {}).items():
            aliases.setdefault(str(version), []).append(alias)
        versions = client.search_model_versions(f"name = '{model.name}'")
        for version in sorted(versions, key=lambda v: int(v.version)):
            rows.append(describe(version, sorted(aliases.get(str(version.version), []))))
    return rows


def show(ref: str, tracking_uri: str | None = None) -> dict:
    """``NAME@ALIAS`` or ``NAME/VERSION`` -> the version's description."""
    client = tracking.client(tracking_uri)
    name, sep, alias = ref.partition("@")
    if sep:
        _registered(client, name)
        version = _holder(client, name, alias)
        if version is None:
            raise MusicGenError(f"'{name}' has no alias '{alias}'")
    else:
        name, sep, number = ref.partition("/")
        if not sep:
            raise UsageError(f"'{ref}' is not NAME@ALIAS or NAME/VERSION")
        version = _version(client, name, number)
    model = _registered(client, name)
    number = str(version.version)
    aliases = sorted(a for a, v in (model.aliases or {}).items() if str(v) == number)
    return describe(version, aliases)
