"""``music-gen bench``: run the scripts in ``benchmarks/`` and show their results as one
table, or profile a generation or a training step of a tiny model.

Each benchmark is a script that prints one JSON line (``benchmarks/*.py``); it runs in a
process of its own (with this interpreter), so one that fails or is killed costs its own
row only. ``QUICK`` holds each script's smallest sizes (a smoke run: its figures are not
comparable with a full run's). The table flattens each JSON line into dotted keys.

``profile`` wraps one ``generate_codes`` call or one ``train_step`` (after a warm-up run)
in ``torch.profiler`` and writes a Chrome/Perfetto trace (open it in ``ui.perfetto.dev``
or ``chrome://tracing``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from music_gen.errors import UsageError

QUICK: dict[str, list[str]] = {
    "codec": ["--steps", "10", "--clips", "8", "--heldout", "4", "--seconds", "1"],
    "engine": ["--quick", "--threads", "1"],  # on a shared machine 2 threads spin for nothing
    "generation": ["--steps", "16", "--repeats", "1", "--batches", "1", "--variants", "mono"],
    "lora": ["--steps", "3", "--frames", "20", "--batch-size", "2", "--cardinality", "64",
             "--threads", "1"],
    "learn": ["--codec", "kmeans", "--clips", "24", "--seconds", "2", "--steps", "20",
              "--batch-size", "4", "--per-class", "1"],
    "midi": ["--melodies", "1", "--notes", "6"],
    "serve": ["--duration", "0.5", "--rounds", "1"],
    "tokenize": ["--clips", "2", "--copies", "1", "--seconds", "2", "--segment-seconds", "1",
                 "--actors", "1"],
    "train": ["--steps", "8", "--clips", "24", "--batch-size", "4"],
    "tune": ["--quick", "--steps", "4", "--every", "2", "--grace", "2", "--clips", "16"],
}  # fmt: skip
"""Each benchmark's smallest sizes (its own flags); unknown scripts run as they are."""

PROFILE_KINDS = ("generate", "train")


def benchmarks_dir(directory: str | Path | None = None) -> Path:
    """``directory``, else the checkout's ``benchmarks/`` (beside the package), else ./benchmarks."""
    candidates = (
        [Path(directory)]
        if directory is not None
        else [Path(__file__).resolve().parents[1] / "benchmarks", Path.cwd() / "benchmarks"]
    )
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.py")):
            return candidate
    where = directory or "beside the package or in the current folder"
    raise UsageError(f"no benchmarks folder ({where}): run from a music-gen checkout or give --dir")


def find_benchmarks(directory: Path, only: str | None = None) -> dict[str, Path]:
    """``{name: script}`` of the folder (sorted), or of the comma-separated ``only`` names."""
    found = {p.stem: p for p in sorted(directory.glob("*.py")) if not p.stem.startswith("_")}
    if only is None:
        return found
    names = [name.strip() for name in only.split(",") if name.strip()]
    unknown = [name for name in names if name not in found]
    if unknown or not names:
        raise UsageError(
            f"--only: no benchmark {', '.join(map(repr, unknown)) or 'named'} "
            f"(there are: {', '.join(found)})"
        )
    return {name: found[name] for name in dict.fromkeys(names)}


def run_benchmark(
    name: str, script: Path, quick: bool, timeout: float | None = None, verbose: bool = False
) -> dict:
    """Run one script; its JSON line plus ``quick`` and ``wall_s``, or an ``error`` row."""
    args = QUICK.get(name, []) if quick else []
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, str(script), *args],
            stdout=subprocess.PIPE,
            stderr=None if verbose else subprocess.PIPE,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    except subprocess.TimeoutExpired:
        return {"benchmark": name, "error": f"timed out after {timeout:g} s", "quick": quick}
    wall = round(time.perf_counter() - started, 1)
    result = _last_json_line(done.stdout)
    if done.returncode != 0 or result is None:
        tail = (done.stderr or "").strip().splitlines()[-1:] or ["no JSON line printed"]
        return {"benchmark": name, "error": f"exit {done.returncode}: {tail[0]}", "quick": quick}
    return {**result, "quick": quick, "wall_s": wall}


def _last_json_line(stdout: str) -> dict | None:
    for line in reversed(stdout.strip().splitlines()):
        try:
            value = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    return None


def flatten(value, prefix: str = "") -> list[tuple[str, str]]:
    """A JSON object -> ``(dotted key, text)`` rows (lists stay one compact JSON cell)."""
    if isinstance(value, dict):
        rows = []
        for key, item in value.items():
            rows += flatten(item, f"{prefix}.{key}" if prefix else str(key))
        return rows
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    return [(prefix, text)]


def table(results: list[dict]) -> str:
    """One table of every result: benchmark, metric, value."""
    rows = [("benchmark", "metric", "value")]
    for result in results:
        name = str(result.get("benchmark", "?"))
        rows += [(name, key, text) for key, text in flatten(result) if key != "benchmark"]
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    lines = [f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c}" for a, b, c in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


# -- profiling -------------------------------------------------------------------------


def profile(kind: str, trace: Path, device: str = "cpu", steps: int = 1) -> str:
    """Profile ``steps`` generations or training steps of a tiny model; write the trace to
    ``trace`` (atomically) and return the profiler's table of the costliest operators."""
    import torch
    from torch.profiler import ProfilerActivity, record_function

    from music_gen.models.generator import pick_device
    from music_gen.outputs import temp_name

    if kind not in PROFILE_KINDS:
        raise UsageError(f"--profile: unknown kind '{kind}' ({', '.join(PROFILE_KINDS)})")
    run_device = pick_device(device)
    if run_device.type == "cpu":  # else a CUDA build of torch logs a GPU count error
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
    work = _generate_call(run_device) if kind == "generate" else _train_call(run_device)
    work()  # warm-up: first-call allocations and lazy imports are not the steady state
    activities = [ProfilerActivity.CPU]
    if run_device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(steps):
            with record_function(kind):
                work()
        if run_device.type == "cuda":
            torch.cuda.synchronize()
    trace.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_name(trace)
    try:
        prof.export_chrome_trace(str(temp))
        os.replace(temp, trace)
    finally:
        temp.unlink(missing_ok=True)
    sort = "self_cuda_time_total" if run_device.type == "cuda" else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=12)


def _generate_call(device):
    from music_gen.testing import tiny_musicgen

    model = tiny_musicgen().to(device)

    def generate():
        model.generate_codes(["a profiled prompt"], duration=0.5, seed=0)

    return generate


def _train_call(device):
    import torch

    from music_gen.pipelines.losses import Batch
    from music_gen.pipelines.train.step import TrainModule, build_optimizer, train_step
    from music_gen.testing import tiny_musicgen

    model = tiny_musicgen().to(device)
    core = TrainModule(model.lm, model.conditioner).train()
    optimizer = build_optimizer(core, 1e-3, 0.0, (0.9, 0.95))
    cfg = model.lm.cfg
    generator = torch.Generator().manual_seed(0)
    codes = torch.randint(0, cfg.cardinality, (4, cfg.num_codebooks, 50), generator=generator)
    batch = Batch(codes, torch.full((4,), 50), [f"profiled clip {i}" for i in range(4)], [{}] * 4)
    drop = torch.zeros(4, dtype=torch.bool)

    def step():
        train_step(core, optimizer, batch, drop, cfg.special_token, device, "fp32", 1.0)

    return step
