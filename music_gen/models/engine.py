"""The generation engine: a static-shape decode step over N slots (continuous batching).

``MusicGen.generate_codes`` runs one batch from start to end: every row waits for the
longest, and a new request waits for the whole batch. The engine instead keeps N
*slots*, each one request in flight with its own position, conditioning, sampling
settings, seed and length. Between decode steps a queued request takes a free slot
(its cross-attention keys/values are written into the slot's rows) and joins the
running batch; a slot whose request reached its length hands its codes back at once
and is free for the next one::

    engine = Engine(model, slots=8)
    engine.submit(Request("lofi piano", frames=250, seed=1))
    while engine.busy:
        for done in engine.step():      # one delayed step for every active slot
            use(done.request, done.codes)   # codes [K, T]

Every tensor the step touches has a fixed shape (``2N`` rows: conditional rows, then
the null-condition rows of classifier-free guidance; a cache of ``max_steps``
positions; memory padded to ``memory_len`` tokens) and positions are tensors, not
Python ints, so the step can be captured once as a CUDA graph and replayed
(``Engine(..., graphs=True)`` on a CUDA device). On the CPU it runs eagerly. Nothing
in a step reads the device back: the sampler takes each slot's settings as the host
knows them, and the host counts each slot's steps itself. Keys past a slot's position are masked, so a freed and reused
slot carries nothing of its previous request.

What it computes is what ``generate_codes`` computes for one row: greedy codes are
identical and a seeded row draws the same codes whatever else is in flight (tests
compare the two). Audio prompts and windows longer than the context are
``generate_codes``' job; requests here are at most ``max_frames`` long.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from music_gen.errors import UsageError
from music_gen.models import sampling
from music_gen.models.lm import memory_bias
from music_gen.models.patterns import revert_delay


@dataclass
class Request:
    """One generation: a prompt and its settings (as ``generate_codes`` takes them)."""

    prompt: str
    frames: int
    temperature: float = 1.0
    top_k: int = 250
    top_p: float = 0.0
    guidance_scale: float = 3.0
    seed: int | None = None
    attributes: dict | None = None
    tag: Any = None
    """The caller's handle for the request (handed back with the codes)."""
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class Finished:
    request: Request
    codes: torch.Tensor  # [K, T]
    first_step_s: float
    """Seconds from submission to the slot's first decode step (time to first token)."""
    total_s: float
    """Seconds from submission to the last code."""


@dataclass
class _Slot:
    request: Request
    steps: int
    """Delayed steps to run: frames + levels - 1 (levels: K, or K / 2 for stereo)."""
    generator: torch.Generator | None
    settings: dict[str, float]
    """temperature, top_k, top_p as checked: known on the host, so sampling needs no sync."""
    fed: int = 0
    """Delayed steps run so far (the host's copy of ``Engine.position``)."""
    first_step_s: float | None = None


class Engine:
    """N decode slots over one ``MusicGen`` (see the module docstring)."""

    def __init__(self, model, slots: int = 8, memory_len: int | None = None, graphs: bool = False):
        lm, cond = model.lm, model.conditioner
        cfg = lm.cfg
        if not cfg.cross_attention:
            raise UsageError(
                "the engine does not drive prefix-conditioned (MusicGen-Melody) models yet: "
                "use generate_codes"
            )
        self.model, self.num_slots = model, slots
        self.max_frames = model.max_frames
        self.channels = cfg.audio_channels
        self.max_steps = self.max_frames + cfg.num_levels - 1
        self.memory_len = memory_len or cond.max_length + len(cond.attributes)
        device, dtype = model.device, lm.head.weight.dtype
        rows, heads, head_dim = 2 * slots, cfg.num_heads, cfg.head_dim
        self.cache_k = [
            torch.zeros(rows, heads, self.max_steps, head_dim, device=device, dtype=dtype)
            for _ in lm.blocks
        ]  # each [2N, H, S, hd]
        self.cache_v = [torch.zeros_like(k) for k in self.cache_k]
        self.memory_k = [
            torch.zeros(rows, heads, self.memory_len, head_dim, device=device, dtype=dtype)
            for _ in lm.blocks
        ]  # each [2N, H, L, hd]
        self.memory_v = [torch.zeros_like(k) for k in self.memory_k]
        self.memory_mask = torch.zeros(rows, self.memory_len, dtype=torch.bool, device=device)
        self.position = torch.zeros(slots, dtype=torch.long, device=device)  # steps fed
        special = cfg.special_token
        # seq[:, :, 0] is the start token; seq[:, :, s + 1] holds delayed step s.
        self.seq = torch.full(
            (slots, cfg.num_codebooks, self.max_steps + 1), special, dtype=torch.long, device=device
        )
        self.frames = torch.ones(slots, dtype=torch.long, device=device)  # each slot's length
        # The delay of each codebook: its level (stereo interleaves left/right per level).
        self.delay = torch.arange(cfg.num_codebooks, device=device) // cfg.audio_channels  # [K]
        self.settings = {
            "temperature": torch.ones(slots, device=device),
            "top_k": torch.ones(slots, dtype=torch.long, device=device),
            "top_p": torch.zeros(slots, device=device),
        }
        self.scale = torch.ones(slots, device=device)
        self.slots: list[_Slot | None] = [None] * slots
        self.queue: deque[Request] = deque()
        if graphs and device.type != "cuda":
            raise UsageError("CUDA graphs need a CUDA device (the engine runs eagerly elsewhere)")
        self.graphs = graphs
        self._graph: Any = None  # torch.cuda.CUDAGraph once captured
        self._graph_logits: torch.Tensor | None = None
        self._live: list[int] = []
        self._live_rows = torch.zeros(0, dtype=torch.long, device=device)

    # -- requests -------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return bool(self.queue) or any(slot is not None for slot in self.slots)

    @property
    def active(self) -> int:
        return sum(slot is not None for slot in self.slots)

    def submit(self, request: Request) -> None:
        if not 1 <= request.frames <= self.max_frames:
            raise UsageError(f"frames must be in [1, {self.max_frames}], got {request.frames}")
        self.queue.append(request)

    def _admit(self) -> None:
        """Move queued requests into free slots (conditioning computed, cache reset)."""
        free = [i for i, slot in enumerate(self.slots) if slot is None]
        taken = [self.queue.popleft() for _ in range(min(len(free), len(self.queue)))]
        if not taken:
            return
        memory, mask = self.model.conditioner(
            [r.prompt for r in taken], [r.attributes or {} for r in taken]
        )  # [n, L, D], [n, L]
        if memory.shape[1] > self.memory_len:
            raise UsageError(f"conditioning of {memory.shape[1]} tokens > {self.memory_len}")
        memory = F.pad(memory, (0, 0, 0, self.memory_len - memory.shape[1]))  # [n, Lmax, D]
        mask = F.pad(mask, (0, self.memory_len - mask.shape[1]))
        index = torch.tensor(free[: len(taken)], device=memory.device)
        for block, mem_k, mem_v in zip(
            self.model.lm.blocks, self.memory_k, self.memory_v, strict=True
        ):
            k, v = block.cross_attn.memory_kv(memory.to(mem_k.dtype))  # [n, H, L, hd]
            mem_k[index], mem_v[index] = k, v
            # Null rows: zero memory gives zero keys/values (no biases), fully masked.
            mem_k[index + self.num_slots] = 0
            mem_v[index + self.num_slots] = 0
        self.memory_mask[index] = mask
        self.memory_mask[index + self.num_slots] = False
        self.position[index] = 0
        self.frames[index] = torch.tensor([r.frames for r in taken], device=memory.device)
        self.seq[index] = self.model.lm.cfg.special_token
        levels = self.model.lm.cfg.num_levels
        for slot_index, request in zip(index.tolist(), taken, strict=True):
            check = sampling_settings(request)
            for name, value in check.items():
                if name == "guidance_scale":
                    self.scale[slot_index] = value
                else:
                    self.settings[name][slot_index] = value
            generator = None
            if request.seed is not None:
                generator = torch.Generator(device=memory.device).manual_seed(int(request.seed))
            steps = request.frames + levels - 1
            self.slots[slot_index] = _Slot(request, steps, generator, check)

    # -- the decode step --------------------------------------------------------------

    @torch.inference_mode()
    def step(self) -> list[Finished]:
        """Admit what fits, run one delayed step for every active slot, return those done."""
        self._admit()
        live = [i for i, slot in enumerate(self.slots) if slot is not None]
        if not live:
            return []
        now = time.perf_counter()
        for i in live:
            slot = self.slots[i]
            if slot is not None and slot.first_step_s is None:
                slot.first_step_s = now - slot.request.submitted
        logits = self._replay() if self.graphs else self._forward()  # [2N, K, card]
        logits = sampling.apply_guidance(logits, self.scale)  # [N, K, card]
        rows = self._rows(live)
        running = [slot for slot in (self.slots[i] for i in live) if slot is not None]
        host = sampling.HostSettings(
            top_k=tuple(int(slot.settings["top_k"]) for slot in running),
            top_p=tuple(slot.settings["top_p"] for slot in running),
            temperature=tuple(slot.settings["temperature"] for slot in running),
        )
        chosen = sampling.sample(
            logits[rows],
            generators=[slot.generator for slot in running],
            host=host,
            **{name: value[rows] for name, value in self.settings.items()},
        )  # [n, K]
        positions = self.position[rows]  # [n]
        special = self.model.lm.cfg.special_token
        # The delay pattern of each slot's own length: codebook k holds a real code at
        # step s when frame s - delay[k] exists (patterns.valid_mask, per slot).
        shift = positions[:, None] - self.delay[None, :]  # [n, K]
        real = (shift >= 0) & (shift < self.frames[rows, None])
        chosen = torch.where(real, chosen, special)
        self.seq[rows, :, positions + 1] = chosen
        self.position[rows] += 1
        for slot in running:
            slot.fed += 1
        return self._collect(live)

    def _rows(self, live: list[int]) -> torch.Tensor:
        """The live slots as a device tensor, copied from the host only when they change
        (a copy from the host waits for the device)."""
        if self._live != live:
            self._live, self._live_rows = live, torch.tensor(live, device=self.position.device)
        return self._live_rows

    def _replay(self) -> torch.Tensor:
        """``_forward`` replayed as one CUDA graph (captured at the first call).

        Everything the step reads or writes is a buffer of fixed shape updated in place
        (codes, positions, caches, conditioning, masks), so one capture serves every
        later step, whichever slots are live. The warm-up runs compute exactly what the
        captured step then computes at the same positions: they write nothing a later
        step would not overwrite.
        """
        if self._graph is None:
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                for _ in range(2):  # kernels chosen and memory pools filled before capture
                    self._forward()
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._graph_logits = self._forward()  # [2N, K, card], the graph's output
            self._graph = graph
        self._graph.replay()
        assert self._graph_logits is not None
        return self._graph_logits

    def _forward(self) -> torch.Tensor:
        """Feed every slot's last step at its own position: logits ``[2N, K, card]``."""
        lm = self.model.lm
        slots = torch.arange(self.num_slots, device=self.position.device)
        codes = self.seq[slots, :, self.position]  # [N, K]
        position = torch.cat([self.position, self.position])  # [2N] (null rows mirror)
        codes = torch.cat([codes, codes])  # [2N, K]
        x = lm.embed(codes + lm.codebook_offsets).sum(dim=1)  # [2N, D]
        x = (x + lm.positions[position].to(x.dtype))[:, None]  # [2N, 1, D]
        steps = torch.arange(self.max_steps, device=x.device)
        visible = steps[None, :] <= position[:, None]  # [2N, S]
        self_bias = memory_bias(visible, x.dtype)  # [2N, 1, 1, S]
        cross_bias = memory_bias(self.memory_mask, x.dtype)  # [2N, 1, 1, L]
        rows = torch.arange(2 * self.num_slots, device=x.device)
        for block, cache_k, cache_v, mem_k, mem_v in zip(
            lm.blocks, self.cache_k, self.cache_v, self.memory_k, self.memory_v, strict=True
        ):
            attn = block.self_attn
            q, k, v = (
                t.view(t.shape[0], 1, attn.num_heads, -1).transpose(1, 2)
                for t in attn.qkv(block.norm_self(x)).chunk(3, dim=-1)
            )  # each [2N, H, 1, hd]
            cache_k[rows, :, position] = k[:, :, 0]
            cache_v[rows, :, position] = v[:, :, 0]
            y = F.scaled_dot_product_attention(q, cache_k, cache_v, attn_mask=self_bias)
            x = x + attn.out(y.transpose(1, 2).reshape(x.shape))
            cross = block.cross_attn
            q = cross.q(block.norm_cross(x)).view(x.shape[0], 1, cross.num_heads, -1)
            y = F.scaled_dot_product_attention(
                q.transpose(1, 2), mem_k, mem_v, attn_mask=cross_bias
            )  # [2N, H, 1, hd]
            x = x + cross.out(y.transpose(1, 2).reshape(x.shape))
            x = x + block.fc2(F.gelu(block.fc1(block.norm_ffn(x))))
        return lm._logits(x)[:, :, 0]  # [2N, K, card]

    def _collect(self, live: Sequence[int]) -> list[Finished]:
        done = []
        now = time.perf_counter()
        for i in live:
            slot = self.slots[i]
            if slot is None or slot.fed < slot.steps:
                continue
            delayed = self.seq[i : i + 1, :, 1 : slot.steps + 1]
            codes = revert_delay(delayed, self.channels)[0]  # [K, T]
            request = slot.request
            done.append(
                Finished(request, codes.clone(), slot.first_step_s or 0.0, now - request.submitted)
            )
            self.slots[i] = None
            self.position[i] = 0  # a free slot idles at position 0 until it is reused
        return done

    def run(self, requests: Sequence[Request]) -> list[torch.Tensor]:
        """Submit ``requests``, step until all are done; their codes in the given order."""
        for request in requests:
            self.submit(request)
        found: dict[int, torch.Tensor] = {}
        while self.busy:
            for done in self.step():
                found[id(done.request)] = done.codes
        return [found[id(request)] for request in requests]


def sampling_settings(request: Request) -> dict[str, float]:
    """A request's settings, checked as ``generate_codes`` checks them."""
    from music_gen.models.generator import _per_row

    checks = {
        "temperature": (request.temperature, torch.float32, 0.0, None),
        "top_k": (request.top_k, torch.long, 0, None),
        "top_p": (request.top_p, torch.float32, 0.0, 1.0),
        "guidance_scale": (
            1.0 if request.guidance_scale is None else request.guidance_scale,
            torch.float32,
            0.0,
            None,
        ),
    }
    return {
        name: _per_row(value, 1, dtype, name, low, high).item()
        for name, (value, dtype, low, high) in checks.items()
    }
