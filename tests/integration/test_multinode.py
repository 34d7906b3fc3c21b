"""More than one Ray node on this machine: the commands join a multi-node cluster
(``ray.cluster_utils.Cluster``: a head and three worker raylets, one CPU each) through
``RAY_ADDRESS``, as a user's command joins a real cluster. `data tokenize` runs its
encoder actors on two nodes, `serve` its replicas on two nodes and `tune` its trials on
two nodes (where they ran is read back from Ray's state API); `train` spreads its two workers over two nodes. The node that holds rank 0 (the one that writes the checkpoints) is then
removed mid-run: the run goes on from its last checkpoint on the nodes that remain,
which read a checkpoint another node wrote, and says where it resumed.

The cluster is separate from the session's single-node one (it is driven by a
subprocess, the CLI), so the other modules are unaffected.
"""

import concurrent.futures as cf
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
import requests
from ray.cluster_utils import Cluster
from ray.util.state import list_actors, list_workers

from music_gen.cli import main
from music_gen.pipelines import shards
from tests.integration.test_serve import audible_model, free_port
from tests.integration.test_train import TINY, data_dir  # noqa: F401  (the tiny dataset)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START = re.compile(
    r"\[train\] (\d+) worker\(s\) on (\d+) node\(s\) \(rank 0 on (\w+)\).*?(from step 0|resuming at step (\d+))"
)
# Lost nodes are noticed within seconds, not Ray's default half minute.
STEPS = 40
FAST_HEALTH_CHECKS = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


@pytest.fixture(scope="module")
def cluster():
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "_system_config": FAST_HEALTH_CHECKS},
    )
    nodes = [cluster.add_node(num_cpus=1) for _ in range(3)]
    yield cluster, nodes
    cluster.shutdown()


def joined(ray_cluster, tmp_path) -> dict[str, str]:
    """The environment of a command that joins ``ray_cluster``, with a private work dir."""
    env = dict(os.environ, RAY_ADDRESS=ray_cluster.address, MUSIC_GEN_WORK_DIR=str(tmp_path))
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def actor_nodes(ray_cluster, fragment: str, count: int, wait_s: float = 20.0) -> set[str]:
    """Nodes on which actors whose class name contains ``fragment`` ran (alive or not).

    The state API can leave a dead actor's node empty (seen in CI and locally: one of two
    encoder actors, both DEAD once the job ended, had a pid but no node id). Such an actor's
    node is then read from the worker table by its pid. Polls for up to ``wait_s`` until
    ``count`` nodes show; a failure lists what it saw."""
    deadline = time.monotonic() + wait_s
    while True:
        actors = list_actors(address=ray_cluster.address, detail=True, limit=10_000)
        matching = [a for a in actors if fragment in a.class_name]
        workers = list_workers(address=ray_cluster.address, detail=True, limit=10_000)
        node_of_pid = {w.pid: w.node_id for w in workers if w.node_id}
        nodes = {a.node_id or node_of_pid.get(a.pid) for a in matching} - {None}
        if len(nodes) >= count or time.monotonic() > deadline:
            assert len(nodes) == count, [(a.state, a.node_id, a.pid) for a in matching]
            return nodes
        time.sleep(1.0)


def test_tokenization_spreads_encoders_over_nodes(cluster, tmp_path):
    ray_cluster, _ = cluster
    audio, codec, tokens = tmp_path / "audio", tmp_path / "codec", tmp_path / "tokens"
    assert (
        main(["data", "synth", "--output", str(audio), "--num-clips", "8", "--seconds", "1"]) == 0
    )
    calibrate = ["codec", "calibrate", "--input", str(audio), "--output", str(codec)]
    assert main([*calibrate, "--max-seconds", "8", "codec.cardinality=64"]) == 0
    # An encoder asks for a whole CPU, which is all a node has, so the two must run on two
    # nodes. (SPREAD alone is best effort: with half a CPU each, CI once found both on one
    # node.) The decode tasks take what is left.
    command = [
        sys.executable, "-m", "music_gen.cli", "data", "tokenize", "--input", str(audio),
        "--output", str(tokens), "--codec", str(codec), "--no-progress",
        "data.num_actors=2", "data.encode_num_cpus=1", "data.decode_num_cpus=0.25",
        "data.segment_seconds=1", "data.files_per_shard=2", "data.batch_size=2",
    ]  # fmt: skip
    run = subprocess.run(
        command, env=joined(ray_cluster, tmp_path), capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [r for path in shards.shard_paths(str(tokens)) for r in pq.read_table(path).to_pylist()]
    assert len(rows) == 8 and json.loads((tokens / "summary.json").read_text())
    actor_nodes(ray_cluster, "CodecEncoder", 2)


def test_serve_replicas_on_different_nodes(cluster, tmp_path):
    ray_cluster, _ = cluster
    checkpoint = audible_model().save_pretrained(tmp_path / "ckpt")
    port = free_port()
    command = [
        sys.executable, "-m", "music_gen.cli", "serve", "--model", str(checkpoint),
        "--port", str(port), "serve.num_replicas=2", "serve.num_cpus=1",
        "serve.ingress_num_cpus=0",
    ]  # fmt: skip
    process = subprocess.Popen(
        command,
        env=joined(ray_cluster, tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    watchdog = threading.Timer(300, process.kill)
    watchdog.start()
    try:
        for line in process.stdout:
            if line.startswith("Ctrl-C"):
                break
        url = f"http://127.0.0.1:{port}/generate"
        bodies = [{"prompt": f"spread {i}", "duration": 0.5, "seed": i} for i in range(4)]
        with cf.ThreadPoolExecutor(4) as pool:
            codes = list(pool.map(lambda b: requests.post(url, json=b, timeout=120), bodies))
        assert [r.status_code for r in codes] == [200] * 4
        # One CPU per replica: the two replicas hold two of the one-CPU nodes.
        replicas = {
            a.node_id
            for a in list_actors(address=ray_cluster.address, detail=True, limit=10_000)
            if a.class_name.startswith("ServeReplica:")
            and a.class_name.endswith(":Generator")
            and a.state == "ALIVE"
        }
        assert len(replicas) == 2, replicas
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=120) == 0
    finally:
        watchdog.cancel()
        if process.poll() is None:
            process.kill()
            process.wait()


def train_workers(ray_cluster) -> dict[str, str]:
    """Ray Train worker actors of the cluster (alive or dead): actor id -> node id."""
    actors = list_actors(address=ray_cluster.address, detail=True, limit=10_000)
    return {a.actor_id: a.node_id for a in actors if a.class_name == "RayTrainWorker"}


def test_tune_trials_run_on_both_nodes(cluster, data_dir, tmp_path):  # noqa: F811
    # Two 2-step trials at once, one worker of 0.9 CPU each: two cannot share a one-CPU
    # node, so side by side they run on two different nodes. (With a whole CPU each, the
    # trials' own processes, 0.05 CPU, could take two nodes and leave room for one worker.)
    ray_cluster, _ = cluster
    before = train_workers(ray_cluster)
    overrides = [o for o in TINY if not o.startswith("train.cpus_per_worker")]
    command = [
        sys.executable, "-m", "music_gen.cli", "tune", "--data", data_dir, "--name", "spread",
        *overrides, "train.cpus_per_worker=0.9", "train.num_workers=1", "train.steps=2",
        "train.checkpoint_every=2", "train.eval_every=2", "train.eval_samples=0",
        "tune.search=grid", "tune.num_samples=1", "tune.max_concurrent_trials=2",
        "tune.grace_period=2", "tune.search_space={train.lr: {grid: [1.0e-3, 3.0e-3]}}",
        f"tune.storage={tmp_path / 'tune'}",
    ]  # fmt: skip
    run = subprocess.run(
        command, env=joined(ray_cluster, tmp_path), capture_output=True, text=True, timeout=420
    )
    assert run.returncode == 0, run.stdout + run.stderr
    statuses = {"done", "stopped", "error", "unfinished"}  # the last column of the trial table
    ended = [w[-1] for w in map(str.split, run.stdout.splitlines()) if w and w[-1] in statuses]
    assert len(ended) == 2 and set(ended) <= {"done", "stopped"}, run.stdout
    workers = {k: v for k, v in train_workers(ray_cluster).items() if k not in before}
    assert len(workers) == 2 and len(set(workers.values())) == 2, workers


def node_to_remove(ray_cluster, nodes, writer: str):
    """The node of rank 0 (the checkpoint writer), unless the run's driver side lives there.

    Every raylet here shares one IP, so the command's driver attaches to any of them, and
    Train's controller and the progress relay follow it; losing that node ends the run
    as losing a cluster's head would. Then the node of the other rank goes instead.
    """
    actors = list_actors(address=ray_cluster.address, detail=True, limit=10_000)
    alive = [a for a in actors if a.state == "ALIVE"]
    driver = {a.node_id for a in alive if "Controller" in a.class_name or a.class_name == "_Lines"}
    ranks = {a.node_id for a in alive if a.class_name == "RayTrainWorker"}
    preferred = [n for n in nodes if n.node_id.startswith(writer)]
    others = [n for n in nodes if n.node_id in ranks and not n.node_id.startswith(writer)]
    return next(n for n in [*preferred, *others] if n.node_id not in driver)


def test_training_spreads_and_survives_losing_a_node(cluster, data_dir, tmp_path):  # noqa: F811
    ray_cluster, nodes = cluster
    env = joined(ray_cluster, tmp_path)
    overrides = [o for o in TINY if not o.startswith("train.cpus_per_worker")]
    command = [
        sys.executable, "-m", "music_gen.cli", "train", "--data", data_dir, "--name", "spread",
        *overrides, "train.cpus_per_worker=1", "train.num_workers=2", f"train.steps={STEPS}",
        "train.checkpoint_every=4", f"train.eval_every={STEPS}", "train.log_every=2",
        "train.eval_samples=0", "train.max_failures=2", f"train.storage={tmp_path / 'runs'}",
    ]  # fmt: skip
    run = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    watchdog = threading.Timer(480, run.kill)  # a hang fails the test instead of the suite
    watchdog.start()
    starts, lines, removed = [], [], None
    try:
        for line in run.stdout:
            lines.append(line.rstrip())
            if found := START.search(line):
                starts.append(found)
            if removed is None and "step 6/" in line:
                # Ray's controller takes a reported checkpoint in when it next polls
                # the workers (every 2 s): let it see the one of step 4 first.
                time.sleep(5)
                removed = node_to_remove(ray_cluster, nodes, starts[-1].group(3))
                ray_cluster.remove_node(removed)
        code = run.wait()
    finally:
        watchdog.cancel()
    output = "\n".join(lines)
    assert code == 0, output
    assert removed is not None and len(starts) == 2, output
    first, second = starts
    assert (first.group(1), first.group(2), first.group(4)) == ("2", "2", "from step 0"), output
    # Resumed from a checkpoint on the two nodes left (neither of which wrote it, when the
    # writer was the node removed).
    resumed = int(second.group(5) or 0)
    assert resumed > 0 and resumed % 4 == 0 and second.group(2) == "2", output
    if removed.node_id.startswith(first.group(3)):
        assert second.group(3) != first.group(3), output
    assert f"trained spread to step {STEPS} (resumed at step {resumed})" in output
