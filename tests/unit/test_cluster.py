"""Ray start-up: ensure_ray joins exactly the cluster the user means (ray.init mocked)."""

import os

import pytest

from music_gen.platform import cluster

pytestmark = pytest.mark.unit


@pytest.fixture
def calls(monkeypatch):
    import ray

    made = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: made.append(kwargs))
    # A private copy of the environment: what ensure_ray sets does not leak into other tests.
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env.pop(cluster.VERBOSE_ENV, None)
    monkeypatch.setattr(os, "environ", env)
    return made


def test_without_an_address_a_local_cluster_of_our_own_quietly(calls):
    cluster.ensure_ray(num_cpus=2)
    (kwargs,) = calls
    assert kwargs["address"] == "local" and kwargs["num_cpus"] == 2  # never another cluster
    assert kwargs["log_to_driver"] is False  # workers' output stays in Ray's log folder
    assert os.environ["RAY_AUTH_MODE"] == "token"  # token auth, said so: no warning


def test_ray_address_or_an_argument_is_joined(calls, monkeypatch):
    probed = []
    monkeypatch.setattr(cluster, "probe_address", probed.append)  # no such hosts here
    os.environ["RAY_ADDRESS"] = "ray://head:10001"
    cluster.ensure_ray()
    cluster.ensure_ray("10.0.0.1:6379")
    assert [c["address"] for c in calls] == ["ray://head:10001", "10.0.0.1:6379"]
    assert probed == ["ray://head:10001", "10.0.0.1:6379"]  # each checked before ray.init
    assert all("num_cpus" not in c for c in calls)  # Ray refuses them for existing clusters


def test_verbose_lets_ray_talk(calls):
    cluster.set_verbose(True)
    cluster.ensure_ray()
    assert calls[0]["log_to_driver"] is True


def test_a_request_the_local_cluster_cannot_meet_fails(monkeypatch):
    import ray

    from music_gen.errors import ConfigError

    monkeypatch.setattr(os, "environ", {})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    cluster.check_resources(2, 1.0)
    with pytest.raises(ConfigError, match="cpus_per_worker"):
        cluster.check_resources(3, 1.0)
    with pytest.raises(ConfigError, match="use_gpu"):
        cluster.check_resources(1, 0.5, use_gpu=True)


def test_an_address_with_nothing_listening_fails_at_once_before_ray_init(calls):
    import socket

    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    os.environ["RAY_ADDRESS"] = f"127.0.0.1:{port}"
    with pytest.raises(cluster.MusicGenError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        cluster.ensure_ray()
    assert calls == []  # Ray's 40 s of retries never started
