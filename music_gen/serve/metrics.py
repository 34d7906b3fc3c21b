"""Prometheus metrics through Ray's metrics export (``ray.serve.metrics``).

Ray's metrics agent serves them to Prometheus with the ``ray_`` prefix, e.g.
``ray_music_gen_requests_total``. Each process makes its metrics once, on first use.
"""

from __future__ import annotations

from functools import cache

LATENCY_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300]
BATCH_BOUNDARIES = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64]
RTF_BOUNDARIES = [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10]


@cache
def ingress_metrics() -> dict:
    from ray.serve import metrics

    return {
        "requests": metrics.Counter(
            "music_gen_requests_total",
            description="HTTP requests by route and status code.",
            tag_keys=("route", "status"),
        ),
        "latency": metrics.Histogram(
            "music_gen_request_latency_s",
            description="Request latency in seconds, by route.",
            boundaries=LATENCY_BOUNDARIES,
            tag_keys=("route",),
        ),
    }


@cache
def replica_metrics() -> dict:
    from ray.serve import metrics

    return {
        "batch_size": metrics.Histogram(
            "music_gen_batch_size",
            description="Requests generated together per batch.",
            boundaries=BATCH_BOUNDARIES,
        ),
        "queue": metrics.Gauge(
            "music_gen_queue_length",
            description="Requests on a replica waiting for their batch to start.",
        ),
        "audio_seconds": metrics.Counter(
            "music_gen_audio_seconds_total",
            description="Seconds of audio generated, by model.",
            tag_keys=("model",),
        ),
        "rtf": metrics.Histogram(
            "music_gen_real_time_factor",
            description="Generation seconds per second of audio (below 1: faster than real time).",
            boundaries=RTF_BOUNDARIES,
        ),
    }
