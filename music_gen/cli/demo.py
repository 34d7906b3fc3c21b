"""`music-gen demo`: the platform end to end, offline (music_gen/pipelines/demo/)."""

from __future__ import annotations

import argparse

DESCRIPTION = (
    "Run the platform end to end, offline, in stages: synthetic captioned music, a codec "
    "(trained with Ray Train, or k-means calibrated), Ray Data tokenization, a model "
    "trained with Ray Train, a 2-trial Ray Tune sweep, evaluation (loss, prompt adherence), the MLflow registry "
    "(register, promote to production) and Ray Serve answering prompts over HTTP. "
    "Everything (data, runs, the MLflow sqlite store, the served audio and spectrograms) "
    "stays in --workdir; a second run reuses every stage that finished. About 10 minutes "
    "on 2 cores at the default sizes."
)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole platform end to end, offline",
                       description=DESCRIPTION)  # fmt: skip
    p.add_argument(
        "--workdir", default="work/demo", help="where the demo writes (default work/demo)"
    )
    p.add_argument(
        "--quick", action="store_true", help="the smallest sizes (a minute or two; the tests')"
    )
    p.add_argument(
        "--keep-serving", action="store_true", help="leave the server and its page up until Ctrl-C"
    )
    p.add_argument(
        "--codec",
        choices=["calibrate", "train"],
        help="train the codec with Ray Train (the default: configs/codec/offline.yaml's "
        "recipe, about 4 minutes on 2 cores) or calibrate it by k-means (the default of "
        "--quick: seconds, but its decoder is random, so the audio is noise-like)",
    )
    p.add_argument("--host", default="127.0.0.1", help="address the server binds")
    p.add_argument("--port", type=int, default=8000, help="port of the server (default 8000)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from music_gen.errors import UsageError

    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be 1-65535, got {args.port}")
    from music_gen.pipelines.demo import run_demo as run

    run(
        args.workdir, quick=args.quick, host=args.host, port=args.port,
        keep_serving=args.keep_serving, codec=args.codec, progress=not args.no_progress,
    )  # fmt: skip
    return 0
