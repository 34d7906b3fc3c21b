"""`music-gen bench`: the benchmarks as one table, or a profiler trace of a tiny model."""

from __future__ import annotations

import argparse


def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench",
        help="run the benchmarks (one table) or profile a step",
        description=(
            "Run the scripts in benchmarks/ (each prints one JSON line; some take many "
            "minutes) and print their results as one table. --profile instead wraps one "
            "generation or training step of a tiny model in torch.profiler and writes a "
            "Chrome/Perfetto trace."
        ),
    )
    p.add_argument("--only", metavar="NAME[,NAME]", help="these benchmarks only (default: all)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="each benchmark's smallest sizes (a smoke run; figures not comparable)",
    )
    p.add_argument("--dir", help="the benchmarks folder (default: the checkout's benchmarks/)")
    p.add_argument("--timeout", type=float, help="seconds before a benchmark is stopped")
    p.add_argument("--output", "-o", help="also write the results as JSON lines to this file")
    p.add_argument(
        "--profile", choices=["generate", "train"], help="profile instead of benchmarking"
    )
    p.add_argument("--trace", help="where --profile writes its trace (default: KIND.trace.json)")
    p.add_argument("--steps", type=int, default=1, help="--profile: calls inside the trace")
    p.add_argument("--device", default="cpu", help="--profile: cpu, cuda, cuda:N")
    p.add_argument(
        "--verbose", "-v", action="store_true", help="show the benchmarks' own stderr as they run"
    )
    p.set_defaults(run=run_bench)


def run_bench(args: argparse.Namespace) -> int:
    from music_gen.errors import UsageError

    if args.profile is not None:
        if args.only or args.quick or args.output:
            raise UsageError("--profile runs no benchmarks: drop --only, --quick and --output")
        return _profile(args)
    if args.trace is not None:
        raise UsageError("--trace is for --profile generate|train")
    return _benchmarks(args)


def _benchmarks(args: argparse.Namespace) -> int:
    import json
    import sys

    from music_gen import bench, outputs
    from music_gen.errors import MusicGenError, UsageError

    if args.timeout is not None and args.timeout <= 0:
        raise UsageError("--timeout must be > 0 seconds")
    output = outputs.check_file(args.output, "--output") if args.output else None
    scripts = bench.find_benchmarks(bench.benchmarks_dir(args.dir), args.only)
    results = []
    for name, script in scripts.items():
        print(f"[bench] {name}{' (quick)' if args.quick else ''} ...", file=sys.stderr, flush=True)
        result = bench.run_benchmark(name, script, args.quick, args.timeout, args.verbose)
        status = result.get("error") or f"{result['wall_s']} s"
        print(f"[bench] {name}: {status}", file=sys.stderr, flush=True)
        results.append(result)
    print(bench.table(results))
    if output is not None:
        outputs.write_text(output, "".join(json.dumps(r) + "\n" for r in results))
    failed = [r["benchmark"] for r in results if "error" in r]
    if failed:
        raise MusicGenError(
            f"{len(failed)} of {len(results)} benchmarks failed: {', '.join(failed)}"
        )
    return 0


def _profile(args: argparse.Namespace) -> int:
    from music_gen import bench, outputs
    from music_gen.errors import UsageError

    if args.steps < 1:
        raise UsageError("--steps must be at least 1")
    trace = outputs.check_file(args.trace or f"{args.profile}.trace.json", "--trace")
    print(bench.profile(args.profile, trace, args.device, args.steps))
    print(f"wrote {trace} (open it in https://ui.perfetto.dev or chrome://tracing)")
    return 0
