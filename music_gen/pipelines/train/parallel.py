"""Data parallelism across a worker group, in plain ``torch.distributed``: DDP replicas or
FSDP2 shards, whole weights and optimizer state out of either, by parameter name.

Checkpoints hold whole tensors under parameter names whatever the strategy, so a run
may resume under another strategy or world size.
"""

from __future__ import annotations

import torch
from torch import nn

from music_gen.models import formats


def wrap_model(core: nn.Module, strategy: str, device: torch.device) -> nn.Module:
    """DDP (replicas) or FSDP2 (shards) across the process group; the module itself alone."""
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return core
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard, register_fsdp_forward_method

        for block in core.lm.blocks:
            # LM.forward calls cross_attn.memory_kv outside the block's forward: its own
            # unit, with that method hooked, gathers the weights it needs.
            fully_shard(block.cross_attn)
            register_fsdp_forward_method(block.cross_attn, "memory_kv")
            fully_shard(block)
        frozen = {p for p in core.conditioner.encoder.parameters() if not p.requires_grad}
        return fully_shard(core, ignored_params=frozen or None)
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device] if device.type == "cuda" else None
    # The LM's buffers are constants (positions, offsets): no need to broadcast them each step.
    return DistributedDataParallel(core, device_ids=device_ids, forward_sync_buffers=False)


def is_sharded(model: nn.Module) -> bool:
    """Whether ``wrap_model`` sharded the model (FSDP2 changes the module's class in place)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_weights(model: nn.Module, core: nn.Module) -> dict[str, torch.Tensor]:
    """All weights under ``MusicGen.state_dict`` names (under FSDP a collective, and only
    rank 0 gets them)."""
    if is_sharded(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
    else:
        state = core.state_dict()
    # TrainModule names its parts lm.* and conditioner.*; the checkpoint says lm.* and cond.*
    parts: dict[str, dict[str, torch.Tensor]] = {"lm": {}, "cond": {}}
    for key, value in state.items():
        part, _, name = key.partition(".")
        parts["cond" if part == "conditioner" else part][name] = value.detach().cpu()
    return formats.join_weights(parts)  # the text encoder is saved in its own format


def optimizer_state(model: nn.Module, core: nn.Module, optimizer) -> dict:
    """AdamW state keyed by parameter names with whole tensors, whatever the strategy, so a
    run may resume under another one (under FSDP a collective; rank 0 gets the state)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    if is_sharded(model):
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_optimizer_state_dict(model, optimizer, options=options)
    return get_optimizer_state_dict(core, optimizer)


def load_optimizer_state(model: nn.Module, core: nn.Module, optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    if is_sharded(model):
        options = StateDictOptions(full_state_dict=True)
        set_optimizer_state_dict(model, optimizer, state, options=options)
    else:
        set_optimizer_state_dict(core, optimizer, state)
