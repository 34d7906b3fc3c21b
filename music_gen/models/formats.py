"""Checkpoint files and weight names: the one place that knows them.

Our model directory (what ``MusicGen.save_pretrained`` writes, what training checkpoints
and registry artifacts hold)::

    music_gen.json       format, version, LMConfig, conditioner settings, rates
    model.safetensors    the LM's weights as ``lm.<name>``, the conditioner's (projection,
                         attribute tables; not the text encoder) as ``cond.<name>``
    text_encoder/        the T5 encoder and tokenizer (transformers layout)
    codec/               the codec (``codec.json`` + weights, see codec.py)

A LoRA adapter directory (``lora.py``) holds ``adapter.json`` (its shape and the source of
its base) and ``adapter.safetensors`` (its matrices) instead.

A source string is one of: our directory, an adapter directory, a transformers MusicGen directory (its
``config.json``), an MLflow URI (``models:/``, ``runs:/``) or a hub id (``owner/name``
that is not a local path). ``source_kind`` is the only rule for telling them apart.
Weights load strictly: missing or unexpected tensors and shapes that do not fit are one
``CheckpointError`` naming a few of them, never a silent partial load.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from music_gen.errors import CheckpointError

FORMAT_FILE = "music_gen.json"
WEIGHTS_FILE = "model.safetensors"
TEXT_ENCODER_DIR = "text_encoder"
CODEC_DIR = "codec"
MODEL_ENTRIES = (FORMAT_FILE, WEIGHTS_FILE, TEXT_ENCODER_DIR, CODEC_DIR)
"""What a model directory holds (a training checkpoint adds ``train_state/``)."""
ADAPTER_CONFIG = "adapter.json"
ADAPTER_FILE = "adapter.safetensors"
ADAPTER_ENTRIES = (ADAPTER_CONFIG, ADAPTER_FILE)
"""What a LoRA adapter directory holds (a training checkpoint adds ``train_state/``)."""
FORMAT_VERSION = 1
TRANSFORMERS_CONFIG = "config.json"

PREFIXES = {"lm": "lm.", "cond": "cond."}
"""Part of the model -> prefix of its tensors in ``model.safetensors``."""
SKIPPED_PREFIX = "encoder."
"""Conditioner tensors under this prefix (the T5 encoder) live in ``text_encoder/``."""

SourceKind = Literal["ours", "adapter", "transformers", "mlflow", "hub", "missing", "unknown"]


def source_kind(src: str | Path) -> SourceKind:
    """What kind of model source ``src`` is (see the module docstring)."""
    text = str(src)
    if text.startswith(("models:/", "runs:/")):
        return "mlflow"
    path = Path(text).expanduser()
    if (path / FORMAT_FILE).is_file():
        return "ours"
    if (path / ADAPTER_CONFIG).is_file():
        return "adapter"
    if (path / TRANSFORMERS_CONFIG).is_file():
        return "transformers"
    if path.exists():
        return "unknown"
    if looks_like_hub_id(text):
        return "hub"
    return "missing"


def looks_like_hub_id(text: str) -> bool:
    """``owner/name`` that is not a local path (``./x``, ``/x``, ``~/x`` and existing paths are)."""
    owner, sep, name = text.partition("/")
    return (
        bool(sep and owner and name)
        and "/" not in name
        and not text.startswith((".", "/", "~"))
        and not Path(text).expanduser().exists()
    )


def read_json(path: Path) -> dict:
    """A JSON object from ``path``, or a ``CheckpointError`` naming the file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = exc.__class__.__name__ if isinstance(exc, OSError) else "not valid JSON"
        raise CheckpointError(f"cannot read {path}: {reason}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def read_meta(directory: str | Path) -> dict:
    """``music_gen.json`` of our model directory."""
    return read_json(Path(directory) / FORMAT_FILE)


def codebook_shape(src: str | Path) -> tuple[int, int] | None:
    """``(num_codebooks, cardinality)`` of a local model directory without loading weights
    (``None`` for sources that are not local directories)."""
    kind, path = source_kind(src), Path(str(src)).expanduser()
    try:
        if kind == "ours":
            lm = read_meta(path)["lm"]
            return int(lm["num_codebooks"]), int(lm["cardinality"])
        if kind == "transformers":
            decoder = read_json(path / TRANSFORMERS_CONFIG).get("decoder", {})
            return int(decoder["num_codebooks"]), int(decoder["vocab_size"])
        if kind == "adapter":  # an adapter has its base's codebooks
            return codebook_shape(str(read_json(path / ADAPTER_CONFIG)["base"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable model config ({exc})") from None
    return None


MELODY_MODEL_TYPE = "musicgen_melody"
"""transformers' ``model_type`` of MusicGen-Melody checkpoints."""


def has_melody(src: str | Path) -> bool | None:
    """Whether a local model directory has a melody conditioner, without loading it
    (``None`` for sources that are not local directories)."""
    kind, path = source_kind(src), Path(str(src)).expanduser()
    try:
        if kind == "ours":
            return read_meta(path)["conditioner"].get("melody") is not None
        if kind == "transformers":
            return read_json(path / TRANSFORMERS_CONFIG).get("model_type") == MELODY_MODEL_TYPE
    except (KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: unreadable model config ({exc})") from None
    return None


def join_weights(parts: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{"lm": {...}, "cond": {...}}`` module state -> the checkpoint's tensor names."""
    named = {}
    for part, state in parts.items():
        for key, value in state.items():
            if part == "cond" and key.startswith(SKIPPED_PREFIX):
                continue
            named[PREFIXES[part] + key] = value
    return named


def split_weights(weights: Mapping[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The checkpoint's tensor names -> ``{"lm": {...}, "cond": {...}}``; other names are
    returned under ``""`` (unexpected)."""
    parts: dict[str, dict[str, torch.Tensor]] = {name: {} for name in PREFIXES}
    parts[""] = {}
    for key, value in weights.items():
        part = next((p for p, prefix in PREFIXES.items() if key.startswith(prefix)), "")
        parts[part][key[len(PREFIXES[part]) :] if part else key] = value
    return parts


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights missing: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise CheckpointError(f"{path}: corrupt or truncated safetensors file ({reason})") from None


def _few(names) -> str:
    names = sorted(names)
    more = f" and {len(names) - 3} more" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


def load_weights(path: Path, modules: Mapping[str, torch.nn.Module], weights=None) -> None:
    """Load ``model.safetensors`` (or the given ``weights``) strictly into ``modules``
    (``{"lm": lm, "cond": conditioner}``)."""
    parts = split_weights(read_weights(path) if weights is None else weights)
    unexpected = [PREFIXES.get(part, "") + key for part in parts if part not in modules
                  for key in parts[part]]  # fmt: skip
    missing = []
    for part, module in modules.items():
        expected = {
            k for k in module.state_dict() if not (part == "cond" and k.startswith(SKIPPED_PREFIX))
        }
        missing += [PREFIXES[part] + k for k in expected - parts[part].keys()]
        unexpected += [PREFIXES[part] + k for k in parts[part].keys() - expected]
    if missing or unexpected:
        problems = []
        if missing:
            problems.append(f"missing {_few(missing)}")
        if unexpected:
            problems.append(f"unexpected {_few(unexpected)}")
        raise CheckpointError(
            f"{path}: weights do not match the model config ({'; '.join(problems)})"
        )
    for part, module in modules.items():
        state = module.state_dict()
        for key, value in parts[part].items():
            if value.shape != state[key].shape:
                raise CheckpointError(
                    f"{path}: {PREFIXES[part]}{key} has shape {list(value.shape)}, the model "
                    f"config needs {list(state[key].shape)}"
                )
            if state[key].is_floating_point() != value.is_floating_point():
                raise CheckpointError(f"{path}: {PREFIXES[part]}{key} has dtype {value.dtype}")
        module.load_state_dict(parts[part], strict=False)  # the text encoder is loaded apart
