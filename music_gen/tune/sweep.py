"""``music-gen tune``: a Ray Tune sweep over the same training, with MLflow tracking.

The Ray Train V2 way: each trial is a function (``run_trial``) that runs the training
driver (``pipelines.train.train``), which builds and fits a ``TorchTrainer`` named after
the trial (``<sweep>-<trial id>``) with Ray's ``TuneReportCallback``: the workers'
checkpoint reports (``val_loss``, ``step``) reach Tune, and ASHA stops trials whose
validation loss lags at a rung. The trial function reserves a sliver of a CPU
(``tune.trial_cpus``); the trainer's workers reserve their own, so the number of trials
that run at once is derived from the cluster here rather than by Tune.

MLflow: one parent run per sweep, each trial's training run nested under it (its
parameters, curves and final metrics), all logging through one tracking server (the
configured one, or a local ``mlflow server`` on the embedded sqlite store for the
duration of the sweep: sqlite does not take concurrent writers from many processes).

Re-running a sweep with the same ``tune.name`` and ``tune.storage`` resumes it: Tune's
experiment state says which trials finished (they are not re-run); an unfinished trial
re-runs its training, which resumes from its last checkpoint into the same MLflow run.

At the end: a table of the trials (printed by the CLI, written as ``trials.csv`` beside
the sweep state and logged on the parent run), the best trial's model logged (a trial
that ran to the end logged it already) and, with ``register``, a new registered version
tagged with the sweep, the trial and the metric.
"""

from __future__ import annotations

import csv
import math
import os
import tempfile
from pathlib import Path

from music_gen.config import Config, build_config
from music_gen.errors import ConfigError, MusicGenError, UsageError
from music_gen.models import formats
from music_gen.platform import tracking
from music_gen.tune import space

SWEEP_TAG = "music_gen.sweep"
TRIAL_TAG = "music_gen.trial"
TABLE_FILE = "trials.csv"


def run_trial(params: dict, *, base: dict, sweep: str, storage: str, parent_run_id: str) -> None:
    """One trial, in its Tune actor: the sweep's config with ``params``, trained to the
    end or until ASHA stops it (Tune then ends this actor and the trainer it owns)."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from music_gen.pipelines.train import train

    trial_id = tune.get_context().get_trial_id()
    cfg = space.apply_params(build_config(base), params)
    cfg.train.name = f"{sweep}-{trial_id}"
    cfg.train.storage = storage
    train(cfg, callbacks=[TuneReportCallback()], parent_run_id=parent_run_id)


def release_orphaned_placement_groups() -> int:
    """Remove placement groups whose creating actor is dead; returns how many.

    When ASHA (or an interrupted sweep) ends a trial, Tune kills its actor and with it
    the trial's Train controller, but not the controller's worker placement group: Ray
    frees a group only when its creator's job ends too, and Train V2's detached cleaner
    asks the dashboard's state API, which our local clusters do not run. Left alone,
    every stopped trial would keep its workers' CPUs reserved until the sweep ends, and
    a small cluster would stall. Ray's GCS table says which groups are orphaned.
    """
    from ray._private.state import state  # the GCS table; no public API has the creator
    from ray._raylet import ActorID, PlacementGroupID
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup, remove_placement_group

    removed = 0
    for raw in state._connect_and_get_accessor().get_placement_group_table():
        info = gcs_pb2.PlacementGroupTableData.FromString(raw)
        if (
            info.is_detached
            or info.state == gcs_pb2.PlacementGroupTableData.REMOVED
            or ActorID(info.creator_actor_id).is_nil()  # made by a driver: its job's
            or not info.creator_actor_dead
        ):
            continue
        remove_placement_group(PlacementGroup(PlacementGroupID(info.placement_group_id)))
        removed += 1
    return removed


def _release_callback():
    """A Tune callback that releases stopped trials' worker reservations (see above)."""
    import time

    from ray import tune

    class ReleaseStoppedTrials(tune.Callback):
        def __init__(self, every_s: float = 2.0):
            self.every_s, self.last = every_s, 0.0

        def on_step_end(self, iteration, trials, **info):
            if time.monotonic() - self.last >= self.every_s:
                self.last = time.monotonic()
                release_orphaned_placement_groups()

    return ReleaseStoppedTrials()


def _ensure_ray() -> None:
    from music_gen.platform.cluster import ensure_ray

    ensure_ray()


def trial_resources(cfg: Config) -> dict[str, float]:
    """What one trial holds while it trains: its own sliver plus the trainer's workers."""
    tc = cfg.train
    need = {"CPU": cfg.tune.trial_cpus + tc.num_workers * tc.cpus_per_worker}
    if tc.use_gpu:
        need["GPU"] = tc.num_workers * tc.gpus_per_worker
    return need


def concurrency(cfg: Config, total: dict[str, float]) -> int:
    """Trials at once: ``tune.max_concurrent_trials``, else as many as the cluster holds
    beside ``tune.data_cpus`` for Ray Data. A trial that cannot fit at all is an error."""
    need = trial_resources(cfg)
    for resource, amount in need.items():
        if total.get(resource, 0) < amount:
            raise ConfigError(
                f"a trial needs {amount:g} {resource} (train.num_workers={cfg.train.num_workers} "
                f"x per-worker share + tune.trial_cpus={cfg.tune.trial_cpus:g}), the cluster has "
                f"{total.get(resource, 0):g}"
            )
    if cfg.tune.max_concurrent_trials is not None:
        return cfg.tune.max_concurrent_trials
    fits = [
        (total.get(r, 0) - (cfg.tune.data_cpus if r == "CPU" else 0)) / amount
        for r, amount in need.items()
    ]
    return max(1, min(math.floor(f + 1e-9) for f in fits))


def _absolute(path: str) -> str:
    return path if "://" in path else str(Path(path).expanduser().resolve())


def check(cfg: Config) -> dict:
    """Everything that can be checked before Ray starts: the space and the metric."""
    parsed = space.parse_space(cfg)
    space.check_metric(cfg.tune.metric)
    if not cfg.data.output:
        raise UsageError("give the tokenized dataset: --data DIR (or data.output)")
    if cfg.tune.max_t is not None and cfg.tune.max_t > cfg.train.steps:
        raise ConfigError(f"tune.max_t={cfg.tune.max_t} exceeds train.steps={cfg.train.steps}")
    return parsed


def _parent_run(client, cfg: Config, storage: str) -> str:
    """The sweep's MLflow run: the one of this sweep name and storage, or a new one."""
    exp = tracking.experiment_id(client, cfg.train.experiment)
    query = (
        f"tags.`{SWEEP_TAG}` = '{cfg.tune.name}' and tags.`{tracking.STORAGE_TAG}` = '{storage}'"
    )
    found = client.search_runs([exp], filter_string=query, max_results=1)
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    tags = {SWEEP_TAG: cfg.tune.name, tracking.STORAGE_TAG: storage}
    run = client.create_run(exp, run_name=f"sweep {cfg.tune.name}", tags=tags)
    from mlflow.entities import Param

    params = {f"tune.{k}": v for k, v in tracking.flatten(cfg.tune.model_dump(mode="json")).items()}
    batch = [Param(k, v) for k, v in params.items()]
    for start in range(0, len(batch), 100):
        client.log_batch(run.info.run_id, params=batch[start : start + 100])
    return run.info.run_id


def _tuner(cfg: Config, parsed: dict, storage: str, parent_run_id: str, callbacks=()):
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Tune's own progress tables would bury ours (the CLI prints a table at the end).
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    tc = cfg.tune
    base = cfg.model_dump(mode="json")
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, base=base, sweep=tc.name, storage=os.path.join(storage, tc.name, "trials"),
            parent_run_id=parent_run_id,
        ),
        {"CPU": tc.trial_cpus},
    )  # fmt: skip
    path = os.path.join(storage, tc.name)
    if tune.Tuner.can_restore(path):
        # Finished trials stay finished; unfinished and errored ones run again (resuming
        # their training from its last checkpoint).
        return tune.Tuner.restore(path, trainable, resume_errored=True)
    param_space = space.to_grid(parsed) if tc.search == "grid" else space.to_tune(parsed)
    scheduler = ASHAScheduler(
        time_attr="step",
        # One past the last step: ASHA stops a trial that reaches max_t, and a trial
        # stopped at its last report would die before training logs its model.
        max_t=(tc.max_t or cfg.train.steps) + 1,
        grace_period=tc.grace_period,
        reduction_factor=tc.reduction_factor,
    )
    tune_config = tune.TuneConfig(
        metric=tc.metric,
        mode=tc.mode,
        num_samples=tc.num_samples,
        scheduler=scheduler,
        # The generator limits concurrency itself (Tune ignores max_concurrent_trials
        # when it is given a generator, and would start every trial at once).
        search_alg=BasicVariantGenerator(
            random_state=tc.seed, max_concurrent=concurrency(cfg, ray.cluster_resources())
        ),
    )
    run_config = tune.RunConfig(
        name=tc.name, storage_path=storage, verbose=0,
        callbacks=[_release_callback(), *callbacks],
    )  # fmt: skip
    return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config,
                      run_config=run_config)  # fmt: skip


def sweep(cfg: Config, *, register: str | None = None, callbacks=()) -> dict:
    """Run (or resume) the sweep ``cfg.tune.name``; returns its summary.

    ``callbacks``: extra Ray Tune callbacks (tests interrupt a sweep with one).
    Summary keys: ``rows`` (the table), ``table`` (CSV path), ``parent_run_id``,
    ``best`` (the best row), ``model_uri``, ``registered``, ``interrupted``.
    """
    from music_gen.pipelines.train import plan_run, with_absolute_paths

    parsed = check(cfg)
    cfg = with_absolute_paths(cfg)
    plan_run(cfg)  # the dataset and codec, checked before any trial starts
    storage = _absolute(cfg.tune.storage)
    _ensure_ray()
    import ray

    concurrency(cfg, ray.cluster_resources())  # a trial that cannot fit fails here
    store = tracking.tracking_uri(cfg.train.tracking_uri)
    with tracking.shared_tracking(store) as uri:
        cfg = cfg.model_copy(deep=True)
        cfg.train.tracking_uri = uri
        client = tracking.client(uri)
        parent = _parent_run(client, cfg, storage)
        try:
            results = _tuner(cfg, parsed, storage, parent, callbacks).fit()
            release_orphaned_placement_groups()  # what the last stopped trials left
            summary = _finish(cfg, client, parent, results, storage, register)
        except BaseException:
            client.set_terminated(parent, status="KILLED")
            raise
        client.set_terminated(parent, status="KILLED" if summary["interrupted"] else "FINISHED")
    summary["tracking_uri"] = store  # not the sweep's server, which has stopped
    return summary


def _finish(cfg: Config, client, parent: str, results, storage: str, register: str | None):
    """The table, the children's final states, the best model (and its registration)."""
    rows = _rows(cfg, client, parent, results)
    table = Path(storage) / cfg.tune.name / TABLE_FILE
    write_table(rows, table)
    client.log_artifact(parent, str(table))
    interrupted = any(row["status"] not in ("TERMINATED", "ERROR") for row in rows)
    summary = {"rows": rows, "table": str(table), "parent_run_id": parent, "best": None,
               "model_uri": None, "registered": None, "interrupted": interrupted,
               "tracking_uri": client.tracking_uri}  # fmt: skip
    if interrupted:
        return summary
    scored = [r for r in rows if r["best_metric"] is not None]
    if not scored:
        errors = [r["error"] for r in rows if r["error"]]
        detail = f": {errors[0]}" if errors else ""
        raise MusicGenError(f"no trial reported tune.metric '{cfg.tune.metric}'{detail}")
    sign = 1 if cfg.tune.mode == "min" else -1
    best = min(scored, key=lambda r: sign * r["best_metric"])
    model_uri = _best_model(client, best)
    client.log_metric(parent, f"best_{cfg.tune.metric}", best["best_metric"])
    client.set_tag(parent, "best_trial", best["trial_id"])
    client.set_tag(parent, "best_model", model_uri)
    summary.update(best=best, model_uri=model_uri)
    if register:
        summary["registered"] = _register(client, cfg, register, parent, best, model_uri)
    return summary


def _register(client, cfg: Config, name: str, parent: str, best: dict, model_uri: str) -> str:
    """A new version of ``name`` for the best trial, tagged with sweep, trial and metric
    (a re-run of a finished sweep finds the version it registered before)."""
    from mlflow.exceptions import MlflowException

    from music_gen.platform import registry

    try:
        for version in client.search_model_versions(f"name = '{name}'"):
            tags = version.tags
            if (
                tags.get("sweep.parent_run") == parent
                and tags.get("sweep.trial") == best["trial_id"]
            ):
                return f"models:/{name}/{version.version}"
    except MlflowException:
        pass  # no such model yet
    tags = {"sweep": cfg.tune.name, "sweep.trial": best["trial_id"],
            "sweep.metric": cfg.tune.metric, "sweep.parent_run": parent,
            f"sweep.best_{cfg.tune.metric}": repr(best["best_metric"])}  # fmt: skip
    version = registry.register_model(
        model_uri, name, tracking_uri=client.tracking_uri, run_id=best["run_id"], tags=tags
    )
    return f"models:/{name}/{version}"


def _rows(cfg: Config, client, parent: str, results) -> list[dict]:
    children = _children(client, parent)
    metric, steps = cfg.tune.metric, cfg.train.steps
    sweep_dir = os.path.join(_absolute(cfg.tune.storage), cfg.tune.name)
    status = saved_status(sweep_dir)
    trials_dir = os.path.join(sweep_dir, "trials")
    sign = 1 if cfg.tune.mode == "min" else -1
    rows = []
    for result in results:
        last = result.metrics or {}
        trial_id = last.get("trial_id") or Path(result.path).name
        config = result.config or {}
        run = children.get(f"{cfg.tune.name}-{trial_id}")
        values, step = _reported(result, metric, client, run)
        rows.append({
            "trial_id": trial_id,
            **{key: config.get(key) for key in cfg.tune.search_space},
            "best_metric": min(values, key=lambda v: sign * v) if values else None,
            "steps": step,
            "status": status.get(trial_id, "TERMINATED"),
            "stopped_early": status.get(trial_id, "TERMINATED") == "TERMINATED"
            and result.error is None
            and step < steps,
            "error": _one_line(result.error) if result.error else "",
            "run_id": run.info.run_id if run else "",
            "run_status": run.info.status if run else "",
            "checkpoint": _latest_checkpoint(trials_dir, f"{cfg.tune.name}-{trial_id}")
            or last.get("checkpoint_path")
            or "",
        })  # fmt: skip
        if run and rows[-1]["stopped_early"] and run.info.status == "RUNNING":
            # ASHA ended its actor before training could close its run.
            client.set_tag(run.info.run_id, "stopped_early", "true")
            client.set_terminated(run.info.run_id, status="KILLED")
            rows[-1]["run_status"] = "KILLED"
    return sorted(rows, key=lambda r: r["trial_id"])


def _reported(result, metric: str, client, run) -> tuple[list[float], int]:
    """The trial's values of ``metric`` and the last step it reported.

    Tune's record first. It came back empty once in CI for a trial of a resumed sweep
    (Tune rebuilds it from the trial's result files and gives an empty table when it
    cannot read them); training logs the same values, at the same steps, to the trial's
    MLflow run, which then answers."""
    history = result.metrics_dataframe
    values = []
    if history is not None and metric in history:
        values = [float(v) for v in history[metric].dropna()]
    last = result.metrics or {}
    step = int(last["step"]) if last.get("step") is not None else 0
    if values or run is None:
        return values, step
    logged = client.get_metric_history(run.info.run_id, metric)
    finite = [m.value for m in logged if math.isfinite(m.value)]
    return finite, max([step, *(m.step for m in logged)])


def saved_status(path: str) -> dict[str, str]:
    """Each trial's status as the sweep's saved state has it: TERMINATED, ERROR, or (the
    sweep was interrupted) PENDING/RUNNING/PAUSED. Tune saves it before it stops the
    running trials, so this tells an interrupted trial from one that ASHA stopped."""
    from ray.tune import ExperimentAnalysis

    return {trial.trial_id: trial.status for trial in ExperimentAnalysis(path).trials}


def _children(client, parent: str) -> dict:
    """The parent's nested runs by training run name."""
    run = client.get_run(parent)
    query = f"tags.mlflow.parentRunId = '{parent}'"
    children = client.search_runs([run.info.experiment_id], filter_string=query, max_results=1000)
    return {child.data.tags.get(tracking.RUN_NAME_TAG): child for child in children}


def _latest_checkpoint(trials_dir: str, run_name: str) -> str | None:
    """The trial's newest complete checkpoint (Ray keeps the latest; reported paths of
    older ones may be gone); ``None`` on remote storage, where the reported path is used."""
    run_dir = Path(trials_dir) / run_name
    if "://" in trials_dir or not run_dir.is_dir():
        return None
    done = sorted(p for p in run_dir.glob("checkpoint_*") if (p / formats.FORMAT_FILE).is_file())
    return str(done[-1]) if done else None


def _one_line(error) -> str:
    lines = [line for line in str(error).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(error).__name__


def _best_model(client, best: dict) -> str:
    """The best trial's logged model: the one training logged when the trial ran to the
    end, else its last checkpoint logged now into its run."""
    from music_gen.pipelines import checkpoints
    from music_gen.platform import registry

    uri = f"runs:/{best['run_id']}/{tracking.MODEL_NAME}"
    if best["run_id"]:
        resolved = registry._logged_model_of_run(client, uri)
        if resolved.startswith("models:/"):
            return resolved
    if not best["checkpoint"] or not best["run_id"]:
        raise MusicGenError(f"trial {best['trial_id']} left no checkpoint to log")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = checkpoints.export_model(_local(best["checkpoint"], tmp), Path(tmp) / "model")
        return tracking.log_model(client.tracking_uri, best["run_id"], model_dir)["model_uri"]


def _local(checkpoint: str, tmp: str) -> Path:
    """A checkpoint directory on this machine (a remote one copied into ``tmp``)."""
    if "://" not in checkpoint:
        return Path(checkpoint)
    import pyarrow.fs as pafs

    fs, path = pafs.FileSystem.from_uri(checkpoint)
    local = Path(tmp) / "checkpoint"
    pafs.copy_files(path, str(local), source_filesystem=fs)
    return local


def write_table(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0]) if rows else ["trial_id"]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return path


def format_table(rows: list[dict], cfg: Config) -> str:
    """The trials as aligned text: parameters, best metric, steps, stopped early."""
    keys = list(cfg.tune.search_space)
    header = ["trial", *keys, f"best {cfg.tune.metric}", "steps", "early", "status"]
    lines = [header]
    for row in rows:
        status = "error" if row["error"] else ("stopped" if row["stopped_early"] else "done")
        if row["status"] not in ("TERMINATED", "ERROR"):
            status = "unfinished"
        best = f"{row['best_metric']:.4f}" if row["best_metric"] is not None else "-"
        lines.append([row["trial_id"], *(_short(row.get(k)) for k in keys), best,
                      str(row["steps"]), "yes" if row["stopped_early"] else "no", status])  # fmt: skip
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in lines
    )


def _short(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
