"""The board: one small named actor per application that model replicas report to.

``GET /models`` reads what each live replica serves from it, and ``POST /admin/reload``
raises its reload generation, which every replica picks up on its next heartbeat. A
replica that stops reporting (killed, scaled down) drops off after a few heartbeats.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import ray

NAMESPACE = "music_gen"


class Board:
    def __init__(self):
        self.replicas: dict[str, dict] = {}
        self.generation = 0

    def report(self, info: dict) -> int:
        """Store a replica's state; returns the reload generation it should be at."""
        self.replicas[info["replica"]] = {**info, "seen": time.time()}
        return self.generation

    def leave(self, replica: str) -> None:
        self.replicas.pop(replica, None)

    def reload(self) -> int:
        self.generation += 1
        return self.generation

    def live(self, max_age_s: float) -> list[dict]:
        now = time.time()
        for key in [k for k, v in self.replicas.items() if now - v["seen"] > max_age_s]:
            del self.replicas[key]
        return sorted(self.replicas.values(), key=lambda info: info["replica"])


BoardActor: Any = ray.remote(num_cpus=0)(Board)


def board_name(app_name: str) -> str:
    return f"board:{app_name}"


def get_board(app_name: str):
    """The app's board, created by whoever asks first (it outlives replicas that restart)."""
    return BoardActor.options(
        name=board_name(app_name), namespace=NAMESPACE, get_if_exists=True, lifetime="detached"
    ).remote()


def drop_board(app_name: str) -> None:
    """Kill the app's board (when the app is deleted)."""
    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(board_name(app_name), namespace=NAMESPACE))
