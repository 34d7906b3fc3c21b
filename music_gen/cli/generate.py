"""`music-gen generate`: prompts in, audio files out."""

from __future__ import annotations

import argparse
import re

from music_gen.cli.common import config_args, device_args, load_args_config


def add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "generate",
        help="generate music from text",
        description="Generate audio for one prompt (--output) or a file of prompts (--output-dir).",
    )
    p.add_argument("prompt", nargs="?", help="text prompt (or use --prompts FILE)")
    src = p.add_mutually_exclusive_group()
    src.add_argument(
        "--model", help="checkpoint dir, transformers MusicGen dir/hub id, models:/NAME@ALIAS"
    )
    src.add_argument(
        "--random-init",
        action="store_true",
        help="a freshly initialised model from --config (random weights: noise, for trying the tool)",
    )
    p.add_argument("--prompts", help="text file, one prompt per line (batch generation)")
    p.add_argument("--output", "-o", help="output file for a single prompt (default: out.<format>)")
    p.add_argument("--output-dir", help="output directory for --prompts")
    p.add_argument(
        "--format", choices=["wav", "flac", "mp3", "ogg"], help="default: from --output, else wav"
    )
    p.add_argument(
        "--duration", type=float, default=10.0, help="seconds, including any audio prompt"
    )
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=250, help="1 is greedy, 0 disables")
    p.add_argument("--top-p", type=float, default=0.0, help="0 disables")
    p.add_argument(
        "--cfg", type=float, default=3.0, help="classifier-free guidance scale (1 = none)"
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--audio-prompt", help="audio file to continue from")
    p.add_argument(
        "--melody",
        help="audio file whose melody to follow (MusicGen-Melody models; cut to --duration, "
        "shorter ones looped)",
    )
    p.add_argument("--batch-size", type=int, default=8, help="prompts generated together")
    p.add_argument(
        "--midi",
        action="store_true",
        help="also write each clip's melody line as MIDI beside it (NAME.mid; the midi extra)",
    )
    device_args(p)
    config_args(p)
    p.set_defaults(run=run_generate)


def run_generate(args: argparse.Namespace) -> int:
    from music_gen.errors import UsageError
    from music_gen.models.generator import check_prompts

    prompts = check_prompts(_read_prompts(args))
    outputs = _output_paths(args, prompts)
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    midi_outputs = _midi_paths(outputs) if args.midi else None
    model = _load_model(args)
    prompt_codes = _audio_prompt_codes(model, args.audio_prompt)
    melody = _melody(model, args.melody)
    from music_gen.audio import write_audio

    for start in range(0, len(prompts), args.batch_size):
        chunk = prompts[start : start + args.batch_size]
        codes = model.generate_codes(
            chunk,
            duration=args.duration,
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            guidance_scale=args.cfg,
            seed=None if args.seed is None else [args.seed + start + i for i in range(len(chunk))],
            prompt_codes=prompt_codes,
            progress=True,
            **melody,
        )
        audio = model.decode(codes)
        for i, clip in enumerate(audio, start):
            write_audio(outputs[i], clip, model.sample_rate)
            print(outputs[i])
            if midi_outputs:
                _write_midi(midi_outputs[i], clip, model.sample_rate)
    return 0


def _midi_paths(outputs: list) -> list:
    """``--midi``: NAME.mid beside each audio file, checked (and the extra found) up front."""
    from music_gen import outputs as checks
    from music_gen.audio.midi import require_midi

    require_midi()
    return [checks.check_file(path.with_suffix(".mid"), "--midi") for path in outputs]


def _write_midi(path, clip, sample_rate: int) -> None:
    from music_gen.audio.midi import summary, transcribe, write_midi

    notes = transcribe(clip, sample_rate)  # clip: [C, S]
    write_midi(path, notes)
    print(f"{path}  {summary(notes)}")


def _read_prompts(args: argparse.Namespace) -> list[str]:
    from pathlib import Path

    from music_gen.errors import UsageError

    if (args.prompt is None) == (args.prompts is None):
        raise UsageError("give one prompt or --prompts FILE (not both)")
    if args.prompts is None:
        return [args.prompt]
    try:
        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read prompts file: {exc.strerror}: {args.prompts}") from None
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"prompts file {args.prompts} is not UTF-8 text (byte {exc.start}): save it as UTF-8"
        ) from None
    prompts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not prompts:
        raise UsageError(f"no prompts in {args.prompts}")
    return prompts


def _output_paths(args: argparse.Namespace, prompts: list[str]) -> list:
    """Decide every output path before generating, so a bad path fails fast."""
    from pathlib import Path

    from music_gen import outputs
    from music_gen.errors import UsageError

    if args.prompts is None:
        if args.output_dir:
            raise UsageError("--output-dir is for --prompts; use --output for one prompt")
        fmt = args.format or (
            Path(args.output).suffix.lstrip(".").lower() if args.output else "wav"
        )
        if fmt not in ("wav", "flac", "mp3", "ogg"):
            raise UsageError(f"unknown audio format '{fmt}' (wav, flac, mp3, ogg)")
        path = Path(args.output or f"out.{fmt}")
        if args.format and path.suffix.lstrip(".").lower() != fmt:
            path = path.with_suffix(f".{fmt}")
        return [outputs.check_file(path, "--output")]
    if not args.output_dir:
        raise UsageError("--prompts needs --output-dir")
    fmt = args.format or "wav"
    out = outputs.check_dir(args.output_dir, "--output-dir")

    def slug(text: str) -> str:
        return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "clip"

    return [
        outputs.check_file(out / f"{i:03d}_{slug(p)}.{fmt}", "--output-dir")
        for i, p in enumerate(prompts)
    ]


def _load_model(args: argparse.Namespace):
    from music_gen import MusicGen
    from music_gen.errors import UsageError
    from music_gen.models.generator import pick_device, pick_dtype

    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    if args.random_init:
        from music_gen.models.codec import build_codec

        cfg = load_args_config(args)
        print(
            "music-gen: note: --random-init: the model's weights are random, so the audio is noise"
        )
        return MusicGen.from_config(cfg.model, build_codec(cfg.codec)).to(device, dtype)
    if not args.model:
        raise UsageError("give --model SRC (or --random-init to try the tool with random weights)")
    if args.overrides or args.config:
        raise UsageError("--config and overrides apply to --random-init only")
    return MusicGen.from_pretrained(args.model).to(device, dtype)


def _melody(model, path) -> dict:
    """``generate_codes`` keywords for ``--melody`` (checked before any audio is read)."""
    if path is None:
        return {}
    from music_gen.audio import read_audio
    from music_gen.errors import UsageError

    if not model.has_melody:
        raise UsageError("--melody: this model has no melody conditioner (use a MusicGen-Melody)")
    audio, rate = read_audio(path)  # [C, S]; unreadable or empty files are an AudioError
    return {"melody": audio, "melody_sample_rate": rate}


def _audio_prompt_codes(model, path):
    if path is None:
        return None
    from music_gen.audio import read_audio

    audio, rate = read_audio(path)
    return model.encode_audio(audio, rate)
