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
        complete.json          written last, once every other file is in place

``model.safetensors`` holds the weights to generate with: the EMA when there is one. A
LoRA run (``train.lora.rank > 0``) writes its adapter in place of the model files:
``adapter.json`` and ``adapter.safetensors`` (see ``models/lora.py``).
A checkpoint directory is complete when its ``complete.json`` marker exists: the marker
is written after the whole directory has reached the run's storage, so a directory that a
crash or Ctrl-C cut short is never resumed from.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from music_gen.errors import CheckpointError
from music_gen.models import formats

TRAIN_STATE = "train_state"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
RAW_WEIGHTS_FILE = "weights.safetensors"
EMA_FILE = "ema.safetensors"
COMPLETE_FILE = "complete.json"
CHECKPOINT_PREFIX = "checkpoint_"
# What a model directory holds (everything but train_state/).
MODEL_ENTRIES = formats.MODEL_ENTRIES


def save_model_dir(directory: Path, model, weights: dict[str, torch.Tensor]) -> Path:
    """``model.save_pretrained(directory)`` with ``weights`` as its ``model.safetensors``.

    The weights are passed in because the live modules may be sharded (FSDP) or hold
    the raw weights while the checkpoint should carry the EMA.
    """
    return model.save_pretrained(directory, weights=weights)


def save_checkpoint(
    directory: Path,
    model,
    weights: dict[str, torch.Tensor],
    state: dict,
    optimizer_state: dict,
    raw_weights: dict[str, torch.Tensor] | None = None,
    ema_weights: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write a checkpoint directory (see the module docstring). A LoRA run's model part is
    its adapter (``adapter.json``, ``adapter.safetensors``): ``weights`` are its matrices."""
    from music_gen.models import lora

    directory = Path(directory)
    if lora.spec_of(model.lm) is not None:
        lora.save_adapter(directory, model.lm, weights)
    else:
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


def checkpoint_dir_name(step: int) -> str:
    """``checkpoint_0000200``: sorts by step, and the step can be read back from it."""
    return f"{CHECKPOINT_PREFIX}{step:07d}"


def checkpoint_step(path) -> int | None:
    """The step in a checkpoint directory's name (None: not a checkpoint directory)."""
    name = str(path).rstrip("/").rsplit("/", 1)[-1]
    digits = name.removeprefix(CHECKPOINT_PREFIX)
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else None


def marker_path(directory) -> str:
    """Where the completeness marker of a checkpoint directory lives (a path or URI path)."""
    return f"{str(directory).rstrip('/')}/{TRAIN_STATE}/{COMPLETE_FILE}"


def marker_bytes(step: int) -> bytes:
    return json.dumps({"step": step}).encode()


def is_complete(directory: Path) -> bool:
    """Every file of the checkpoint was written (its marker, written last, is there)."""
    return Path(marker_path(directory)).is_file()


def complete_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """``(step, directory)`` of every complete checkpoint of a local run dir, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for entry in run_dir.iterdir():
        step = checkpoint_step(entry.name)
        if step is not None and entry.is_dir() and is_complete(entry):
            found.append((step, entry))
    return sorted(found)


def newest_complete(run_dir: Path) -> tuple[int, Path] | None:
    """The complete checkpoint of a local run dir with the highest step, if any."""
    found = complete_checkpoints(run_dir)
    return found[-1] if found else None


def export_model(checkpoint: Path, output: Path) -> Path:
    """Copy the model part of a checkpoint (no optimizer state) to ``output``: the model
    directory, or the adapter of a LoRA run."""
    checkpoint, output = Path(checkpoint), Path(output)
    output.mkdir(parents=True, exist_ok=True)
    adapter = (checkpoint / formats.ADAPTER_CONFIG).is_file()
    for name in formats.ADAPTER_ENTRIES if adapter else MODEL_ENTRIES:
        source = checkpoint / name
        if source.is_dir():
            shutil.copytree(source, output / name, dirs_exist_ok=True)
        elif source.is_file():
            shutil.copy2(source, output / name)
        else:
            raise CheckpointError(f"{checkpoint} is not a complete checkpoint ({name} missing)")
    return output
