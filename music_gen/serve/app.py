"""Build the Serve application from a ``ServeConfig``; run it locally; reload it.

``build_app`` is what Ray's own tools take::

    serve run music_gen.serve.app:build_app model=work/ckpt max_batch_size=4
    serve deploy configs/serve/gpu.yaml

``music-gen serve`` calls ``run_local``. Two deployments: ``Api`` (the FastAPI ingress,
a sliver of a CPU) in front of ``Generator`` (the model replicas: batching,
multiplexing, autoscaling, GPUs).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, ValidationError

from music_gen.config import Config, ServeConfig, _format_error, _merge, parse_override, read_yaml
from music_gen.errors import ConfigError, MusicGenError, UsageError

INGRESS_MAX_ONGOING = 1000  # the ingress only forwards; the model replicas bound the load
CLIENT_KEY_ENVS = ("MUSIC_GEN_API_KEY", "MUSIC_GEN_API_KEYS")


class AppArgs(BaseModel):
    """Arguments of ``build_app``: an optional config file, then any ``ServeConfig`` field."""

    model_config = ConfigDict(extra="allow")

    config: str | None = None
    """A YAML file: a Serve config file (its first application's ``args``) or ours
    (a ``serve:`` section)."""


def build_app(args: AppArgs):
    """The application for ``serve run``/``serve build``/``serve deploy``."""
    tree = serve_tree(args.config) if args.config else {}
    fields = {key: value for key, value in (args.model_extra or {}).items()}
    try:
        cfg = ServeConfig.model_validate(_merge(tree, fields))
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None
    return build(cfg)


def build(cfg: ServeConfig):
    """``Api`` bound to ``Generator`` with the deployment options ``cfg`` asks for."""
    from music_gen.serve.api import Api
    from music_gen.serve.deployments import Generator

    if not cfg.model:
        raise ConfigError("serve.model is not set: pass --model SRC or serve.model=SRC")
    # Serve's decorators return Deployments; ray is untyped here, so say so.
    generator = cast(Any, Generator).options(**generator_options(cfg)).bind(cfg.model_dump())
    ingress = cast(Any, Api).options(
        num_replicas=1,
        ray_actor_options={"num_cpus": cfg.ingress_num_cpus, **_runtime_env(cfg)},
        max_ongoing_requests=INGRESS_MAX_ONGOING,
    )
    return ingress.bind(generator, cfg.model_dump())


def generator_options(cfg: ServeConfig) -> dict:
    options = {
        "ray_actor_options": {
            "num_cpus": cfg.num_cpus,
            "num_gpus": cfg.num_gpus,
            **_runtime_env(cfg),
        },
        # A batch can only fill when the replica holds at least a batch of requests.
        "max_ongoing_requests": cfg.max_ongoing_requests or 2 * cfg.max_batch_size,
        "max_queued_requests": cfg.max_queued_requests,
        "user_config": {"model": cfg.model},
        "graceful_shutdown_timeout_s": 30,
    }
    if cfg.autoscaling_config is not None:
        options["autoscaling_config"] = cfg.autoscaling_config.model_dump(exclude_none=True)
    else:
        options["num_replicas"] = cfg.num_replicas
    return options


def _runtime_env(cfg: ServeConfig) -> dict:
    return {"runtime_env": {"env_vars": dict(cfg.env_vars)}} if cfg.env_vars else {}


def serve_tree(path: str | Path) -> dict:
    """The ``serve`` fields of a YAML file: a Ray Serve config file or one of ours."""
    data = read_yaml(path)
    if "applications" in data:
        apps = data["applications"] or [{}]
        tree = dict(apps[0].get("args") or {})
        tree.pop("config", None)
        http = data.get("http_options") or {}
        for key in ("host", "port"):
            if key in http and key not in tree:
                tree[key] = http[key]
        if "name" in apps[0]:
            tree.setdefault("app_name", apps[0]["name"])
        return tree
    return data.get("serve") or {}


def load_serve_config(files: list[str], overrides: list[str], flags: dict) -> ServeConfig:
    """Defaults, then each file's serve fields, then dotted overrides, then CLI flags."""
    tree: dict = {}
    for path in files:
        tree = _merge(tree, {"serve": serve_tree(path)})
    for text in overrides:
        tree = _merge(tree, parse_override(text))
    tree = _merge(tree, {"serve": {k: v for k, v in flags.items() if v is not None}})
    try:
        return Config.model_validate(tree).serve
    except ValidationError as exc:
        raise ConfigError(_format_error(exc)) from None


def run_local(cfg: ServeConfig, ready=print) -> None:
    """Start Ray (or join ``RAY_ADDRESS``), run the app, block until Ctrl-C, shut down."""
    import logging

    import ray
    from ray import serve

    from music_gen.serve.board import drop_board

    app = build(cfg)
    check_source(cfg.model)
    # A fresh local cluster unless RAY_ADDRESS names one (never a stray `ray start` head).
    address = os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        serve.run(app, name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=False)
        url = f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"
        ready(f"serving {cfg.model}")
        ready(f"page: {url}/")
        ready(f"API docs: {url}/docs")
        ready("Ctrl-C to stop")
        _stop_on_signals()
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            ready("shutting down")
        serve.delete(cfg.app_name)
        drop_board(cfg.app_name)
        serve.shutdown()
    finally:
        ray.shutdown()


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM (a supervisor's stop) both end the wait and shut down cleanly;
    a shell that started us in the background may have left SIGINT ignored."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, stop)


def check_source(source: str | None) -> None:
    """Fail on the driver, in one line, for a model source no replica could load."""
    from music_gen.errors import CheckpointError
    from music_gen.models.formats import source_kind

    if not source:
        raise ConfigError("serve.model is not set: pass --model SRC or serve.model=SRC")
    kind = source_kind(source)
    if kind == "mlflow":
        from music_gen.platform.registry import resolve

        resolve(source)  # raises CheckpointError naming what is missing
    elif kind == "unknown":
        raise CheckpointError(f"'{source}' is not a music-gen or transformers MusicGen checkpoint")
    elif kind == "missing":
        raise CheckpointError(f"checkpoint not found: '{source}'")


def client_key() -> str | None:
    for name in CLIENT_KEY_ENVS:
        value = os.environ.get(name, "").split(",")[0].strip()
        if value:
            return value
    return None


def reload_remote(url: str, timeout: float = 600.0) -> dict:
    """``POST {url}/admin/reload`` with the API key from the environment; the answer."""
    request = urllib.request.Request(f"{url.rstrip('/')}/admin/reload", method="POST", data=b"")
    if key := client_key():
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            reason = json.loads(exc.read()).get("error", exc.reason)
        except (ValueError, AttributeError):
            reason = exc.reason
        raise MusicGenError(f"reload failed: HTTP {exc.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise UsageError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None
