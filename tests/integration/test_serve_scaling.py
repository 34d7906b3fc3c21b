"""Autoscaling 1 -> 2 -> 1 replicas under load, and a replica killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from tests.integration.test_serve import audible_model, start_app, stop_app

pytestmark = [pytest.mark.integration, pytest.mark.slow]
APP = "scale"


@pytest.fixture(scope="module")
def app_url(ray_cluster, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("scale") / "ckpt"
    audible_model().save_pretrained(checkpoint)
    url = start_app(
        APP,
        model=str(checkpoint),
        num_cpus=0.5,
        ingress_num_cpus=0,
        max_batch_size=2,
        batch_wait_timeout_s=0.0,
        max_duration=4,
        heartbeat_s=0.5,
        autoscaling_config={
            "min_replicas": 1,
            "max_replicas": 2,
            "target_ongoing_requests": 1,
            "upscale_delay_s": 1,
            "downscale_delay_s": 3,
            "metrics_interval_s": 0.5,
            "look_back_period_s": 1,
        },
    )
    yield url
    stop_app(APP)


def running_replicas() -> int:
    from ray import serve

    deployment = serve.status().applications[APP].deployments["Generator"]
    return deployment.replica_states.get("RUNNING", 0)


def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.5)
    return False


def generate(url: str, duration: float = 0.3) -> requests.Response:
    return requests.post(
        f"{url}/generate", json={"prompt": "load", "duration": duration}, timeout=120
    )


def test_sustained_load_scales_up_and_back(app_url):
    assert running_replicas() == 1
    stop = threading.Event()
    statuses: list[int] = []

    def load():
        while not stop.is_set():
            statuses.append(generate(app_url, 2.0).status_code)

    threads = [threading.Thread(target=load) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        scaled_up = wait_for(lambda: running_replicas() == 2, 120)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert scaled_up
    assert statuses and set(statuses) == {200}, statuses
    assert wait_for(lambda: running_replicas() == 1, 120)
    assert generate(app_url).status_code == 200


def replica_pid(url: str) -> int:
    """The PID the replica reports, checked against Ray's actor table (GCS).

    ``ray.util.state`` needs the dashboard, which the test cluster does not start, so the
    check reads the GCS actor table that backs it.
    """
    from ray._private import state

    replicas = requests.get(f"{url}/models", timeout=30).json()["replicas"]
    assert len(replicas) == 1
    pid = replicas[0]["pid"]
    ours = {
        actor["Pid"]
        for actor in state.actors().values()
        if actor["State"] == "ALIVE" and actor["ActorClassName"].endswith(f":{APP}:Generator")
    }
    assert pid in ours, (pid, ours)
    return pid


def test_killed_replica_is_replaced(app_url):
    assert wait_for(lambda: running_replicas() == 1, 60)
    assert wait_for(lambda: len(requests.get(f"{app_url}/models").json()["replicas"]) == 1, 30)
    pid = replica_pid(app_url)
    os.kill(pid, signal.SIGKILL)

    def serving_again() -> bool:
        replicas = requests.get(f"{app_url}/models", timeout=30).json()["replicas"]
        fresh = [r for r in replicas if r["pid"] != pid]
        return bool(fresh) and generate(app_url).status_code == 200

    assert wait_for(serving_again, 120)
    assert replica_pid(app_url) != pid
