"""Training checkpoints: a model directory that ``MusicGen.from_pretrained`` loads, plus
the state that resuming needs.

Layout (no pickle anywhere; the optimizer file is read with ``weights_only=True``)::

    checkpoint_0000200/
      music_gen.json  model.safetensors  text_encoder/  codec/    # save_pretrained layout
      train_state/
        state.json             step, data position, metrics, the resolved config
        optimizer.pt           AdamW state (torch.save of tensors and numbers only)
        weights.safetensors    the raw weights, only when model.safetensors holds the EMA
        ema.safetensors        the EMA weights, only with train.ema_decay

``model.safetensors`` holds the weights to generate with: the EMA when there is one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from music_gen.errors import CheckpointError

TRAIN_STATE = "train_state"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
RAW_WEIGHTS_FILE = "weights.safetensors"
EMA_FILE = "ema.safetensors"
# What a model directory holds (everything but train_state/).
MODEL_ENTRIES = ("music_gen.json", "model.safetensors", "text_encoder", "codec")


def save_model_dir(directory: Path, model, weights: dict[str, torch.Tensor]) -> Path:
    """``model.save_pretrained(directory)`` with ``weights`` as its ``model.safetensors``.

    The weights are passed in because the live modules may be sharded (FSDP) or hold
    the raw weights while the checkpoint should carry the EMA.
    """
    # save_pretrained writes its config, text encoder and codec, then the state dict it
    # gets from model.state_dict(); the instance attribute makes that the given weights.
    model.state_dict = lambda: weights
    try:
        model.save_pretrained(directory)
    finally:
        del model.state_dict
    return directory


def save_checkpoint(
    directory: Path,
    model,
    weights: dict[str, torch.Tensor],
    state: dict,
    optimizer_state: dict,
    raw_weights: dict[str, torch.Tensor] | None = None,
    ema_weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint directory (see the module docstring)."""
    directory = Path(directory)
    save_model_dir(directory, model, weights)
    train_dir = directory / TRAIN_STATE
    train_dir.mkdir(parents=True, exist_ok=True)
    (train_dir / STATE_FILE).write_text(json.dumps(state, indent=1, default=str))
    torch.save(optimizer_state, train_dir / OPTIMIZER_FILE)
    if raw_weights is not None:
        save_file(_contiguous(raw_weights), str(train_dir / RAW_WEIGHTS_FILE))
    if ema_weights is not None:
        save_file(_contiguous(ema_weights), str(train_dir / EMA_FILE))
    return directory


def _contiguous(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in weights.items()}


def read_state(directory: Path) -> dict:
    """``state.json`` of a checkpoint (step, data position, metrics, config)."""
    path = Path(directory) / TRAIN_STATE / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"cannot resume: {path} is missing or unreadable ({exc})") from None


def read_optimizer(directory: Path) -> dict:
    path = Path(directory) / TRAIN_STATE / OPTIMIZER_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"cannot resume: {path} is missing or corrupt ({exc})") from None


def read_weights(directory: Path, name: str) -> dict[str, torch.Tensor] | None:
    """An optional weights file of ``train_state/`` (raw or EMA); ``None`` when absent."""
    path = Path(directory) / TRAIN_STATE / name
    return load_file(str(path)) if path.is_file() else None


def export_model(checkpoint: Path, output: Path) -> Path:
    """Copy the model part of a checkpoint (no optimizer state) to ``output``."""
    checkpoint, output = Path(checkpoint), Path(output)
    output.mkdir(parents=True, exist_ok=True)
    for name in MODEL_ENTRIES:
        source = checkpoint / name
        if source.is_dir():
            shutil.copytree(source, output / name, dirs_exist_ok=True)
        elif source.is_file():
            shutil.copy2(source, output / name)
        else:
            raise CheckpointError(f"{checkpoint} is not a complete checkpoint ({name} missing)")
    return output
