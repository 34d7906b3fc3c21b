"""The driver of a training run: checks, the Ray Data splits, the trainer, ``train()``.

What a Ray Tune trial needs is here in pieces: ``plan_run`` (every check that can fail
before a worker starts), ``build_datasets``, ``build_trainer`` (a ``TorchTrainer`` for
a run name and storage, with extra callbacks) and ``train`` itself, which also logs the
final model to MLflow.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from music_gen.config import Config
from music_gen.errors import CheckpointError, ConfigError, MusicGenError
from music_gen.models import formats
from music_gen.pipelines import checkpoints, shards
from music_gen.pipelines.train import resume
from music_gen.pipelines.train.step import columns_for
from music_gen.pipelines.train.worker import VAL_METRIC, finished_line, train_loop_per_worker
from music_gen.platform.trainer import fail_fast_trainer_class, run_settings, worker_error


@dataclass
class Plan:
    """What the driver worked out before starting any worker."""

    data: str
    shard_paths: list[str]
    codec_source: str | None
    val_sources: list[str]
    train_rows: int
    val_rows: int
    storage: str
    code_bytes: int
    codec_meta: dict
    chroma: bool = False
    """Whether workers read the shards' chroma column (a melody model trains on it)."""


def resolve_codec_source(cfg: Config) -> str:
    """Directory of the codec the dataset was tokenized with.

    ``codec.source`` when given, else ``<data>/codec`` when it holds one, else the codec
    named in the dataset's metadata when that is a directory.
    """
    # Absolute paths: Ray Train workers do not run in the driver's working directory.
    if cfg.codec.source:
        source = Path(cfg.codec.source).expanduser()
        return str(source.resolve()) if source.exists() else cfg.codec.source
    data = cfg.data.output
    local = Path(data) / "codec"
    if (local / "codec.json").is_file():
        return str(local.resolve())
    name = shards.codec_info(data).get("codec", "")
    if name and Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    raise ConfigError(
        f"dataset {data} does not hold its codec (metadata says {name!r}): pass "
        "codec.source=DIR, the codec it was tokenized with"
    )


def _init_path(init: str) -> Path:
    """A start checkpoint as a local path (a registry URI is downloaded; hub ids stay)."""
    if init.startswith(("models:/", "runs:/")):
        from music_gen.platform.registry import download_model

        init = str(download_model(init))
    return Path(init).expanduser()


def start_shape(init: str) -> tuple[int, int] | None:
    """``(num_codebooks, cardinality)`` of a start checkpoint without loading it (None: unknown)."""
    path = _init_path(init)
    _check_weights_readable(path, init)
    kind = formats.source_kind(path)
    if kind in ("ours", "adapter", "transformers"):
        try:
            return formats.codebook_shape(path)
        except CheckpointError as exc:
            raise CheckpointError(f"train.init={init}: {exc}") from None
    if kind == "unknown":
        raise ConfigError(f"train.init={init}: not a music-gen or transformers MusicGen checkpoint")
    if formats.looks_like_hub_id(init):
        return None  # a hub id: checked by the workers once loaded
    raise ConfigError(f"train.init={init}: checkpoint not found")


def _check_weights_readable(path: Path, init: str) -> None:
    """A truncated or foreign weights file fails here, not on every worker after start-up."""
    weights = path / "model.safetensors"
    if not weights.is_file():
        return
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # SafetensorError, OSError: a damaged or foreign file
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"train.init={init}: {weights} is unreadable ({detail})") from None


def _storage(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def _check_model_shape(cfg: Config, meta: dict) -> str | None:
    """The codebooks the start model expects must hold the dataset's; returns the codec
    directory when training from scratch."""
    tc, data = cfg.train, cfg.data.output
    codec_source = None
    if tc.init:
        shape = start_shape(tc.init)
        num_codebooks, cardinality = (
            shape if shape else (meta["num_codebooks"], meta["cardinality"])
        )
        what = f"train.init={tc.init}"
    else:
        codec_source = resolve_codec_source(cfg)
        num_codebooks = cfg.model.num_codebooks or meta["num_codebooks"]
        cardinality = cfg.model.cardinality or meta["cardinality"]
        what = "the model config"
    if num_codebooks != meta["num_codebooks"] or cardinality < meta["cardinality"]:
        raise ConfigError(
            f"dataset {data} has {meta['num_codebooks']} codebooks of {meta['cardinality']} codes "
            f"but {what} expects {num_codebooks} of {cardinality}: set model.num_codebooks / "
            "model.cardinality to match (or leave them unset), or tokenize with the model's codec"
        )
    return codec_source


def start_melody(cfg: Config) -> bool | None:
    """Whether the model a run starts from has a melody conditioner (None: a hub id,
    known once loaded). ``model.melody`` builds one from scratch; with ``train.init``
    the checkpoint brings its own, and ``model.melody=true`` on one without is an error."""
    init = cfg.train.init
    if not init:
        return cfg.model.melody
    melody = formats.has_melody(_init_path(init))
    if cfg.model.melody and melody is False:
        raise ConfigError(
            f"model.melody=true but train.init={init} has no melody conditioner: start from "
            "a melody model (e.g. a MusicGen-Melody checkpoint) or leave model.melody unset"
        )
    return True if cfg.model.melody else melody


def check_chroma(data: str, paths: list[str], melody: bool | None) -> bool:
    """Whether workers read the chroma column: a melody model (or one that may be) trains
    on it; a melody model on shards without it is refused, naming the fix."""
    if melody is False:
        return False
    missing = shards.shards_without_chroma(paths)
    if melody and missing:
        source = shards.dataset_info(data).get("input") or "SRC"
        raise ConfigError(
            f"dataset {data} has no chroma column ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}), which training a melody model needs: "
            f"re-tokenize it with `music-gen data tokenize --input {source} --output {data} "
            "--overwrite`"
        )
    return not missing


def plan_run(cfg: Config) -> Plan:
    """Every check that can fail before a worker starts: data, codec/model match, init, splits."""
    import pyarrow.parquet as pq

    tc, data = cfg.train, cfg.data.output
    if not data:
        raise ConfigError("train needs a tokenized dataset: --data DIR (or data.output=DIR)")
    try:
        meta = shards.codec_info(data)
    except MusicGenError:
        raise ConfigError(
            f"no tokenized dataset at {data} (no dataset.json): run `music-gen data tokenize` first"
        ) from None
    paths = shards.readable_shards(data)  # missing, damaged or empty shards: one line, here
    codec_source = _check_model_shape(cfg, meta)
    chroma = check_chroma(data, paths, start_melody(cfg))
    if tc.strategy == "fsdp" and not cfg.model.text.freeze:
        raise ConfigError(
            "train.strategy=fsdp needs a frozen text encoder (model.text.freeze=true)"
        )
    if tc.strategy == "fsdp" and tc.ema_decay:
        raise ConfigError("train.ema_decay is not supported with train.strategy=fsdp yet")
    _check_lora(cfg)
    table = pq.ParquetDataset(paths).read(columns=["source", "frames", "num_codebooks"])
    sources = table.column("source").to_pylist()
    frames, books = table["frames"].to_pylist(), table["num_codebooks"].to_pylist()
    code_bytes = 2 * sum(f * k for f, k in zip(frames, books, strict=True))
    val_sources = shards.choose_val_sources(sources, cfg.data.val_fraction)
    val_rows = sum(s in val_sources for s in sources)
    train_rows = len(sources) - val_rows
    if val_rows == 0:
        raise ConfigError(
            f"the validation split of {data} is empty ({len(set(sources))} files, "
            f"data.val_fraction={cfg.data.val_fraction}): raise data.val_fraction"
        )
    needed = tc.batch_size * tc.num_workers
    if train_rows < needed:
        raise ConfigError(
            f"the training split holds {train_rows} segments, fewer than train.batch_size x "
            f"train.num_workers = {needed}"
        )
    return Plan(
        data=data,
        shard_paths=paths,
        codec_source=codec_source,
        val_sources=sorted(val_sources),
        train_rows=train_rows,
        val_rows=val_rows,
        storage=_storage(tc.storage),
        code_bytes=code_bytes,
        codec_meta=meta,
        chroma=chroma,
    )


def _check_lora(cfg: Config) -> None:
    """A LoRA run adapts a base: it needs one, and trains with DDP and without EMA."""
    tc = cfg.train
    if not tc.lora.rank:
        return
    if not tc.init:
        raise ConfigError(
            "train.lora.rank > 0 fine-tunes a base model: set train.init (a checkpoint dir, "
            "hub id or models:/ URI)"
        )
    if tc.strategy == "fsdp":
        raise ConfigError("train.lora trains with train.strategy=ddp (its base is frozen)")
    if tc.ema_decay:
        raise ConfigError("train.ema_decay is not supported with train.lora yet")


def _split(batch, val_sources: list[str], validation: bool):
    """Ray Data map: the rows of one split (pyarrow batch)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keep = pc.is_in(batch["source"], value_set=pa.array(val_sources, pa.string()))
    if not validation:
        keep = pc.invert(keep)
    return batch.filter(keep).drop_columns(["source"])


IN_MEMORY_BYTES = 64 * 1024**2
"""Datasets whose codes take less than this are read here once and kept in the object store:
an epoch of a few rows would otherwise cost a new read of the shards every few steps, and
each Ray Data read of Parquet starts its own pool of footer-reading actors."""


def build_datasets(plan: Plan) -> dict:
    """Train and validation Ray Datasets: small ones read here into the object store (a
    block per shard), larger ones streaming from the shards."""
    import pyarrow.parquet as pq
    import ray.data

    columns = [*columns_for(plan.chroma), "source"]
    val_sources = plan.val_sources
    splits = {"train": False, "val": True}  # name -> whether it is the validation split
    if plan.code_bytes < IN_MEMORY_BYTES:
        tables = [pq.read_table(path, columns=columns) for path in plan.shard_paths]
        return {
            name: ray.data.from_arrow([_split(t, val_sources, validation) for t in tables])
            for name, validation in splits.items()
        }
    ds = ray.data.read_parquet(plan.shard_paths, columns=columns, num_cpus=0.25)
    return {
        name: ds.map_batches(
            _split,
            batch_format="pyarrow",
            fn_kwargs={"val_sources": val_sources, "validation": validation},
            num_cpus=0.25,
        )
        for name, validation in splits.items()
    }


def _tracking_uri(cfg: Config) -> str:
    from music_gen.platform.tracking import tracking_uri

    return tracking_uri(cfg.train.tracking_uri)


def build_trainer(cfg: Config, plan: Plan, run_id: str | None, callbacks=(), relay=None):
    """The ``TorchTrainer`` of a run named ``cfg.train.name`` stored under ``cfg.train.storage``
    (a user error on any worker fails it at once, only crashes are retried);
    ``callbacks`` go to its ``RunConfig`` (a Tune trial passes Ray's Tune report callback),
    ``relay`` is the actor of a ``cluster.LineRelay`` that prints rank 0's progress."""
    from ray.train import DataConfig

    tc = cfg.train
    config = cfg.model_copy(deep=True)
    config.data.output = plan.data
    return fail_fast_trainer_class()(
        train_loop_per_worker,
        train_loop_config={
            "cfg": config.model_dump(mode="json"),
            "codec_source": plan.codec_source,
            "codec_meta": plan.codec_meta,
            "chroma": plan.chroma,
            "run_id": run_id,
            "tracking_uri": _tracking_uri(cfg),
            "relay": relay,
            # Workers resume from the newest complete checkpoint here (not only Ray's record).
            "run_dir": str(run_dir) if (run_dir := resume.run_dir(plan.storage, tc.name)) else None,
        },
        **run_settings(tc, plan.storage, VAL_METRIC, tc.gpus_per_worker, callbacks),
        datasets=build_datasets(plan),
        # Workers share the training split; each reads the validation split whole.
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )


def with_absolute_paths(cfg: Config) -> Config:
    """Local relative paths made absolute: Ray workers do not share the driver's cwd."""

    def absolute(path: str | None) -> str | None:
        if not path or "://" in path or not Path(path).expanduser().exists():
            return path  # remote URIs, hub ids and models:/ stay as they are
        return str(Path(path).expanduser().resolve())

    data = cfg.data.model_copy(update={"output": absolute(cfg.data.output)})
    train = cfg.train.model_copy(update={"init": absolute(cfg.train.init)})
    codec = cfg.codec.model_copy(update={"source": absolute(cfg.codec.source)})
    return cfg.model_copy(update={"data": data, "train": train, "codec": codec})


class TrainingInterrupted(MusicGenError):
    """Ctrl-C stopped a run; the message says where it stopped and how to resume."""

    exit_code = 130


def interrupted_error(cfg: Config, storage: str) -> TrainingInterrupted:
    """Where an interrupted run stopped (its newest complete checkpoint) and how to go on."""
    name = cfg.train.name
    directory = resume.run_dir(storage, name)
    newest = checkpoints.newest_complete(directory) if directory else None
    again = f"re-run the same command (train.name={name}, train.storage={cfg.train.storage})"
    if newest is None:
        return TrainingInterrupted(
            f"run {name!r} stopped before its first checkpoint: {again} to start it again"
        )
    step, path = newest
    return TrainingInterrupted(
        f"run {name!r} stopped; last checkpoint step {step} ({path}): {again} to resume there"
    )


def _retire_tracking_run(cfg: Config, storage: str) -> None:
    """An overwritten run's MLflow run no longer answers to its name and storage, so the
    fresh run gets a new MLflow run whose parameters are its own."""
    from music_gen.platform import tracking

    mlflow_client = tracking.client(cfg.train.tracking_uri)
    try:
        exp = tracking.experiment_id(mlflow_client, cfg.train.experiment)
    except Exception:
        return  # no usable store: start_run says so with its own message
    query = (
        f"tags.`{tracking.RUN_NAME_TAG}` = '{cfg.train.name}' and "
        f"tags.`{tracking.STORAGE_TAG}` = '{storage}'"
    )
    for run in mlflow_client.search_runs([exp], filter_string=query):
        stamp = time.strftime("%Y%m%dT%H%M%S")
        mlflow_client.set_tag(
            run.info.run_id, tracking.RUN_NAME_TAG, f"{cfg.train.name}@overwritten-{stamp}"
        )


def _final_checkpoint(result, storage: str, name: str):
    """``(path, best path)``: Ray's latest, or a newer complete one on disk (a re-run
    that trained no further step reports none, and Ray's record may lag behind)."""
    latest = result.checkpoint.path if result.checkpoint is not None else None
    best = result.get_best_checkpoint(VAL_METRIC, "min") if result.best_checkpoints else None
    best_path = best.path if best is not None else latest
    directory = resume.run_dir(storage, name)
    newest = checkpoints.newest_complete(directory) if directory else None
    latest_step = checkpoints.checkpoint_step(latest) if latest else None
    if newest is not None and (latest_step is None or newest[0] > latest_step):
        latest = str(newest[1])
    return latest, best_path or latest


def _prune_unregistered(result, storage: str, name: str, keep: str) -> None:
    """Drop the run's checkpoint dirs Ray does not know (resumed-from ones it never
    registered, ones cut short) once the run has finished: Ray prunes only its own."""
    directory = resume.run_dir(storage, name)
    if directory is None or not directory.is_dir():
        return
    known = {Path(c.path).name for c, _ in result.best_checkpoints or []}
    if result.checkpoint is not None:
        known.add(Path(result.checkpoint.path).name)
    known.add(Path(keep).name)
    for entry in directory.glob(f"{checkpoints.CHECKPOINT_PREFIX}*"):
        if entry.is_dir() and entry.name not in known:
            shutil.rmtree(entry, ignore_errors=True)


def _fit(cfg: Config, plan, run_id: str, callbacks, uri: str | None):
    """Ray Train's run of the training loop; Ctrl-C and failures end the MLflow run."""
    from ray.train import TrainingFailedError

    from music_gen.platform import cluster, tracking

    main_thread = threading.current_thread() is threading.main_thread()
    sigint = signal.getsignal(signal.SIGINT) if main_thread else None
    trainer = None
    try:
        with cluster.LineRelay() as relay:
            trainer = build_trainer(cfg, plan, run_id, callbacks, relay.actor)
            return trainer.fit()
    except TrainingFailedError as exc:
        tracking.end_run(uri, run_id, "KILLED" if trainer.interrupted else "FAILED")
        if trainer.interrupted:
            raise interrupted_error(cfg, plan.storage) from None
        raise worker_error(exc) from None
    except BaseException:
        tracking.end_run(uri, run_id, "KILLED")
        if trainer is not None and trainer.interrupted:
            raise interrupted_error(cfg, plan.storage) from None
        raise
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, sigint)  # Ray leaves its handler installed


def _finished_run(cfg: Config, storage: str):
    """``(summary, latest, best)`` of a re-run whose run already reached ``train.steps``
    (its newest complete checkpoint is there): nothing to train, so no Ray Train run, only
    the figures saved with its checkpoints. None when there is something to train."""
    directory = resume.run_dir(storage, cfg.train.name)
    found = checkpoints.complete_checkpoints(directory) if directory else []
    if not found or found[-1][0] < cfg.train.steps:
        return None
    step, latest = found[-1]
    losses = {}
    for _, path in found:
        value = (checkpoints.read_state(path).get("metrics") or {}).get(VAL_METRIC)
        if value is not None:
            losses[path] = value
    best = min(losses, key=losses.get) if losses else latest
    summary = {
        "start_step": step,
        "end_step": step,
        "val_loss": losses.get(latest),
        "tokens_per_s": None,
        "world_size": 0,
    }
    return summary, str(latest), str(best)


def train(
    cfg: Config, *, callbacks=(), parent_run_id: str | None = None, overwrite: bool = False
) -> dict:
    """Run (or resume) the training run ``cfg.train.name``; returns a summary.

    A re-run resumes from the run's newest complete checkpoint; settings that would change
    the model or the data it trains on (all but ``resume.RESUMABLE``) must be as saved in
    the run's checkpoints, else a ``ConfigError`` names the differences. ``overwrite``
    discards the old run's checkpoints (and detaches its MLflow run) and starts afresh.
    Ctrl-C raises ``TrainingInterrupted`` (exit code 130) naming the last checkpoint.

    ``callbacks`` are Ray Train callbacks for the trainer and ``parent_run_id`` nests the
    MLflow run under another: what a Ray Tune trial needs to run this same training.

    Summary keys: ``start_step``, ``end_step``, ``val_loss``, ``tokens_per_s``,
    ``world_size``, ``checkpoint`` (the last), ``best_checkpoint``, ``run_id``,
    ``tracking_uri``, ``model_uri``, ``run_uri`` and, with ``train.register_as``,
    ``registered``.
    """
    from music_gen.platform import cluster, tracking

    cfg = with_absolute_paths(cfg)
    plan = plan_run(cfg)
    if resume.check_rerun(cfg, plan.storage, overwrite):
        _retire_tracking_run(cfg, plan.storage)
    tc = cfg.train
    uri = _tracking_uri(cfg)
    finished = None if callbacks else _finished_run(cfg, plan.storage)
    if finished is None:
        cluster.ensure_ray()
        cluster.check_resources(tc.num_workers, tc.cpus_per_worker, tc.use_gpu, tc.gpus_per_worker)
    run_id = tracking.start_run(cfg, plan.storage, parent_run_id)
    if finished is not None:
        summary, latest, best = finished
        print(finished_line(summary["end_step"]))
        local = contextlib.nullcontext(latest)
    else:
        result = _fit(cfg, plan, run_id, callbacks, uri)
        summary = dict(result.return_value or {})
        latest, best = _final_checkpoint(result, plan.storage, tc.name)
        if latest is None:
            tracking.end_run(uri, run_id, "FAILED")
            raise MusicGenError("training finished without a checkpoint")
        _prune_unregistered(result, plan.storage, tc.name, keep=latest)
        rays = result.checkpoint is not None and result.checkpoint.path == latest
        local = result.checkpoint.as_directory() if rays else contextlib.nullcontext(latest)
    with local as ckpt, tempfile.TemporaryDirectory() as tmp:
        model_dir = checkpoints.export_model(Path(ckpt), Path(tmp) / "model")
        logged = tracking.log_model(uri, run_id, model_dir, cfg.train.register_as)
    tracking.end_run(uri, run_id, "FINISHED")
    summary.update(
        checkpoint=latest,
        best_checkpoint=best,
        run_id=run_id,
        tracking_uri=uri,
        **logged,
    )
    return summary
