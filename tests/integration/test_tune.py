"""`music-gen tune` on the session's Ray cluster (2 CPUs), on the MLflow store a cluster
runs (an ``mlflow server`` on PostgreSQL; sqlite where the machine has no PostgreSQL).

One sweep costs minutes on two cores, so it runs on one store: the embedded sqlite store
sweeps in test_demo (the laptop default) and in test_multinode (trials on two nodes).
One sweep: 4 trials (a grid of a hopeless and a good learning rate, twice)
of a tiny model, 2 at a time. The sweep is interrupted after three trials end
(SIGUSR1, Tune's own graceful stop) and re-run: finished trials are not re-run, the last
completes, ASHA stops the weak ones early, every trial's run is nested under the sweep's
with every metric it reported, and the best model is registered and generates audio.
"""

import os
import signal

import pytest
from ray import tune

from music_gen import MusicGen
from music_gen.cli import main
from music_gen.config import load_config
from music_gen.platform import registry, tracking
from music_gen.tune.sweep import SWEEP_TAG, sweep
from tests.integration.stores import cluster_store, postgres_server, postgres_uri, use_store  # noqa: F401
from tests.integration.test_train import TINY, data_dir  # noqa: F401  (the tiny dataset)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEPS = 6


@pytest.fixture(scope="module", params=[cluster_store()])
def store(request, tmp_path_factory):
    work = tmp_path_factory.mktemp(f"work-{request.param}")
    patch = use_store(request, request.param, work)
    yield request.param, work
    patch.undo()


def sweep_config(data, work, *overrides):
    cfg = load_config(
        overrides=[
            *TINY, "train.num_workers=1", f"train.steps={STEPS}", "train.checkpoint_every=2",
            "train.eval_every=6", "train.eval_samples=0", "train.log_every=2",
            "train.segment_curriculum={0: 0.5}", "tune.search=grid", "tune.num_samples=2",
            "tune.grace_period=2", "tune.reduction_factor=2", "tune.name=grid",
            "tune.search_space={train.lr: {grid: [1.0e-6, 3.0e-3]}}", *overrides,
        ]
    )  # fmt: skip
    cfg.data.output = data
    cfg.tune.storage = str(work / "tune")
    cfg.train.experiment = "test-tune"
    return cfg


class InterruptAfterTrials(tune.Callback):
    """Sends this process SIGUSR1 (Tune's graceful stop) when ``count`` trials have ended.

    Three of four: ASHA keeps no state across a resume (Ray saves the searcher, not the
    scheduler), so the early stop is seen before the interruption; the fourth trial
    is running then and resumes. Tune restores its callbacks with the sweep: a marker
    file keeps the restored copy quiet."""

    def __init__(self, marker, count: int = 3):
        self.marker, self.count, self.ended = str(marker), count, 0

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.ended += 1
        if self.ended >= self.count and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGUSR1)


def val_steps(client, run_id) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, "val_loss")}


@pytest.fixture(scope="module")
def swept(ray_cluster, store, data_dir):  # noqa: F811
    """The interrupted sweep, what it had finished, then the resumed sweep."""
    kind, work = store
    cfg = sweep_config(data_dir, work)
    interrupt = InterruptAfterTrials(work / "interrupted")
    first = sweep(cfg, register=f"tuned-{kind}", callbacks=[interrupt])
    client = tracking.client()
    finished = {
        row["trial_id"]: (row["run_id"], val_steps(client, row["run_id"]), row["steps"])
        for row in first["rows"]
        if row["status"] == "TERMINATED"
    }
    second = sweep(cfg, register=f"tuned-{kind}")
    return {"cfg": cfg, "first": first, "finished": finished, "second": second, "kind": kind}


def test_interrupted_sweep_resumes_without_rerunning_finished_trials(swept):
    first, second, finished = swept["first"], swept["second"], swept["finished"]
    assert first["interrupted"] and first["registered"] is None
    assert 1 <= len(finished) < 4 and any(row["stopped_early"] for row in first["rows"])
    assert not second["interrupted"] and len(second["rows"]) == 4
    assert all(row["status"] == "TERMINATED" and not row["error"] for row in second["rows"])
    client = tracking.client()
    rows = {row["trial_id"]: row for row in second["rows"]}
    for trial_id, (run_id, steps, reached) in finished.items():
        assert rows[trial_id]["run_id"] == run_id  # the same MLflow run, not a new one
        assert val_steps(client, run_id) == steps  # and nothing more logged into it
        assert rows[trial_id]["steps"] == reached
    assert second["parent_run_id"] == first["parent_run_id"]


def test_asha_stops_weak_trials_and_the_best_is_registered(swept):
    rows = swept["second"]["rows"]
    stopped = [row for row in rows if row["stopped_early"]]
    assert stopped and all(row["steps"] < STEPS for row in stopped)
    assert any(row["steps"] == STEPS and not row["stopped_early"] for row in rows)
    best = swept["second"]["best"]
    assert best["best_metric"] == min(row["best_metric"] for row in rows)
    assert best["train.lr"] == pytest.approx(3e-3)  # the hopeless rate never wins

    name, version = swept["second"]["registered"][len("models:/") :].split("/")
    shown = registry.show(f"{name}/{version}")
    assert shown["tags"]["sweep"] == "grid" and shown["tags"]["sweep.trial"] == best["trial_id"]
    assert shown["tags"]["sweep.metric"] == "val_loss"
    assert float(shown["metrics"]["val_loss"]) == pytest.approx(best["best_metric"], rel=1e-3)
    assert shown["run_id"] == best["run_id"]
    mg = MusicGen.from_pretrained(swept["second"]["registered"])
    audio = mg.generate(["a bell"], duration=0.3, seed=0)
    assert audio.ndim == 3 and audio.abs().sum() > 0


def test_parent_and_nested_trial_runs_lose_no_metric(swept):
    client = tracking.client()
    second = swept["second"]
    parent = client.get_run(second["parent_run_id"])
    assert parent.data.tags[SWEEP_TAG] == "grid" and parent.info.status == "FINISHED"
    assert parent.data.metrics["best_val_loss"] == pytest.approx(second["best"]["best_metric"])
    artifacts = [a.path for a in client.list_artifacts(parent.info.run_id)]
    assert "trials.csv" in artifacts
    query = f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    children = client.search_runs([parent.info.experiment_id], filter_string=query)
    assert sorted(c.info.run_id for c in children) == sorted(r["run_id"] for r in second["rows"])
    for row in second["rows"]:
        child = client.get_run(row["run_id"])
        assert float(child.data.params["train.lr"]) == pytest.approx(row["train.lr"])
        # Every checkpoint report Tune saw is in MLflow: val_loss at 2, 4, ... steps (a
        # trial ASHA stops may log one more before its actor is gone).
        assert set(val_steps(client, row["run_id"])) >= set(range(2, row["steps"] + 1, 2))
        # A trial ASHA stops is KILLED in MLflow; under load its training can reach the last
        # step before Tune's stop lands (Tune then still calls it stopped early): FINISHED,
        # and then its run holds the last step's metric.
        expected = ("KILLED", "FINISHED") if row["stopped_early"] else ("FINISHED",)
        assert child.info.status in expected, (row, child.info.status)
        if child.info.status == "FINISHED":
            assert max(val_steps(client, row["run_id"])) == STEPS, row
    # Two trials ran at the same time at some point (2 fit on the 2-CPU cluster).
    spans = sorted((c.info.start_time, c.info.end_time or 0) for c in children)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    with open(second["table"]) as handle:
        assert len(handle.read().strip().splitlines()) == 5  # header + 4 trials


def test_trial_too_big_for_the_cluster_is_one_line(swept, data_dir, store, capsys):  # noqa: F811
    _, work = store
    before = tracking.client().search_runs(
        [tracking.experiment_id(tracking.client(), "test-tune")], max_results=1000
    )
    code = main(
        ["tune", "--data", data_dir, *TINY, "train.num_workers=2", "train.cpus_per_worker=1.5",
         "tune.search_space={train.lr: {choice: [1.0e-3]}}", f"tune.storage={work / 'big'}",
         "train.experiment=test-tune"]
    )  # fmt: skip
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code != 0 and len(err) == 1 and "a trial needs 3.05 CPU" in err[0]
    after = tracking.client().search_runs(
        [tracking.experiment_id(tracking.client(), "test-tune")], max_results=1000
    )
    assert len(after) == len(before)  # no parent run was made
