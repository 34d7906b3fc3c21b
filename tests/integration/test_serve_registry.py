"""Registry-backed serving: API keys, two registered models in one app, reload and
follow-alias after a promotion, all on a sqlite MLflow store the test writes."""

from __future__ import annotations

import os
import threading
import time

import pytest
import requests

from tests.integration.test_serve import audible_model, start_app, stop_app

pytestmark = pytest.mark.integration
KEY = "test-key-3f9c"


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """Models ``lead`` (versions 1 and 2) and ``lofi`` (1), both aliased ``production`` -> 1."""
    from mlflow import MlflowClient

    from music_gen.platform import tracking

    root = tmp_path_factory.mktemp("registry")
    env = {
        "MUSIC_GEN_WORK_DIR": str(root / "work"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}",
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    client = tracking.client()
    experiment = tracking.experiment_id(client, "serve-test")
    for name, seed in [("lead", 0), ("lead", 1), ("lofi", 2)]:
        model_dir = audible_model(seed).save_pretrained(root / f"{name}-{seed}")
        run = client.create_run(experiment)
        tracking.log_model(None, run.info.run_id, model_dir, register_as=name)
        client.set_terminated(run.info.run_id)
    client.set_registered_model_alias("lead", "production", "1")
    client.set_registered_model_alias("lofi", "production", "1")
    yield {"client": MlflowClient(), "env": env}
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="module")
def app_url(ray_cluster, registry, tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# one key a line\n{KEY}\n")
    url = start_app(
        "reg",
        model="models:/lead@production",
        models=["lofi@production", "lead/2"],
        api_keys_file=str(keys),
        env_vars=registry["env"],
        num_cpus=0.5,
        ingress_num_cpus=0,
        max_batch_size=4,
        batch_wait_timeout_s=0.05,
        max_duration=4,
        heartbeat_s=0.5,
        follow_alias_s=1.0,
    )
    yield url
    stop_app("reg")


def auth(key: str = KEY) -> dict:
    return {"Authorization": f"Bearer {key}"}


def generate(url: str, headers=None, **body) -> requests.Response:
    body = {"prompt": "a tune", "duration": 0.5, **body}
    return requests.post(f"{url}/generate", json=body, headers=headers, timeout=120)


def served(url: str) -> list[dict]:
    return requests.get(f"{url}/models", timeout=30).json()["replicas"]


def test_api_keys_guard_generation_and_admin_only(app_url):
    assert generate(app_url).status_code == 401
    assert generate(app_url, auth("wrong")).status_code == 401
    assert generate(app_url, {"Authorization": KEY}).status_code == 401  # no Bearer scheme
    stream = requests.post(f"{app_url}/generate/stream", json={"prompt": "x"}, timeout=30)
    assert stream.status_code == 401
    assert requests.post(f"{app_url}/admin/reload", timeout=30).status_code == 401
    # Authentication comes before validation: an anonymous bad body is still a 401.
    bad = requests.post(f"{app_url}/generate", json={"prompt": 3}, timeout=30)
    assert bad.status_code == 401 and KEY not in bad.text
    assert requests.get(f"{app_url}/healthz", timeout=30).status_code == 200
    assert requests.get(f"{app_url}/", timeout=30).status_code == 200
    response = generate(app_url, auth())
    assert response.status_code == 200, response.text
    assert response.headers["X-Model-Version"] == "lead/1"


def test_each_request_is_answered_by_the_model_it_named(app_url):
    answers = {
        None: "lead/1",
        "lofi@production": "lofi/1",
        "lead/2": "lead/2",
    }
    for model, version in answers.items():
        response = generate(app_url, auth(), model=model, seed=3)
        assert response.status_code == 200, response.text
        assert response.headers["X-Model-Version"] == version
    # Different weights, same seed and prompt: different audio.
    a = generate(app_url, auth(), seed=3).content
    b = generate(app_url, auth(), model="lofi@production", seed=3).content
    assert a != b
    missing = generate(app_url, auth(), model="lofi/7")
    assert missing.status_code == 404 and "lofi/7" in missing.json()["error"]
    multiplexed = {m for replica in served(app_url) for m in replica["multiplexed"]}
    assert {"lofi@production", "lead/2"} <= multiplexed or _wait_for_multiplexed(app_url)


def _wait_for_multiplexed(url: str) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if {"lofi@production", "lead/2"} <= {m for r in served(url) for m in r["multiplexed"]}:
            return True
        time.sleep(0.5)
    return False


def test_reload_after_alias_moves_fails_no_request(app_url, registry, monkeypatch, capsys):
    from music_gen.cli import main

    statuses, versions = [], []
    stop = threading.Event()

    def traffic():
        while not stop.is_set():
            response = generate(app_url, auth(), duration=0.3)
            statuses.append(response.status_code)
            versions.append(response.headers.get("X-Model-Version"))

    thread = threading.Thread(target=traffic)
    thread.start()
    try:
        time.sleep(1.0)
        registry["client"].set_registered_model_alias("lead", "production", "2")
        monkeypatch.setenv("MUSIC_GEN_API_KEY", KEY)
        assert main(["serve", "reload", "--url", app_url]) == 0
        assert "lead/2" in capsys.readouterr().out
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join()
    assert statuses and set(statuses) == {200}, statuses
    assert versions[0] == "lead/1" and versions[-1] == "lead/2"
    assert generate(app_url, auth()).headers["X-Model-Version"] == "lead/2"
    replica = served(app_url)[0]
    assert (replica["name"], replica["version"], replica["alias"]) == ("lead", "2", "production")
    assert replica["multiplexed"] == []  # named models are loaded afresh after a reload
    named = generate(app_url, auth(), model="lofi@production")
    assert named.status_code == 200 and named.headers["X-Model-Version"] == "lofi/1"


def test_follow_alias_picks_up_a_promotion_by_itself(app_url, registry):
    registry["client"].set_registered_model_alias("lead", "production", "1")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if served(app_url)[0]["version"] == "1":
            break
        time.sleep(0.5)
    assert served(app_url)[0]["version"] == "1"
    assert generate(app_url, auth()).headers["X-Model-Version"] == "lead/1"
