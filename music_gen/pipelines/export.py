"""``music-gen export``: a model as a serving bundle (safetensors) or as ONNX graphs.

Both read any source ``MusicGen.from_pretrained`` takes (our directory, a training
checkpoint, a transformers MusicGen dir or hub id, ``models:/NAME@ALIAS``) or a training
run folder (its newest complete checkpoint), and write a folder that does not exist yet
or is empty. The folder is filled under a temporary name beside it and renamed into
place at the end (``outputs.replace_dir``), so a failure leaves nothing behind.

``safetensors``: the ``save_pretrained`` layout (``music_gen.json``, ``model.safetensors``,
``text_encoder/`` with the tokenizer files, ``codec/``) with no training state. A
directory in our format is copied file for file (``checkpoints.export_model``), so the
bundle holds exactly the weights the checkpoint generates with (the EMA, when training
kept one); other sources are loaded and saved. A LoRA adapter (or a run or URI holding
one) is loaded over its base and saved merged: a full checkpoint that needs no base.

``onnx``: three graphs (float32, opset of torch's exporter) and ``onnx_export.json``, which
lists every input and output with its dtype and shape and how to drive them::

    conditioner.onnx  input_ids [B, T], attention_mask [B, T] (+ attribute_ids [B, A])
                      -> memory [B, L, D], memory_mask [B, L]       (L = T + A)
    lm_start.onnx     memory [B, L, D] -> cross_k, cross_v [layers, B, H, L, hd]
    lm_step.onnx      codes [B, K], past_k, past_v [layers, B, H, P, hd],
                      cross_k, cross_v, memory_mask
                      -> logits [B, K, card], present_k, present_v [layers, B, H, P + 1, hd]

``lm_step`` is one step of the delay-pattern decoder (``LM.step`` for one position): the
position is the length ``P`` of the key/value cache fed in, and the cache it returns is
the next step's input (start with ``P = 0``). Guidance and sampling stay with the
caller, as in ``generate_codes``: the batch is the conditional rows, then the null rows
(zero ``cross_k``/``cross_v``, an all-False ``memory_mask``). The graphs are checked
against PyTorch with onnxruntime on inputs of other sizes than the ones traced before the
folder is moved into place. MusicGen-Melody models (a prefix condition, no
cross-attention) and the codec are not exported.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from music_gen.errors import CheckpointError, MusicGenError, UsageError

FORMATS = ("onnx", "safetensors")
ONNX_MANIFEST = "onnx_export.json"
ONNX_FORMAT_VERSION = 1
TOKENIZER_DIR = "tokenizer"
GRAPHS = {
    "conditioner": "conditioner.onnx",
    "lm_start": "lm_start.onnx",
    "lm_step": "lm_step.onnx",
}
RTOL, ATOL = 1e-3, 1e-4
"""How close onnxruntime's outputs must be to PyTorch's (float32 on the CPU)."""


# -- checks before any work -------------------------------------------------------------


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format '{fmt}' ({', '.join(FORMATS)})")
    if fmt == "onnx":
        missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if not _importable(name)]
        if missing:
            raise UsageError(
                f"--format onnx needs {', '.join(missing)}: pip install 'music-gen[onnx]'"
            )
    return fmt


def check_output(output: str | Path) -> Path:
    """A folder that does not exist yet, or an empty one (never merged into)."""
    from music_gen.outputs import check_dir

    path = check_dir(output, "--output")
    if path.is_dir() and any(path.iterdir()):
        raise UsageError(f"--output {path} exists and is not empty; give a new or empty folder")
    return path


def resolve_source(src: str) -> tuple[str, Path | None]:
    """``(what from_pretrained loads, our model directory to copy or None)``.

    A training run folder stands for its newest complete checkpoint; a checkpoint whose
    completeness marker is missing was cut short and is refused.
    """
    from music_gen.models import formats
    from music_gen.pipelines import checkpoints

    kind = formats.source_kind(src)
    path = Path(str(src)).expanduser()
    if kind == "unknown" and path.is_dir():
        newest = checkpoints.newest_complete(path)
        if newest is not None:
            step, directory = newest
            print(
                f"music-gen export: the run's newest complete checkpoint: {directory} (step {step})"
            )
            return str(directory), directory
    if kind == "mlflow":
        from music_gen.platform.registry import download_model  # the MLflow edge

        directory = Path(download_model(str(src)))
        return str(directory), directory
    if kind != "ours":
        return str(src), None
    if (path / checkpoints.TRAIN_STATE).is_dir() and not checkpoints.is_complete(path):
        raise CheckpointError(
            f"checkpoint {path} is incomplete (no {checkpoints.TRAIN_STATE}/"
            f"{checkpoints.COMPLETE_FILE}): it was cut short; export another checkpoint"
        )
    return str(path), path


def export(src: str, fmt: str, output: str | Path) -> Path:
    """Check the format, the output and the source, then write the bundle."""
    from music_gen import MusicGen
    from music_gen.outputs import replace_dir

    check_format(fmt)
    out = check_output(output)
    load_src, directory = resolve_source(src)
    model = MusicGen.from_pretrained(load_src)  # a model that cannot load fails here
    with replace_dir(out) as temp:
        if fmt == "safetensors":
            write_safetensors(model, directory, temp)
        else:
            write_onnx(model, temp, source=str(src))
    return out


# -- safetensors -----------------------------------------------------------------------


def write_safetensors(model, directory: Path | None, out: Path) -> None:
    """Our model directory copied as it is (no ``train_state/``), else ``save_pretrained``
    (a LoRA adapter is then written merged into its base: a full checkpoint)."""
    from music_gen.models.formats import source_kind
    from music_gen.pipelines.checkpoints import export_model

    if directory is not None and source_kind(directory) == "ours":
        export_model(directory, out)
    else:
        model.save_pretrained(out)


# -- ONNX ------------------------------------------------------------------------------


class ConditionerGraph(nn.Module):
    """Token ids (and attribute buckets) -> the cross-attention memory and its mask."""

    def __init__(self, conditioner):
        super().__init__()
        self.conditioner = conditioner

    def forward(self, input_ids, attention_mask, attribute_ids=None):
        cond = self.conditioner
        memory = cond.encode_tokens(input_ids, attention_mask)  # [B, T, D]
        mask = attention_mask.bool()  # [B, T]
        if attribute_ids is None:
            return memory, mask
        # As Conditioner.attribute_tokens after hashing: bucket 0 is "not given".
        tokens = torch.stack(
            [
                cond.attribute_tables[name](attribute_ids[:, i])
                for i, name in enumerate(cond.attributes)
            ],
            dim=1,
        )  # [B, A, D]
        given = attribute_ids > 0  # [B, A]
        memory = torch.cat([memory, tokens * given[..., None].to(tokens.dtype)], dim=1)
        return memory, torch.cat([mask, given], dim=1)  # [B, T + A, D], [B, T + A]


class StartGraph(nn.Module):
    """Memory -> every layer's cross-attention keys and values (``LM.start``)."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, memory):
        pairs = [block.cross_attn.memory_kv(memory) for block in self.lm.blocks]
        return torch.stack([k for k, _ in pairs]), torch.stack([v for _, v in pairs])


class _GrowingCache:
    """What ``SelfAttention`` asks of a cache, for one step: the past plus the new keys."""

    def __init__(self, past_k: torch.Tensor, past_v: torch.Tensor):
        self.k, self.v = past_k, past_v  # [B, H, P, hd]

    def append(self, k, v):
        self.k = torch.cat([self.k, k], dim=2)  # [B, H, P + 1, hd]
        self.v = torch.cat([self.v, v], dim=2)
        return self.k, self.v, None  # one query sees the whole past: no mask


class StepGraph(nn.Module):
    """One decoder step (``LM.step`` for one position) with the cache in and out."""

    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, codes, past_k, past_v, cross_k, cross_v, memory_mask):
        from music_gen.models.lm import memory_bias

        lm = self.lm
        x = lm._embed(codes[:, :, None], start=past_k.shape[3])  # [B, 1, D] at position P
        bias = memory_bias(memory_mask, x.dtype)  # [B, 1, 1, L]
        keys, values = [], []
        for i, block in enumerate(lm.blocks):
            cache = _GrowingCache(past_k[i], past_v[i])
            x = block(x, (cross_k[i], cross_v[i]), bias, cache)
            keys.append(cache.k)
            values.append(cache.v)
        return lm._logits(x)[:, :, 0], torch.stack(keys), torch.stack(values)  # [B, K, card]


def write_onnx(model, out: Path, source: str = "") -> dict:
    """Export the three graphs to ``out``, check them with onnxruntime, write the manifest."""
    lm, cond = model.lm, model.conditioner
    if not lm.cfg.cross_attention:
        raise UsageError(
            "ONNX export covers cross-attention models; this one is prefix-conditioned "
            "(MusicGen-Melody)"
        )
    model.to("cpu", torch.float32)
    cond.tokenizer.save_pretrained(out / TOKENIZER_DIR)
    graphs = {
        "conditioner": ConditionerGraph(cond).eval(),
        "lm_start": StartGraph(lm).eval(),
        "lm_step": StepGraph(lm).eval(),
    }
    # Traced at sizes of 2 or more (the exporter fixes sizes 0 and 1), checked at others:
    # another batch and prompt lengths, a longer cache, and the empty cache of the first
    # step with a null-condition row (zero keys and values, all masked) as guidance has.
    traced = _example_inputs(model, graphs, ["a traced prompt", "a"], past=2)
    checked = _example_inputs(model, graphs, ["three", "prompts of", "other lengths here"], past=5)
    first_step = _example_inputs(model, graphs, ["x", "yz", "w"], past=0)["lm_step"]
    for key in ("cross_k", "cross_v"):
        first_step[key][:, -1] = 0
    first_step["memory_mask"][-1] = False
    dims = _dynamic_shapes(model, traced)
    described = {}
    for name, graph in graphs.items():
        path = out / GRAPHS[name]
        _export_graph(graph, traced[name], dims[name], path, OUTPUT_NAMES[name])
        cases = [checked[name]] + ([first_step] if name == "lm_step" else [])
        described[name] = _describe_and_check(graph, path, cases, name)
    manifest = _manifest(model, described, source, opset=_opset(out / GRAPHS["lm_step"]))
    (out / ONNX_MANIFEST).write_text(json.dumps(manifest, indent=2))
    return manifest


OUTPUT_NAMES = {
    "conditioner": ["memory", "memory_mask"],
    "lm_start": ["cross_k", "cross_v"],
    "lm_step": ["logits", "present_k", "present_v"],
}


@torch.no_grad()
def _example_inputs(model, graphs, prompts: list[str], past: int):
    """Inputs for each graph from real prompts (and ``past`` steps run in PyTorch)."""
    cond, lm = model.conditioner, model.lm
    input_ids, attention_mask = cond.tokenize(prompts)
    inputs: dict[str, dict[str, torch.Tensor]] = {
        "conditioner": {"input_ids": input_ids, "attention_mask": attention_mask}
    }
    if cond.attributes:
        buckets = torch.arange(len(prompts) * len(cond.attributes)) % 3  # some 0: not given
        inputs["conditioner"]["attribute_ids"] = buckets.view(len(prompts), -1)
    memory, memory_mask = graphs["conditioner"](**inputs["conditioner"])
    inputs["lm_start"] = {"memory": memory}
    cross_k, cross_v = graphs["lm_start"](memory)
    cfg = lm.cfg
    shape = (cfg.num_layers, len(prompts), cfg.num_heads, 0, cfg.head_dim)
    past_k, past_v = torch.zeros(shape), torch.zeros(shape)
    codes = torch.full((len(prompts), cfg.num_codebooks), cfg.special_token)
    step = graphs["lm_step"]
    for _ in range(past):  # a real cache: the steps before this one
        logits, past_k, past_v = step(codes, past_k, past_v, cross_k, cross_v, memory_mask)
        codes = logits.argmax(dim=-1)
    inputs["lm_step"] = {
        "codes": codes,
        "past_k": past_k,
        "past_v": past_v,
        "cross_k": cross_k,
        "cross_v": cross_v,
        "memory_mask": memory_mask,
    }
    return inputs


def _dynamic_shapes(model, traced) -> dict[str, dict]:
    from torch.export import Dim

    batch, tokens, memory = Dim("batch"), Dim("tokens"), Dim("memory")
    # The position embedding table bounds the steps: P + 1 rows must exist.
    past = Dim("past", min=0, max=model.lm.positions.shape[0] - 1)
    conditioner = {"input_ids": {0: batch, 1: tokens}, "attention_mask": {0: batch, 1: tokens}}
    if "attribute_ids" in traced["conditioner"]:
        conditioner["attribute_ids"] = {0: batch}
    cache = {1: batch, 3: past}
    cross = {1: batch, 3: memory}
    return {
        "conditioner": conditioner,
        "lm_start": {"memory": {0: batch, 1: memory}},
        "lm_step": {
            "codes": {0: batch},
            "past_k": cache,
            "past_v": cache,
            "cross_k": cross,
            "cross_v": cross,
            "memory_mask": {0: batch, 1: memory},
        },
    }


def _export_graph(graph, inputs: dict, dynamic_shapes: dict, path: Path, output_names) -> None:
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # its notes (torchvision ops it skips) are not ours
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nor are its notes on renamed axes
            program = torch.onnx.export(
                graph,
                (),
                kwargs=inputs,
                dynamic_shapes=dynamic_shapes,
                input_names=list(inputs),
                output_names=output_names,
                dynamo=True,
                verbose=False,
            )
    finally:
        exporter_log.setLevel(level)
    if program is None:
        raise MusicGenError(f"ONNX export of {path.name} produced no program")
    program.save(str(path))


def _describe_and_check(graph, path: Path, cases: list[dict], name: str) -> dict:
    """Inputs/outputs as the ONNX file declares them; each case run in both runtimes."""
    import numpy as np
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for case in cases:
        with torch.no_grad():
            expected = graph(**case)
        got = session.run(None, {key: value.numpy() for key, value in case.items()})
        for output, want, have in zip(OUTPUT_NAMES[name], expected, got, strict=True):
            want = want.numpy()
            if want.dtype == np.bool_:
                ok, diff = bool((want == have).all()), 0.0
            else:
                ok = bool(np.allclose(have, want, rtol=RTOL, atol=ATOL))
                diff = float(np.abs(have - want).max()) if want.size else 0.0
            if not ok or have.shape != want.shape:
                raise MusicGenError(
                    f"ONNX check failed: {name} output {output} differs from PyTorch's "
                    f"(max abs difference {diff:.3g}, shapes {list(have.shape)} vs "
                    f"{list(want.shape)})"
                )
            worst = max(worst, diff)

    def describe(args) -> list[dict]:
        return [{"name": a.name, "dtype": _dtype_name(a.type), "shape": a.shape} for a in args]

    return {
        "file": path.name,
        "inputs": describe(session.get_inputs()),
        "outputs": describe(session.get_outputs()),
        "max_abs_diff_vs_pytorch": worst,
    }


def _opset(path: Path) -> int | None:
    """The default-domain opset a graph was written with."""
    import onnx

    imports = onnx.load(str(path), load_external_data=False).opset_import
    return next((entry.version for entry in imports if entry.domain in ("", "ai.onnx")), None)


def _manifest(model, graphs: dict, source: str, opset: int | None) -> dict:
    from music_gen.models.attributes import BUCKETS

    lm_cfg, cond = model.lm.cfg, model.conditioner
    return {
        "format": "music-gen-onnx",
        "version": ONNX_FORMAT_VERSION,
        "source": source,
        "opset": opset,
        "dtype": "float32",
        "model": {
            "num_codebooks": lm_cfg.num_codebooks,
            "cardinality": lm_cfg.cardinality,
            "special_token": lm_cfg.special_token,
            "audio_channels": lm_cfg.audio_channels,
            "delays": [k // lm_cfg.audio_channels for k in range(lm_cfg.num_codebooks)],
            "num_layers": lm_cfg.num_layers,
            "num_heads": lm_cfg.num_heads,
            "head_dim": lm_cfg.head_dim,
            "dim": lm_cfg.dim,
            "max_steps": int(model.lm.positions.shape[0]),
            "max_frames": model.max_frames,
            "sample_rate": model.sample_rate,
            "frame_rate": model.frame_rate,
        },
        "tokenizer": {
            "dir": TOKENIZER_DIR,
            "max_length": cond.max_length,
            "padding": "right, to the longest prompt; truncated to max_length",
            "pad_token_id": cond.tokenizer.pad_token_id,
        },
        "attributes": {
            "names": list(cond.attributes),
            "buckets": BUCKETS,
            "rule": "attribute_ids[:, i] = music_gen.models.attributes.attribute_bucket("
            "names[i], value); 0 means not given (conditioner.onnx takes attribute_ids "
            "only when names is not empty)",
        },
        "graphs": graphs,
        "decoding": [
            "memory, memory_mask = conditioner(input_ids, attention_mask[, attribute_ids])",
            "guidance: append null rows below the batch: zeros for memory (so cross_k/cross_v "
            "are zeros) and False for memory_mask",
            "cross_k, cross_v = lm_start(memory); past_k = past_v = zeros [layers, B, H, 0, hd]",
            "codes = special_token everywhere (the start step); for step s in 0 .. frames + "
            "max(delays) - 1: logits, past_k, past_v = lm_step(codes, past_k, past_v, "
            "cross_k, cross_v, memory_mask)",
            "guided = uncond + scale * (cond - uncond) (cond rows first); choose codes [B, K] "
            "(argmax, or top-k / top-p sampling); codebook k takes special_token where "
            "s - delays[k] is outside [0, frames)",
            "the codes of frame t of codebook k are the choice of step t + delays[k]",
        ],
    }


def _dtype_name(onnx_type: str) -> str:
    """onnxruntime's ``tensor(float)`` -> ``float32`` (numpy's names)."""
    name = onnx_type.removeprefix("tensor(").removesuffix(")")
    return {"float": "float32", "double": "float64", "float16": "float16"}.get(name, name)


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
