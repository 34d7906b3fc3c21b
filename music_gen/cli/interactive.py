"""`music-gen interactive`: a session that keeps the model loaded; a prompt line -> a file.

    $ music-gen interactive --model work/checkpoints/run1 --output-dir takes
    > lofi piano with rain
    takes/001_lofi_piano_with_rain.wav
    > :duration 15
    > :continue
    takes/002_lofi_piano_with_rain.wav

Lines starting with ``:`` are commands (``:help`` lists them); any other line is a prompt.
Settings stay until changed. Read from a pipe, it prints no prompt and no banner, so
``printf 'jazz trio\\n:duration 5\\nambient pad\\n' | music-gen interactive --model M``
scripts it: stdout holds only the paths written (and what ``:help``, ``:settings`` and
``:history`` print), notes and errors go to stderr. A bad command or value is one line
on stderr and the session goes on. On a terminal, readline keeps the history of lines
(arrow keys) for the session.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from music_gen.cli.common import device_args
from music_gen.errors import MusicGenError, UsageError

HELP = """\
any text           generate a clip for that prompt (prints the file's path)
:duration SECONDS  length of new audio (default 10)
:cfg SCALE         classifier-free guidance scale (1 = none)
:seed N|none       fixed seed (the same prompt gives the same clip) or random
:temperature T     sampling temperature
:top-k K           top-k sampling (1 = greedy, 0 = off)
:continue [TEXT]   extend the last clip by :duration seconds (its codes are the audio
                   prompt; TEXT, else the last prompt, conditions the new part)
:continue FILE     continue an audio file instead (a path that exists)
:settings          show the settings
:history           list the prompts of this session
:help              this text
:quit              end the session (also :exit, :q or end of input)"""


@dataclass
class Settings:
    duration: float = 10.0
    cfg: float = 3.0
    seed: int | None = None
    temperature: float = 1.0
    top_k: int = 250


@dataclass
class Session:
    """One interactive session: a loaded model, settings, the last clip's codes."""

    model: Any  # a MusicGen (torch is imported only when the command runs)
    output_dir: Path
    settings: Settings = field(default_factory=Settings)
    audio_format: str = "wav"
    history: list[str] = field(default_factory=list)
    last_prompt: str | None = None
    last_codes: Any = None  # LongTensor [1, K, T] of the last clip
    takes: int = 0

    # -- one line -------------------------------------------------------------------

    def handle(self, line: str) -> bool:
        """Run one line; False when the session should end. Raises ``MusicGenError``."""
        line = line.strip()
        if not line or line.startswith("#"):
            return True
        if not line.startswith(":"):
            self.generate(line)
            return True
        name, _, value = line[1:].partition(" ")
        name, value = name.strip().lower(), value.strip()
        if name in ("quit", "exit", "q"):
            return False
        command = COMMANDS.get(name)
        if command is None:
            raise UsageError(f"unknown command ':{name}' (:help lists them)")
        command(self, value)
        return True

    # -- generation -------------------------------------------------------------------

    def generate(self, prompt: str, prompt_codes=None) -> Path:
        s = self.settings
        duration = s.duration
        if prompt_codes is not None:  # duration counts the audio prompt
            duration += prompt_codes.shape[-1] / self.model.frame_rate
        codes = self.model.generate_codes(
            [prompt],
            duration=duration,
            temperature=s.temperature,
            top_k=s.top_k,
            guidance_scale=s.cfg,
            seed=s.seed,
            prompt_codes=prompt_codes,
        )  # [1, K, T]
        from music_gen.audio import write_audio

        audio = self.model.decode(codes)  # [1, C, S]
        self.takes += 1
        path = self.output_dir / f"{self.takes:03d}_{_slug(prompt)}.{self.audio_format}"
        while path.exists():  # an earlier session's take: never overwrite it
            self.takes += 1
            path = self.output_dir / f"{self.takes:03d}_{_slug(prompt)}.{self.audio_format}"
        write_audio(path, audio[0], self.model.sample_rate)
        self.history.append(prompt)
        self.last_prompt, self.last_codes = prompt, codes
        print(path, flush=True)
        return path

    def continue_clip(self, value: str) -> None:
        if value and Path(value).expanduser().is_file():
            from music_gen.cli.generate import _audio_prompt_codes

            codes = _audio_prompt_codes(self.model, str(Path(value).expanduser()))
            self.generate(self.last_prompt or "continue", prompt_codes=codes)
            return
        if self.last_codes is None:
            raise UsageError(":continue: no clip yet (generate one, or give an audio file)")
        self.generate(value or self.last_prompt or "", prompt_codes=self.last_codes)

    # -- settings ----------------------------------------------------------------------

    def set_duration(self, value: str) -> None:
        seconds = _number(":duration", value, float)
        self.model.frames_for(seconds)  # the model's own bounds
        self.settings.duration = seconds
        _note(f"duration {seconds:g} s")

    def _set_non_negative(self, name: str, attr: str, value: str, kind: type) -> None:
        number = _number(f":{name}", value, kind)
        if number < 0:
            raise UsageError(f":{name} must be >= 0, got {value}")
        setattr(self.settings, attr, number)
        _note(f"{name} {number:g}")

    def set_cfg(self, value: str) -> None:
        self._set_non_negative("cfg", "cfg", value, float)

    def set_seed(self, value: str) -> None:
        if value.lower() in ("none", "random", "off"):
            self.settings.seed = None
            _note("seed random")
            return
        seed = _number(":seed", value, int)
        if seed < 0:
            raise UsageError(f":seed must be >= 0 (or none), got {value}")
        self.settings.seed = seed
        _note(f"seed {seed}")

    def set_temperature(self, value: str) -> None:
        self._set_non_negative("temperature", "temperature", value, float)

    def set_top_k(self, value: str) -> None:
        self._set_non_negative("top-k", "top_k", value, int)

    def show_settings(self, value: str) -> None:
        s = self.settings
        seed = "random" if s.seed is None else s.seed
        print(
            f"duration {s.duration:g} s, cfg {s.cfg:g}, seed {seed}, "
            f"temperature {s.temperature:g}, top-k {s.top_k}, output {self.output_dir}",
            flush=True,
        )

    def show_history(self, value: str) -> None:
        for index, prompt in enumerate(self.history, start=1):
            print(f"{index:3d}  {prompt}", flush=True)

    def show_help(self, value: str) -> None:
        print(HELP, flush=True)


COMMANDS = {
    "duration": Session.set_duration,
    "cfg": Session.set_cfg,
    "seed": Session.set_seed,
    "temperature": Session.set_temperature,
    "top-k": Session.set_top_k,
    "top_k": Session.set_top_k,
    "continue": Session.continue_clip,
    "settings": Session.show_settings,
    "history": Session.show_history,
    "help": Session.show_help,
}


def _number(command: str, value: str, kind):
    if not value:
        raise UsageError(f"{command} needs a value (:help)")
    try:
        return kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise UsageError(f"{command} needs {what}, got '{value}'") from None


def _note(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "clip"


# -- the command ---------------------------------------------------------------------------


def add_interactive(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "interactive",
        help="a prompt-by-prompt generation session that keeps the model loaded",
        description="Type a prompt, get a file (its path is printed). Commands: :duration, "
        ":cfg, :seed, :temperature, :top-k, :continue, :settings, :history, :help, :quit. "
        "Works over a pipe (one line per prompt or command).",
    )
    p.add_argument(
        "--model",
        required=True,
        help="checkpoint dir, transformers MusicGen dir/hub id, models:/NAME@ALIAS",
    )
    p.add_argument("--output-dir", "-o", default="takes", help="where clips go (default: takes)")
    p.add_argument("--format", choices=["wav", "flac", "mp3", "ogg"], default="wav")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per clip")
    p.add_argument("--cfg", type=float, default=3.0, help="guidance scale (1 = none)")
    p.add_argument("--seed", type=int, default=None)
    device_args(p)
    # What generate's model loader reads: this command loads checkpoints only.
    p.set_defaults(run=run_interactive, random_init=False, config=[])


def run_interactive(args: argparse.Namespace) -> int:
    from music_gen.cli.generate import _load_model

    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UsageError(f"--output-dir {output_dir} is a file")
    tty = sys.stdin.isatty()
    model = _load_model(args)
    session = Session(model, output_dir, Settings(cfg=args.cfg, seed=args.seed))
    session.audio_format = args.format
    model.frames_for(args.duration)  # a bad --duration fails before the first prompt
    session.settings.duration = args.duration
    if tty:
        import readline  # noqa: F401  (input() then keeps line history and editing)

        print(f"model loaded ({model.sample_rate} Hz); :help lists commands", file=sys.stderr)
    while True:
        try:
            line = input("> ") if tty else sys.stdin.readline()
        except EOFError:
            break
        if not tty and not line:  # end of the pipe
            break
        try:
            if not session.handle(line):
                break
        except MusicGenError as exc:
            print(f"error: {exc}", file=sys.stderr, flush=True)
    return 0
