"""Re-running a training run: what may change on resume, and what must not.

A re-run with the same ``train.name`` and ``train.storage`` resumes from the newest
complete checkpoint of the run. That checkpoint's weights were trained with the
settings saved in it (``train_state/state.json``); a re-run whose settings would change
the model or the data it trains on is refused on the driver, before any worker starts,
naming the differences. ``--overwrite`` (``train(..., overwrite=True)``) discards the
old run's checkpoints instead and starts afresh.

``RESUMABLE`` is the one list of settings that may change on resume; everything else
of ``model.*`` and ``train.*``, and ``COMPARED``, must be as the run was trained.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from music_gen.config import Config
from music_gen.errors import ConfigError, MusicGenError
from music_gen.pipelines import checkpoints

RESUMABLE = {
    "train.steps": "the run's length (the learning-rate schedule stretches to it)",
    "train.log_every": "how often progress is logged",
    "train.checkpoint_every": "how often checkpoints are written",
    "train.eval_every": "how often validation runs",
    "train.val_batches": "how many validation batches are scored",
    "train.eval_samples": "how many audio samples are logged",
    "train.eval_sample_seconds": "their length",
    "train.eval_prompts": "their prompts",
    "train.keep_checkpoints": "how many checkpoints are kept",
    "train.max_failures": "how many crashes are retried",
    "train.num_workers": "the worker count (checkpoints hold whole tensors)",
    "train.strategy": "DDP or FSDP (checkpoints hold whole tensors)",
    "train.use_gpu": "where the workers run",
    "train.cpus_per_worker": "the resources of a worker",
    "train.gpus_per_worker": "the resources of a worker",
    "train.torch_threads": "threads per worker",
    "train.precision": "the compute dtype",
    "model.gradient_checkpointing": "memory against compute, same weights",
    "train.tracking_uri": "where MLflow records the run",
    "train.experiment": "the MLflow experiment",
    "train.register_as": "the registry name of the final model",
    "train.name": "the run's identity (the same by definition)",
    "train.storage": "the run's identity (the same by definition)",
}
"""Settings a re-run may change and still resume, each with what it governs."""

COMPARED_SECTIONS = ("model", "train")
"""Config sections whose every setting (less ``RESUMABLE``) must match on resume."""
COMPARED = ("data.output", "data.val_fraction", "codec.source")
"""The settings outside those sections that training reads: the dataset, its split, the
codec a from-scratch model is built with (tokenization-only ``data.*`` settings are not
read by training)."""


NESTED = ("model.text",)
"""Sub-configs compared setting by setting (other dict values compare whole)."""


def _flat(tree: dict, prefix: str = "") -> dict[str, str]:
    """Dotted keys -> JSON text of the value (lists, dicts and numbers compare as saved)."""
    flat = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and (not prefix or name in NESTED):
            flat.update(_flat(value, name + "."))
        else:
            flat[name] = json.dumps(value, sort_keys=True)
    return flat


def compared_settings(config_tree: dict) -> dict[str, str]:
    """The settings of a config (a ``model_dump(mode="json")`` tree) that a resume must keep."""
    normal = json.loads(json.dumps(config_tree, default=str))  # as state.json holds it
    flat = _flat(normal)
    return {
        key: value
        for key, value in flat.items()
        if key not in RESUMABLE and (key.split(".", 1)[0] in COMPARED_SECTIONS or key in COMPARED)
    }


def config_changes(saved: dict, new: dict) -> list[str]:
    """``["model.dim 32 -> 64", ...]``: compared settings that differ, sorted by name.

    A setting the saved config lacks (added to the platform after the run started) counts
    as its default, the behaviour the run was trained with."""
    defaults = compared_settings(Config().model_dump(mode="json"))
    before, after = {**defaults, **compared_settings(saved)}, compared_settings(new)
    return [
        f"{key} {before.get(key, 'unset')} -> {after.get(key, 'unset')}"
        for key in sorted(set(before) | set(after))
        if before.get(key) != after.get(key)
    ]


def run_dir(storage: str, name: str) -> Path | None:
    """The run's directory when its storage is local (None for a URI)."""
    return None if "://" in storage else Path(storage) / name


def saved_config(directory: Path) -> dict | None:
    """The config a run was trained with: that of its newest complete checkpoint (or, for
    checkpoints written before completeness markers, its newest readable one)."""
    newest = checkpoints.newest_complete(directory)
    candidates = [newest[1]] if newest else []
    candidates += sorted(directory.glob(f"{checkpoints.CHECKPOINT_PREFIX}*"), reverse=True)
    for candidate in candidates:
        try:
            config = checkpoints.read_state(candidate).get("config")
        except MusicGenError:
            continue
        if config:
            return config
    return None


def check_rerun(cfg: Config, storage: str, overwrite: bool = False) -> bool:
    """Refuse a re-run whose settings differ from the run's checkpoints (one line naming
    the differences and the ways on); with ``overwrite``, delete the old run's directory.

    Returns True when an old run was discarded (its MLflow run is then left behind too).
    """
    directory = run_dir(storage, cfg.train.name)
    if directory is None or not directory.is_dir():
        return False
    if overwrite:
        shutil.rmtree(directory)
        return True
    saved = saved_config(directory)
    if saved is None:
        return False
    changes = config_changes(saved, cfg.model_dump(mode="json"))
    if changes:
        raise ConfigError(
            f"run {cfg.train.name!r} in {storage} was trained with other settings "
            f"({', '.join(changes)}): re-run with a new train.name, or with --overwrite "
            "to discard its checkpoints and start again (what may change on resume: "
            "music-gen train --help)"
        )
    return False


def resumable_help() -> str:
    """The ``RESUMABLE`` keys as one sentence for ``music-gen train --help``."""
    keys = [key for key in RESUMABLE if key not in ("train.name", "train.storage")]
    return ", ".join(keys)
