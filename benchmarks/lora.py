"""LoRA against a full fine-tune of the same model: trainable parameters, step time, memory.

Both run the training step of ``pipelines/train/step.py`` (delay pattern, conditioning,
loss, backward, clipping, AdamW) on the same base weights and the same random batches.
Each mode runs in a fresh process so that its peak memory is its own: on CUDA the peak
of allocated memory, on the CPU the peak resident set of the process (the base's
weights and the Python runtime included, so the CPU ratio understates the saving of
gradients and optimizer state). Step time is the mean after the first ``WARM`` steps.
Prints one JSON line::

    python benchmarks/lora.py                      # dim 512 x 8 layers on the CPU
    python benchmarks/lora.py --preset small --device cuda --precision bf16
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

WARM = 2


def model_overrides(args) -> list[str]:
    if args.preset:
        return [f"model.preset={args.preset}", "model.text.dim=64"]
    return ["model.dim=512", "model.num_layers=8", "model.num_heads=8", "model.text.dim=64"]


def run_mode(args) -> dict:
    """One mode in this process: ``{"trainable", "total", "step_s", "peak_gb"}``."""
    import resource

    import torch

    from music_gen import MusicGen
    from music_gen.config import load_config
    from music_gen.models import lora
    from music_gen.models.codebooks import tiny_calibrated_codec
    from music_gen.pipelines.losses import Batch
    from music_gen.pipelines.train import step as T

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    cfg = load_config(overrides=[*model_overrides(args), "model.max_frames=500"])
    codec = tiny_calibrated_codec(num_codebooks=4, cardinality=args.cardinality)
    torch.manual_seed(0)
    model = MusicGen.from_config(cfg.model, codec)
    if args.mode == "lora":
        model.conditioner.requires_grad_(False)
        spec = lora.LoraSpec(rank=args.rank, alpha=2.0 * args.rank, targets=tuple(args.targets))
        lora.attach(model.lm, spec)
    model.conditioner.encoder.requires_grad_(False)  # frozen T5 in both modes, as by default
    core = T.TrainModule(model.lm, model.conditioner).to(device).train()
    optimizer = T.build_optimizer(core, 1e-4, 0.1, (0.9, 0.95))
    generator = torch.Generator().manual_seed(1)
    card, frames = args.cardinality, args.frames
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for step in range(args.steps):
        codes = torch.randint(0, card, (args.batch_size, 4, frames), generator=generator)
        batch = Batch(
            codes, torch.full((args.batch_size,), frames), ["warm pads"] * args.batch_size,
            [{}] * args.batch_size,
        )  # fmt: skip
        drop = torch.zeros(args.batch_size, dtype=torch.bool)
        started = time.perf_counter()
        T.train_step(core, optimizer, batch, drop, model.lm.cfg.special_token, device,
                     args.precision, 1.0)  # fmt: skip
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= WARM:
            seconds.append(time.perf_counter() - started)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 1e9
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # KiB -> GB
    trainable = sum(p.numel() for p in core.parameters() if p.requires_grad)
    total = sum(p.numel() for p in core.lm.parameters())
    return {
        "trainable": trainable,
        "lm_parameters": total,
        "step_s": round(sum(seconds) / len(seconds), 4),
        "peak_gb": round(peak, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=["debug", "small", "medium", "large"], default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--targets", nargs="+", default=["self_attn", "cross_attn"])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--cardinality", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--mode", choices=["full", "lora"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps <= WARM:
        parser.error(f"--steps must be above {WARM}")
    if args.mode:  # a child: one mode, its figures as JSON
        print(json.dumps(run_mode(args)))
        return
    results = {}
    for mode in ("full", "lora"):
        child = [sys.executable, __file__, *sys.argv[1:], "--mode", mode]
        out = subprocess.run(child, check=True, capture_output=True, text=True).stdout
        results[mode] = json.loads(out.strip().splitlines()[-1])
    full, adapted = results["full"], results["lora"]
    print(
        json.dumps(
            {
                "benchmark": "lora",
                "device": args.device,
                "model": args.preset or "dim512-L8-H8",
                "precision": args.precision,
                "rank": args.rank,
                "targets": args.targets,
                "batch": f"{args.batch_size} x {args.frames} frames",
                "full": full,
                "lora": adapted,
                "trainable_share": round(adapted["trainable"] / full["trainable"], 5),
                "step_time_ratio": round(adapted["step_s"] / full["step_s"], 3),
                "peak_memory_ratio": round(adapted["peak_gb"] / full["peak_gb"], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
