"""The search space of a sweep: dotted config keys -> distributions, checked before Ray.

``tune.search_space`` is written in the config's own keys::

    search_space:
      train.lr: {loguniform: [1.0e-4, 3.0e-3]}
      model.num_layers: {choice: [2, 4]}

Every key must name a field of the config schema, and every value a distribution can
produce must be valid for that field (checked by building the config with it), so a
typo or a wrong type is one error line before any trial starts.
"""

from __future__ import annotations

import re
from typing import Any

from music_gen.config import Config, apply_overrides
from music_gen.errors import ConfigError

RANGES = ("loguniform", "uniform", "randint")
"""Distributions over ``[lo, hi]`` (``randint``: ``hi`` excluded)."""
LISTS = ("choice", "grid")
"""Distributions over listed values (``grid``: every value, crossed with the others)."""
OWNED_BY_SWEEP = ("tune.", "train.name", "train.storage", "train.tracking_uri",
                  "train.experiment", "train.register_as", "data.output")  # fmt: skip
"""Keys a sweep sets itself (names, places, tracking): not searchable."""
FIXED_RESOURCES = ("train.num_workers", "train.cpus_per_worker", "train.use_gpu",
                   "train.gpus_per_worker")  # fmt: skip
"""Trials of one sweep share one size, so concurrency can be derived from the cluster."""
REPORTED_METRIC = re.compile(r"^val_loss(_cb\d+)?$")
"""What training reports at each checkpoint (``val_loss``, ``val_loss_cb<k>``)."""


def parse_space(cfg: Config) -> dict[str, tuple[str, list]]:
    """``tune.search_space`` -> ``{key: (kind, values)}``, validated against ``cfg``."""
    space = cfg.tune.search_space
    if not space:
        raise ConfigError("tune.search_space is empty: give at least one key to search")
    parsed = {}
    for key, spec in space.items():
        kind, values = _distribution(key, spec)
        if any(key == owned or key.startswith(owned) for owned in OWNED_BY_SWEEP if owned):
            raise ConfigError(f"tune.search_space: '{key}' is set by the sweep itself")
        if key in FIXED_RESOURCES:
            raise ConfigError(
                f"tune.search_space: '{key}' sizes every trial; set it outside the space"
            )
        if cfg.tune.search == "grid" and kind not in LISTS:
            raise ConfigError(
                f"tune.search_space: '{key}' is a {kind} range; grid search takes choice/grid lists"
            )
        for value in _probes(kind, values):
            _check_value(cfg, key, value)
        parsed[key] = (kind, values)
    return parsed


def _distribution(key: str, spec: Any) -> tuple[str, list]:
    where = f"tune.search_space: '{key}'"
    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConfigError(
            f"{where} must be one of {{loguniform|uniform|randint: [lo, hi]}} or "
            f"{{choice|grid: [values]}} (got {spec!r})"
        )
    ((kind, values),) = spec.items()
    if kind not in RANGES + LISTS:
        raise ConfigError(f"{where}: unknown distribution '{kind}' ({', '.join(RANGES + LISTS)})")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {kind} takes a non-empty list (got {values!r})")
    if kind in RANGES:
        if len(values) != 2 or not all(_is_number(v) for v in values) or values[0] >= values[1]:
            raise ConfigError(f"{where}: {kind} takes [lo, hi] with lo < hi (got {values!r})")
        if kind == "loguniform" and values[0] <= 0:
            raise ConfigError(f"{where}: loguniform needs lo > 0 (got {values[0]!r})")
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            raise ConfigError(f"{where}: randint takes integers (got {values!r})")
    return kind, values


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _probes(kind: str, values: list) -> list:
    """Values that stand for the whole distribution when checking the schema."""
    if kind == "randint":
        return [values[0], values[1] - 1]
    if kind in RANGES:
        return [values[0], values[1], (values[0] + values[1]) / 2]
    return values


def _check_value(cfg: Config, key: str, value: Any) -> None:
    try:
        apply_overrides(cfg, [f"{key}={_yaml(value)}"])
    except ConfigError as exc:
        raise ConfigError(f"tune.search_space: {exc}") from None


def _yaml(value: Any) -> str:
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def apply_params(cfg: Config, params: dict[str, Any]) -> Config:
    """The trial's config: ``cfg`` with each sampled ``key: value``."""
    return apply_overrides(cfg, [f"{key}={_yaml(value)}" for key, value in params.items()])


def to_tune(parsed: dict[str, tuple[str, list]]) -> dict:
    """The Ray Tune ``param_space`` (flat dotted keys)."""
    from ray import tune

    build = {
        "loguniform": lambda v: tune.loguniform(v[0], v[1]),
        "uniform": lambda v: tune.uniform(v[0], v[1]),
        "randint": lambda v: tune.randint(v[0], v[1]),
        "choice": tune.choice,
        "grid": tune.grid_search,
    }
    return {key: build[kind](values) for key, (kind, values) in parsed.items()}


def to_grid(parsed: dict[str, tuple[str, list]]) -> dict:
    """Grid search: every listed key becomes a grid (``search: grid``)."""
    from ray import tune

    return {key: tune.grid_search(values) for key, (_, values) in parsed.items()}


def check_metric(metric: str) -> None:
    if not REPORTED_METRIC.match(metric):
        raise ConfigError(
            f"tune.metric '{metric}' is not reported by training (it reports val_loss and "
            "val_loss_cb<k> at each checkpoint)"
        )
