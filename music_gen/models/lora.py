"""LoRA adapters for the LM, through ``peft``: fine-tune a published checkpoint in little memory.

A LoRA fine-tune freezes every weight of the base model and learns, for each targeted
``nn.Linear`` ``W`` (``[out, in]``), a low-rank update ``W + (alpha / rank) * B @ A``
with ``A: [rank, in]`` and ``B: [out, rank]`` (``B`` starts at zero, so step 0 is the
base). What it saves is the adapter alone, a few MB instead of the whole model::

    adapter/                   (formats.ADAPTER_FILE, formats.ADAPTER_CONFIG)
      adapter.json             rank, alpha, targets, the base's source and fingerprint
      adapter.safetensors      the A and B matrices, named as in the LM

``MusicGen.from_pretrained(adapter_dir)`` loads the base it names, checks it is the
base the adapter was trained over (its fingerprint), applies the adapter and merges it
(generation then costs what the base costs). ``music-gen export --format safetensors``
of an adapter writes the merged, full checkpoint.

``peft`` is imported only here and only when an adapter is made or loaded: it costs
seconds to import and most runs do not need it.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from music_gen.errors import CheckpointError
from music_gen.models import formats

TARGETS = {
    "self_attn": ("self_attn.qkv", "self_attn.out"),
    "cross_attn": ("cross_attn.q", "cross_attn.kv", "cross_attn.out"),
    "ffn": ("fc1", "fc2"),
}
"""A target name of ``train.lora.targets`` -> the LM's linear layers it adapts (per block)."""
FORMAT = "music-gen-lora"
ADAPTER_NAME = "default"  # peft's name for the one adapter a model holds


@dataclass(frozen=True)
class LoraSpec:
    """What an adapter is: its shape and the base it belongs to."""

    rank: int
    alpha: int
    targets: tuple[str, ...]
    dropout: float = 0.0
    base: str = ""
    """The base model's source (a directory, hub id or ``models:/`` URI)."""
    base_fingerprint: str = ""
    """``fingerprint`` of the base's LM: an adapter over another base is refused."""

    @property
    def module_pattern(self) -> str:
        """peft's ``target_modules`` as one regular expression over full module names."""
        suffixes = [re.escape(s) for t in self.targets for s in TARGETS[t]]
        return rf"blocks\.\d+\.({'|'.join(suffixes)})"


def fingerprint(lm: torch.nn.Module) -> str:
    """A short hash of the base LM's weights (a sample of each tensor): equal for the same
    base however it is loaded, different for another one of the same shape."""
    digest = hashlib.sha256()
    for name, tensor in sorted(base_state(lm).items()):
        sample = tensor.detach().flatten()[:256].float().cpu().numpy()
        digest.update(name.encode())
        digest.update(sample.tobytes())
    return digest.hexdigest()[:16]


def base_state(lm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The LM's own weights under their base names (without the adapter's matrices)."""
    state = {}
    for name, tensor in lm.state_dict().items():
        if ".lora_" in name:
            continue
        state[name.replace(".base_layer.", ".")] = tensor
    return state


def attach(lm: torch.nn.Module, spec: LoraSpec) -> None:
    """Freeze ``lm`` and add untrained adapters (``B = 0``) to the layers ``spec`` targets."""
    from peft import LoraConfig, inject_adapter_in_model

    lm.requires_grad_(False)
    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=spec.module_pattern,
        bias="none",
    )
    inject_adapter_in_model(config, lm, adapter_name=ADAPTER_NAME)
    lm.lora = spec  # read back by save_adapter and merge


def spec_of(lm: torch.nn.Module) -> LoraSpec | None:
    """The adapter ``lm`` carries, if any."""
    return getattr(lm, "lora", None)


def adapter_weights(lm: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The adapter's matrices, named as in ``lm`` (``blocks.0.self_attn.qkv.lora_A.weight``)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(lm, adapter_name=ADAPTER_NAME)


def load_adapter_weights(lm: torch.nn.Module, weights: dict[str, torch.Tensor], where) -> None:
    """Load ``weights`` (as ``adapter_weights`` names them) strictly into ``lm``'s adapter."""
    expected = adapter_weights(lm)
    missing, unexpected = expected.keys() - weights.keys(), weights.keys() - expected.keys()
    if missing or unexpected:
        problems = [f"missing {sorted(missing)[:3]}"] if missing else []
        problems += [f"unexpected {sorted(unexpected)[:3]}"] if unexpected else []
        raise CheckpointError(f"{where}: adapter does not fit its config ({'; '.join(problems)})")
    for name, tensor in weights.items():
        if tensor.shape != expected[name].shape:
            raise CheckpointError(
                f"{where}: {name} has shape {list(tensor.shape)}, expected "
                f"{list(expected[name].shape)}"
            )
    from peft import set_peft_model_state_dict

    set_peft_model_state_dict(lm, weights, adapter_name=ADAPTER_NAME)


def merge(lm: torch.nn.Module) -> None:
    """Fold the adapter into the base weights and remove its layers: ``lm`` is a plain LM
    again (same names, same speed as the base) that computes what the adapted one did."""
    from peft.tuners.lora import LoraLayer

    for name, module in list(lm.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent_name, _, child = name.rpartition(".")
            setattr(lm.get_submodule(parent_name), child, module.get_base_layer())
    lm.lora = None


def save_adapter(directory: str | Path, lm: torch.nn.Module, weights=None) -> Path:
    """Write ``adapter.json`` and ``adapter.safetensors`` (``weights``: the adapter's own
    matrices by default; training passes the gathered ones)."""
    spec = spec_of(lm)
    if spec is None:
        raise ValueError("save_adapter: the model carries no adapter")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    weights = adapter_weights(lm) if weights is None else weights
    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    save_file(tensors, str(directory / formats.ADAPTER_FILE))
    meta = {"format": FORMAT, "version": formats.FORMAT_VERSION, **asdict(spec)}
    (directory / formats.ADAPTER_CONFIG).write_text(json.dumps(meta, indent=2))
    return directory


def read_spec(directory: str | Path) -> LoraSpec:
    """``adapter.json`` of an adapter directory."""
    path = Path(directory) / formats.ADAPTER_CONFIG
    meta = formats.read_json(path)
    try:
        if meta.pop("format") != FORMAT:
            raise ValueError("not a music-gen LoRA adapter")
        meta.pop("version", None)
        spec = LoraSpec(**{**meta, "targets": tuple(meta["targets"])})
        unknown = set(spec.targets) - TARGETS.keys()
        if unknown or spec.rank <= 0 or not spec.base:
            raise ValueError(f"rank {spec.rank}, targets {spec.targets}, base {spec.base!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed ({exc})") from None
    return spec


def apply_adapter(model, directory: str | Path, spec: LoraSpec | None = None) -> None:
    """Put the adapter of ``directory`` over ``model`` (a ``MusicGen`` of its base) and merge
    it. A base other than the one it was trained over is refused."""
    directory = Path(directory)
    spec = read_spec(directory) if spec is None else spec
    found = fingerprint(model.lm)
    if spec.base_fingerprint and found != spec.base_fingerprint:
        raise CheckpointError(
            f"{directory}: this adapter was trained over another base than {spec.base} "
            f"(fingerprint {found}, the adapter's {spec.base_fingerprint}): load it over "
            "the model it was fine-tuned from"
        )
    weights = formats.read_weights(directory / formats.ADAPTER_FILE)
    attach(model.lm, spec)
    load_adapter_weights(model.lm, weights, directory / formats.ADAPTER_FILE)
    merge(model.lm)
