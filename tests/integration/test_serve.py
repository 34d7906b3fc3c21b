"""The HTTP app on a real Ray Serve, on loopback, with a tiny model written by the test.

One app for the whole module (starting one costs ~20 s on 2 cores). Other serve test
modules start their own app beside it through ``start_app``.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import socket
import time
from functools import cache

import pytest
import requests

from music_gen.audio import audio_info, read_audio
from music_gen.config import ServeConfig
from tests.helpers import tiny_model_config

pytestmark = pytest.mark.integration
SAMPLE_RATE = 16000  # the tiny codec's


@cache
def _codec():
    from music_gen.models.codebooks import tiny_calibrated_codec

    return tiny_calibrated_codec(num_codebooks=4, cardinality=64)


def audible_model(seed: int = 0):
    """A tiny model whose codec has calibrated codebooks, so different codes sound different
    (a random codec's codebooks are all zero: every clip would be the same)."""
    import torch

    from music_gen import MusicGen

    torch.manual_seed(seed)
    return MusicGen.from_config(tiny_model_config(), _codec())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@cache
def serve_port() -> int:
    """Start Serve's HTTP proxy once per cluster, on a free loopback port."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return port


def start_app(name: str, **fields) -> str:
    """Run app ``name`` under ``/name`` with ``ServeConfig(**fields)``; its base URL."""
    from ray import serve

    from music_gen.serve.app import build

    port = serve_port()
    cfg = ServeConfig(app_name=name, route_prefix=f"/{name}", **fields)
    serve.run(build(cfg), name=name, route_prefix=cfg.route_prefix, blocking=False)
    return f"http://127.0.0.1:{port}/{name}"


def stop_app(name: str) -> None:
    from ray import serve

    from music_gen.serve.board import drop_board

    serve.delete(name)
    drop_board(name)


def post(url: str, body=None, **kwargs) -> requests.Response:
    return requests.post(url, json=body, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def app_url(ray_cluster, tmp_path_factory):
    checkpoint = tmp_path_factory.mktemp("serve") / "ckpt"
    audible_model().save_pretrained(checkpoint)
    url = start_app(
        "main",
        model=str(checkpoint),
        num_cpus=0.5,
        ingress_num_cpus=0,
        max_batch_size=8,
        batch_wait_timeout_s=0.25,
        max_ongoing_requests=8,
        max_queued_requests=8,
        max_duration=8,
        max_body_bytes=4096,
        stream_chunk_seconds=0.5,
        heartbeat_s=0.5,
    )
    yield url
    stop_app("main")


def concurrently(url: str, bodies: list[dict]) -> list[requests.Response]:
    with cf.ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda body: post(f"{url}/generate", body), bodies))


@pytest.mark.parametrize(
    "fmt,content_type", [("wav", "audio/wav"), ("flac", "audio/flac"), ("ogg", "audio/ogg")]
)
def test_each_format_is_a_playable_file_of_the_duration(app_url, fmt, content_type):
    response = post(f"{app_url}/generate", {"prompt": "lofi piano", "duration": 1.5, "format": fmt})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type
    info = audio_info(response.content)
    assert info.format == fmt
    assert info.duration == pytest.approx(1.5, abs=0.021)  # whole codec frames (20 ms)
    audio, rate = read_audio(io.BytesIO(response.content))
    assert rate == SAMPLE_RATE and audio.shape[-1] == info.frames
    assert float(response.headers["X-Generation-Seconds"]) > 0
    assert response.headers["X-Model-Version"].endswith("ckpt")
    assert int(response.headers["X-Seed"]) >= 0


def test_mp3_is_playable(app_url):
    response = post(f"{app_url}/generate", {"prompt": "lofi", "duration": 2.0, "format": "mp3"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/mpeg"
    audio, rate = read_audio(response.content)
    # MP3 encoders pad the start and end a little.
    assert audio.shape[-1] / rate == pytest.approx(2.0, abs=0.1)


def test_concurrent_requests_are_batched(app_url):
    bodies = [{"prompt": f"song {i}", "duration": 0.5 + 0.1 * i, "seed": i} for i in range(8)]
    responses = concurrently(app_url, bodies)
    assert [r.status_code for r in responses] == [200] * 8, [r.text[:80] for r in responses]
    batches = {r.headers["X-Batch-Id"] for r in responses}
    assert len(batches) < 8, batches
    assert max(int(r.headers["X-Batch-Size"]) for r in responses) > 1
    # Each row was cut to its own duration.
    for body, response in zip(bodies, responses, strict=True):
        assert audio_info(response.content).duration == pytest.approx(body["duration"], abs=0.021)


def test_seeded_request_same_alone_and_in_a_batch(app_url):
    # Batch-mates of the same length and top-k: see generate_batch for why these matter.
    body = {"prompt": "a seeded tune", "duration": 1.0, "seed": 1234}
    alone = post(f"{app_url}/generate", body)
    assert alone.status_code == 200 and alone.headers["X-Batch-Size"] == "1"
    for _ in range(3):  # until the request shares its batch (arrival times vary)
        others = [{"prompt": f"other {i}", "duration": 1.0, "seed": i} for i in range(5)]
        responses = concurrently(app_url, [*others, body])
        ours = responses[-1]
        if int(ours.headers["X-Batch-Size"]) > 1:
            break
    assert int(ours.headers["X-Batch-Size"]) > 1
    assert ours.headers["X-Seed"] == "1234"
    assert ours.content == alone.content
    # Not trivially equal: another seed, or another prompt in the batch, sounds different.
    assert post(f"{app_url}/generate", {**body, "seed": 1235}).content != alone.content
    assert all(r.content[44:] != ours.content[44:] for r in responses[:-1])


def test_stream_sends_chunks_that_join_to_the_duration(app_url):
    body = {"prompt": "streaming", "duration": 2.0, "seed": 5}
    with requests.post(f"{app_url}/generate/stream", json=body, stream=True, timeout=120) as r:
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "audio/wav"
        chunks = [chunk for chunk in r.iter_content(chunk_size=None) if chunk]
    assert len(chunks) >= 3  # header + one chunk per 0.5 s (the server may coalesce some)
    audio, rate = read_audio(b"".join(chunks))
    assert rate == SAMPLE_RATE
    assert audio.shape[-1] == 2 * SAMPLE_RATE


BAD_BODIES = [
    ('{"prompt": "x", "duration": NaN}', 422, "duration"),
    ('{"prompt": "x", "duration": Infinity}', 422, "duration"),
    ('{"prompt": "x", "temperature": -Infinity}', 422, "temperature"),
    ('{"prompt": "x", "duration": "2"}', 422, "duration"),
    ('{"prompt": ["a", "b"]}', 422, "prompt"),
    ('{"prompt": "   "}', 422, "prompt"),
    ('{"prompt": ""}', 422, "prompt"),
    ('{"duration": 1}', 422, "prompt"),
    ('{"prompt": "x", "format": "aiff"}', 422, "format"),
    ('{"prompt": "x", "duration": 0}', 422, "duration"),
    ('{"prompt": "x", "duration": 9}', 422, "duration"),
    ('{"prompt": "x", "top_p": 1.5}', 422, "top_p"),
    ('{"prompt": "x", "top_k": -1}', 422, "top_k"),
    ('{"prompt": "x", "top_k": 2.5}', 422, "top_k"),
    ('{"prompt": "x", "seed": true}', 422, "seed"),
    ('{"prompt": "x", "bpm": -3}', 422, "bpm"),
    ('{"prompt": "x", "colour": "red"}', 422, "colour"),
    ('{"prompt": "x", "model": "../etc"}', 422, "model"),
    ('{"prompt": "x", "melody": "@@@ not base64"}', 422, "melody"),
    ('{"prompt": "x", "model": "elsewhere@production"}', 404, "elsewhere@production"),
    ('{"prompt": "x", "prompt2"', 400, "JSON"),
    ("[1, 2]", 422, "body"),
    ('"just a string"', 422, "body"),
]


@pytest.mark.parametrize("route", ["/generate", "/generate/stream"])
def test_bad_input_gets_its_status_naming_the_field(app_url, route):
    for body, status, needle in BAD_BODIES:
        response = requests.post(
            app_url + route, data=body, headers={"content-type": "application/json"}, timeout=60
        )
        assert response.status_code == status, (body, response.text)
        assert needle in response.json()["error"], (body, response.text)
    big = '{"prompt": "' + "x" * 5000 + '"}'
    response = requests.post(app_url + route, data=big, timeout=60)
    assert response.status_code == 413
    # The replica is still well after all of that.
    assert post(f"{app_url}/generate", {"prompt": "still here", "duration": 0.5}).ok


def test_a_melody_for_this_model_is_a_422_naming_why(app_url):
    import base64

    from music_gen.audio import encode_audio
    from tests.helpers import sine

    tune = base64.b64encode(encode_audio(sine(440.0, 0.05, 8000), 8000, "flac")).decode()
    response = post(f"{app_url}/generate", {"prompt": "x", "duration": 0.5, "melody": tune})
    assert response.status_code == 422 and "no melody conditioner" in response.json()["error"]
    response = post(f"{app_url}/generate/stream", {"prompt": "x", "melody": tune})
    assert response.status_code == 422 and "melody" in response.json()["error"]


def test_stream_refuses_other_formats(app_url):
    response = post(f"{app_url}/generate/stream", {"prompt": "x", "format": "mp3"})
    assert response.status_code == 422 and "format" in response.json()["error"]


def test_past_deadline_is_504(app_url):
    response = post(f"{app_url}/generate", {"prompt": "slow", "duration": 8, "timeout_s": 0.05})
    assert response.status_code == 504, response.text
    assert post(f"{app_url}/generate", {"prompt": "after", "duration": 0.5}).ok


def test_queue_full_is_503_with_retry_after(app_url):
    # 8 ongoing + 8 queued fit; a burst of 24 long requests overflows the queue.
    bodies = [{"prompt": f"burst {i}", "duration": 6.0} for i in range(24)]
    responses = concurrently(app_url, bodies)
    statuses = [r.status_code for r in responses]
    assert 503 in statuses and 200 in statuses, statuses
    assert set(statuses) <= {200, 503}
    busy = next(r for r in responses if r.status_code == 503)
    assert int(busy.headers["Retry-After"]) >= 0


def test_open_routes(app_url):
    assert requests.get(f"{app_url}/healthz", timeout=30).json() == {"status": "ok"}
    page = requests.get(f"{app_url}/", timeout=30)
    assert page.status_code == 200 and "<audio" in page.text and 'id="prompt"' in page.text
    assert requests.get(f"{app_url}/docs", timeout=30).status_code == 200
    schema = requests.get(f"{app_url}/openapi.json", timeout=30).json()
    assert {"/generate", "/generate/stream", "/models", "/healthz"} <= set(schema["paths"])
    models = requests.get(f"{app_url}/models", timeout=30).json()
    assert models["default"].endswith("ckpt")
    assert len(models["replicas"]) == 1
    assert models["replicas"][0]["device"] == "cpu" and models["replicas"][0]["pid"] > 0


def test_reload_without_keys_and_cli(app_url, capsys):
    from music_gen.cli import main

    before = requests.get(f"{app_url}/models", timeout=30).json()["replicas"][0]
    assert main(["serve", "reload", "--url", app_url]) == 0
    assert before["replica"] in capsys.readouterr().out
    after = requests.get(f"{app_url}/models", timeout=30).json()["replicas"][0]
    assert after["reloads"] == before["reloads"] + 1


def metric_samples(text: str, name: str) -> list[float]:
    return [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and 'application="main"' in line
    ]


def test_metrics_reach_the_prometheus_export(app_url, ray_cluster):
    bodies = [{"prompt": f"metered {i}", "duration": 0.5, "seed": i} for i in range(6)]
    for _ in range(3):  # until two of them share a batch (arrival times vary)
        responses = concurrently(app_url, bodies)
        assert all(r.ok for r in responses)
        if max(int(r.headers["X-Batch-Size"]) for r in responses) > 1:
            break
    else:
        pytest.fail("six concurrent requests never shared a batch")
    port = ray_cluster._private.worker.global_worker.node.metrics_export_port
    names = [
        "ray_music_gen_requests_total",
        "ray_music_gen_request_latency_s_count",
        "ray_music_gen_batch_size_count",
        "ray_music_gen_queue_length",
        "ray_music_gen_audio_seconds_total",
        "ray_music_gen_real_time_factor_count",
    ]

    def batch_totals(text: str) -> tuple[float, float]:
        sizes = sum(metric_samples(text, "ray_music_gen_batch_size_sum"))
        return sizes, sum(metric_samples(text, "ray_music_gen_batch_size_count"))

    # Ray exports every few seconds, and a scrape can land between a histogram's
    # sum and count: wait for one that has every name and counts this burst's rows.
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=30).text
        sizes, batches = batch_totals(text)
        if all(metric_samples(text, name) for name in names) and sizes >= 6 and sizes > batches:
            break
        time.sleep(2)
    missing = [name for name in names if not metric_samples(text, name)]
    assert not missing
    sizes, batches = batch_totals(text)
    # At least this burst's rows, and batches of more than one row show.
    assert sizes >= 6 and sizes > batches
    assert sum(metric_samples(text, "ray_music_gen_audio_seconds_total")) >= 3.0
