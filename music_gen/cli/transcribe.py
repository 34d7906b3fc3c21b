"""`music-gen transcribe`: audio clips in, MIDI files out (the melody line of each)."""

from __future__ import annotations

import argparse


def add_transcribe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "transcribe",
        help="transcribe audio to MIDI (the melody line)",
        description="Write the notes of each clip as a MIDI file: pitch tracking with librosa's "
        "pYIN, one note at a time (a chord comes out as its most prominent pitch). "
        "Needs the midi extra: pip install 'music-gen[midi]'.",
    )
    p.add_argument("clips", nargs="+", metavar="CLIP", help="audio files (wav, flac, mp3, ogg)")
    p.add_argument("--output", "-o", help="MIDI file for one clip (default: CLIP.mid beside it)")
    p.add_argument("--output-dir", help="folder for the MIDI files of many clips (NAME.mid each)")
    p.set_defaults(run=run_transcribe)


def run_transcribe(args: argparse.Namespace) -> int:
    from music_gen.audio import audio_info
    from music_gen.audio.midi import require_midi, summary, transcribe_file, write_midi

    require_midi()
    outputs = _output_paths(args)
    for clip in args.clips:
        audio_info(clip)  # missing, empty or not audio: fail before any work
    for clip, path in zip(args.clips, outputs, strict=True):
        notes = transcribe_file(clip)
        write_midi(path, notes)
        print(f"{path}  {summary(notes)}")
    return 0


def _output_paths(args: argparse.Namespace) -> list:
    """Decide every MIDI path before transcribing, so a bad path fails fast."""
    from pathlib import Path

    from music_gen import outputs
    from music_gen.errors import UsageError

    if args.output and args.output_dir:
        raise UsageError("give --output (one clip) or --output-dir, not both")
    if args.output:
        if len(args.clips) > 1:
            raise UsageError("--output names one file; use --output-dir for several clips")
        return [outputs.check_file(args.output, "--output")]
    if args.output_dir:
        folder = outputs.check_dir(args.output_dir, "--output-dir")
        paths = [folder / f"{Path(clip).stem}.mid" for clip in args.clips]
    else:
        paths = [Path(clip).with_suffix(".mid") for clip in args.clips]
    seen: dict = {}
    for clip, path in zip(args.clips, paths, strict=True):
        if path in seen:
            raise UsageError(f"{seen[path]} and {clip} would both write {path}")
        seen[path] = clip
    flag = "--output-dir" if args.output_dir else "MIDI output"
    return [outputs.check_file(path, flag) for path in paths]
