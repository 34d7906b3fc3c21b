"""`music-gen demo`: the platform end to end, offline."""

from __future__ import annotations

import argparse


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo", help="run the offline demo", description="Run the platform end to end, offline."
    )
    p.add_argument(
        "--workdir", default="work/demo", help="where the demo writes (default work/demo)"
    )
    p.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from music_gen import MusicGen
    from music_gen.audio import write_audio
    from music_gen.config import load_config
    from music_gen.models.codebooks import tiny_calibrated_codec

    workdir = Path(args.workdir)
    print("music-gen demo: a freshly initialised debug model with a small calibrated codec.")
    print("Its weights are RANDOM (nothing is downloaded), so the clip is structured noise.")
    cfg = load_config(overrides=["model.dim=64", "model.text.dim=32"])
    model = MusicGen.from_config(cfg.model, tiny_calibrated_codec())
    prompt = "upbeat jazz with saxophone"
    codes = model.generate_codes([prompt], duration=2.0, seed=0, progress=True)
    path = write_audio(workdir / "random_model.wav", model.decode(codes)[0], model.sample_rate)
    model.save_pretrained(workdir / "random_model")
    print(f"wrote {path} ({codes.shape[-1]} frames x {codes.shape[1]} codebooks for '{prompt}')")
    print(f"saved the model to {workdir / 'random_model'}; try:")
    print(f"  music-gen generate 'calm ambient pad' --model {workdir / 'random_model'} -o pad.wav")
    return 0
