"""A MusicCaps-style CSV plus audio already on disk -> a JSONL manifest for ``data tokenize``.

::

    music-gen data prepare --format musiccaps --csv musiccaps-public.csv \\
        --audio-dir downloads/ --output work/musiccaps/manifest.jsonl
    music-gen data tokenize --input work/musiccaps/manifest.jsonl --output work/data/musiccaps

The CSV (Google's MusicCaps release, or anything shaped like it) has one row per clip:
``ytid`` (a YouTube id), ``start_s`` and ``end_s`` (the clip's seconds in that
recording), ``caption``, and ``aspect_list``, a string holding a Python-style list of
short tags (``"['pop', 'mellow piano melody', 'male vocal']"``, read with
``ast.literal_eval``); other columns are ignored. Nothing is downloaded: each row's
audio is looked up in ``--audio-dir`` (searched recursively) as ``YTID.EXT`` or
``[YTID].EXT`` for ``EXT`` in ``AUDIO_SUFFIXES`` (the names yt-dlp and the usual
MusicCaps download scripts write; the first suffix in that order wins).

The clip: the manifest reader (``sources.py``) takes whole files, no start/end offsets,
so a clip is a file. A file as long as its clip (within ``CLIP_SLACK`` seconds: the
scripts that download only the clip) is used where it is; a longer one (the whole
recording) has ``[start_s, end_s)`` cut out into ``<manifest stem>_clips/`` beside the
manifest, at the file's own rate and channels (FLAC, lossless; ``data tokenize``
resamples). A file shorter than both, unreadable audio, no file at all, or unreadable
``start_s``/``end_s`` skip the row; the skipped rows and why are listed in
``<manifest stem>.missing.csv`` beside the manifest, their count printed.

Aspects -> attributes (``ASPECT_VOCABULARY``, a small fixed table, not a model):
each aspect is scanned left to right for vocabulary phrases as whole words, the
longest at each position, so ``"mellow piano melody"`` gives mood ``mellow`` and
instrument ``piano``, ``"bass drum"`` is drums (not bass), ``"drum and bass"`` a
genre. ``genre`` is the first genre found (in aspect order), ``moods`` every mood
(in order, once each), ``instrument`` the first instrument, ``bpm`` a number written
as ``"120 bpm"``. Words outside the table (``male vocal``, ``low quality``) set no
attribute; every aspect stays in the manifest under ``aspects`` (kept by the reader
as an attribute, not a condition), with ``ytid`` and the clip's place in the
recording (``source_start_s``, ``source_end_s``). Key is not read from aspects.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from music_gen import outputs
from music_gen.errors import MusicGenError, UsageError

REQUIRED_COLUMNS = ("ytid", "start_s", "end_s", "caption", "aspect_list")
AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg")
CLIP_SLACK = 0.5
"""Seconds a file may differ from its clip's length and still be the clip itself."""

_GENRES = {
    "rock": "rock", "hard rock": "rock", "soft rock": "rock", "alternative rock": "rock",
    "pop": "pop", "synth pop": "pop", "synthpop": "pop", "indie pop": "pop",
    "hip hop": "hip hop", "hip-hop": "hip hop", "hiphop": "hip hop", "rap": "hip hop",
    "trap": "trap", "jazz": "jazz", "blues": "blues", "classical": "classical",
    "orchestral": "classical", "baroque": "classical", "opera": "opera",
    "electronic": "electronic", "electronica": "electronic", "edm": "electronic",
    "techno": "techno", "house": "house", "trance": "trance", "dubstep": "dubstep",
    "drum and bass": "drum and bass", "drum & bass": "drum and bass", "ambient": "ambient",
    "country": "country", "folk": "folk", "metal": "metal", "heavy metal": "metal",
    "punk": "punk", "reggae": "reggae", "reggaeton": "reggaeton", "ska": "ska",
    "funk": "funk", "soul": "soul", "r&b": "r&b", "rnb": "r&b", "disco": "disco",
    "gospel": "gospel", "latin": "latin", "salsa": "latin", "bossa nova": "bossa nova",
    "samba": "samba", "flamenco": "flamenco", "bollywood": "bollywood", "indie": "indie",
    "lo-fi": "lo-fi", "lofi": "lo-fi", "soundtrack": "soundtrack", "film score": "soundtrack",
    "movie soundtrack": "soundtrack", "video game music": "soundtrack", "new age": "new age",
    "world music": "world", "children's music": "children's music", "lullaby": "lullaby",
    "march": "march", "waltz": "waltz", "swing": "swing", "bluegrass": "bluegrass",
}  # fmt: skip
_MOODS = {
    "happy": "happy", "joyful": "joyful", "cheerful": "cheerful", "upbeat": "upbeat",
    "energetic": "energetic", "exciting": "exciting", "lively": "lively",
    "aggressive": "aggressive", "angry": "aggressive", "dark": "dark", "sad": "sad",
    "melancholic": "melancholic", "melancholy": "melancholic", "emotional": "emotional",
    "sentimental": "sentimental", "romantic": "romantic", "passionate": "passionate",
    "peaceful": "peaceful", "calm": "calm", "calming": "calm", "relaxing": "relaxing",
    "relaxed": "relaxing", "soothing": "soothing", "mellow": "mellow", "chill": "chill",
    "dreamy": "dreamy", "ethereal": "ethereal", "epic": "epic", "dramatic": "dramatic",
    "intense": "intense", "tense": "tense", "suspenseful": "suspenseful",
    "mysterious": "mysterious", "haunting": "haunting", "spooky": "spooky", "scary": "scary",
    "playful": "playful", "groovy": "groovy", "funky": "funky", "uplifting": "uplifting",
    "hopeful": "hopeful", "nostalgic": "nostalgic", "meditative": "meditative",
    "spiritual": "spiritual", "sensual": "sensual", "triumphant": "triumphant",
    "serious": "serious", "bright": "bright", "warm": "warm",
}  # fmt: skip
_INSTRUMENTS = {
    "piano": "piano", "grand piano": "piano", "electric piano": "electric piano",
    "keyboard": "keyboard", "keys": "keyboard", "acoustic guitar": "acoustic guitar",
    "electric guitar": "electric guitar", "guitar": "guitar", "bass guitar": "bass",
    "bass": "bass", "bassline": "bass", "bass line": "bass", "double bass": "double bass",
    "upright bass": "double bass", "drums": "drums", "drum": "drums", "drum kit": "drums",
    "drumming": "drums", "bass drum": "drums", "kick drum": "drums", "snare": "drums",
    "percussion": "percussion", "synth": "synth", "synths": "synth", "synthesizer": "synth",
    "strings": "strings", "string section": "strings", "string ensemble": "strings",
    "violin": "violin", "fiddle": "violin", "viola": "viola", "cello": "cello", "harp": "harp",
    "flute": "flute", "saxophone": "saxophone", "sax": "saxophone", "trumpet": "trumpet",
    "trombone": "trombone", "brass": "brass", "horns": "brass", "horn section": "brass",
    "clarinet": "clarinet", "oboe": "oboe", "organ": "organ", "accordion": "accordion",
    "harmonica": "harmonica", "banjo": "banjo", "ukulele": "ukulele", "mandolin": "mandolin",
    "sitar": "sitar", "tabla": "tabla", "choir": "choir", "marimba": "marimba",
    "xylophone": "xylophone", "vibraphone": "vibraphone", "glockenspiel": "glockenspiel",
    "bells": "bells", "orchestra": "orchestra", "steel drums": "steel drums",
}  # fmt: skip

ASPECT_VOCABULARY: dict[str, tuple[str, str]] = {
    **{phrase: ("genre", value) for phrase, value in _GENRES.items()},
    **{phrase: ("moods", value) for phrase, value in _MOODS.items()},
    **{phrase: ("instrument", value) for phrase, value in _INSTRUMENTS.items()},
}
"""Aspect phrase (lower case, whole words) -> (attribute, value)."""

# Longest phrases first: at each position the regex takes the first alternative that matches.
_PHRASES = re.compile(
    r"(?<!\w)("
    + "|".join(re.escape(p) for p in sorted(ASPECT_VOCABULARY, key=len, reverse=True))
    + r")(?!\w)"
)
_BPM = re.compile(r"(?<![\w.])(\d{2,3}(?:\.\d+)?)\s*bpm(?!\w)")


# --- aspects ------------------------------------------------------------------------------


def parse_aspects(text: str) -> list[str]:
    """``"['pop', 'mellow piano']"`` -> ``['pop', 'mellow piano']``; raises ``ValueError``."""
    text = (text or "").strip()
    if not text:
        return []
    value = ast.literal_eval(text)  # literals only: never evaluates code
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"not a list of strings: {text[:80]}")
    return [v.strip() for v in value if v.strip()]


def aspect_attributes(aspects: Iterable[str]) -> dict:
    """``genre``, ``moods``, ``instrument`` and ``bpm`` from aspects (see the module doc);
    only the attributes found are present."""
    found: dict[str, list[str]] = {"genre": [], "moods": [], "instrument": []}
    bpm = None
    for aspect in aspects:
        text = aspect.lower()
        for match in _PHRASES.finditer(text):
            name, value = ASPECT_VOCABULARY[match[1]]
            if value not in found[name]:
                found[name].append(value)
        if bpm is None and (number := _BPM.search(text)):
            bpm = float(number[1])
    attrs: dict = {}
    if found["genre"]:
        attrs["genre"] = found["genre"][0]
    if found["moods"]:
        attrs["moods"] = found["moods"]
    if found["instrument"]:
        attrs["instrument"] = found["instrument"][0]
    if bpm is not None and 0 < bpm < 1000:
        attrs["bpm"] = bpm
    return attrs


# --- the CSV and the audio ---------------------------------------------------------------------


def read_csv(path: str | os.PathLike[str]) -> list[dict]:
    """The CSV's rows; one-line errors for a missing file, bad text or missing columns."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UsageError(f"--csv {path} not found") from None
    except IsADirectoryError:
        raise UsageError(f"--csv {path} is a folder; give the CSV file") from None
    except UnicodeDecodeError:
        raise MusicGenError(f"--csv {path} is not UTF-8 text; save it as UTF-8") from None
    try:
        reader = csv.DictReader(io.StringIO(text))
        columns = [c.strip() for c in reader.fieldnames or []]
        rows = [{(k or "").strip(): v for k, v in row.items()} for row in reader]
    except csv.Error as exc:
        raise MusicGenError(f"--csv {path} is not a readable CSV: {exc}") from None
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise UsageError(
            f"--csv {path} has no column {', '.join(missing)}: a MusicCaps CSV has "
            f"{', '.join(REQUIRED_COLUMNS)}"
        )
    if not rows:
        raise UsageError(f"--csv {path} has a header but no rows")
    return rows


def index_audio(audio_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """YouTube id -> audio file under ``audio_dir`` (``YTID.EXT`` or ``[YTID].EXT``)."""
    root = Path(audio_dir).expanduser()
    if not root.is_dir():
        raise UsageError(f"--audio-dir {root} is not a folder")
    found: dict[str, Path] = {}
    for folder, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            stem, suffix = os.path.splitext(name)
            if suffix.lower() not in AUDIO_SUFFIXES:
                continue
            if stem.startswith("[") and stem.endswith("]"):
                stem = stem[1:-1]
            path = Path(folder) / name
            if stem not in found or _rank(path) < _rank(found[stem]):
                found[stem] = path
    return found


def _rank(path: Path) -> int:
    return AUDIO_SUFFIXES.index(path.suffix.lower())


# --- planning and cutting ------------------------------------------------------------------------


@dataclass
class Clip:
    """One CSV row that has audio: where its clip comes from and where it will be."""

    ytid: str
    start: float
    end: float
    caption: str
    attributes: dict
    aspects: list[str]
    audio: Path
    cut: bool
    """True: ``[start, end)`` is cut out of ``audio`` into the clips folder."""
    clip_name: str = ""
    notes: list[str] = field(default_factory=list)


def _seconds(row: dict) -> tuple[float, float]:
    start, end = float(row["start_s"]), float(row["end_s"])
    if not (0 <= start < end):
        raise ValueError(f"start_s {start:g}, end_s {end:g}")
    return start, end


def plan_row(row: dict, audio: dict[str, Path]) -> tuple[Clip | None, str]:
    """``(clip, '')`` for a row whose audio is usable, else ``(None, why it is skipped)``."""
    from music_gen.audio import audio_info

    ytid = (row.get("ytid") or "").strip()
    if not ytid:
        return None, "no ytid"
    try:
        start, end = _seconds(row)
    except (TypeError, ValueError) as exc:
        return None, f"bad start_s/end_s ({exc})"
    path = audio.get(ytid)
    if path is None:
        return None, "no audio file"
    try:
        duration = audio_info(path).duration
    except MusicGenError as exc:
        return None, f"unreadable audio: {exc}"
    length = end - start
    if abs(duration - length) <= CLIP_SLACK:
        cut = False  # the file is the clip (downloaded as such)
    elif duration >= end - CLIP_SLACK:
        cut = True  # the whole recording: cut the clip out
    else:
        return None, f"audio shorter than its clip ({duration:.2f} s; clip {start:g}-{end:g} s)"
    clip = Clip(ytid, start, end, (row.get("caption") or "").strip(), {}, [], path, cut)
    try:
        clip.aspects = parse_aspects(row.get("aspect_list") or "")
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        clip.notes.append("aspect_list unreadable: no attributes from it")
    clip.attributes = aspect_attributes(clip.aspects)
    clip.clip_name = f"{_safe(ytid)}_{start:g}-{end:g}.flac"
    return clip, ""


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)


def cut_clip(clip: Clip, target: Path) -> None:
    """Write ``[start, end)`` of the clip's recording to ``target`` (its rate and channels)."""
    import soundfile as sf
    import torch

    from music_gen.audio import write_audio

    try:
        with sf.SoundFile(str(clip.audio)) as sound:
            rate = sound.samplerate
            first = int(round(clip.start * rate))
            last = min(int(round(clip.end * rate)), sound.frames)
            sound.seek(first)
            data = sound.read(last - first, dtype="float32", always_2d=True)  # [S, C]
    except (sf.LibsndfileError, RuntimeError, OSError, ValueError) as exc:
        raise MusicGenError(f"cannot cut {clip.audio}: {exc}") from None
    if len(data) == 0:
        raise MusicGenError(f"cannot cut {clip.audio}: no samples in {clip.start:g}-{clip.end:g} s")
    write_audio(target, torch.from_numpy(data.T.copy()), rate, format="flac")


# --- the whole job --------------------------------------------------------------------------------


def output_paths(manifest: str | os.PathLike[str]) -> tuple[Path, Path, Path]:
    """``(manifest, clips folder, missing list)``, checked writable before any work."""
    path = Path(manifest).expanduser()
    if path.suffix.lower() != ".jsonl":
        raise UsageError(f"--output {path} must be a .jsonl manifest (what `data tokenize` reads)")
    outputs.check_file(path, "--output")
    clips = path.with_name(path.stem + "_clips")
    missing = path.with_name(path.stem + ".missing.csv")
    outputs.check_dir(clips, "clips folder")
    outputs.check_file(missing, "missing list")
    return path, clips, missing


def _relative(path: Path, base: Path) -> str:
    """``path`` relative to the manifest's folder when under it (the reader joins them),
    else absolute."""
    path = path.resolve()
    base = base.resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def manifest_row(clip: Clip, path: Path, base: Path) -> dict:
    """One JSONL line: path, caption, the attributes found, and where the clip came from."""
    return {
        "path": _relative(path, base),
        "caption": clip.caption,
        **clip.attributes,
        "aspects": clip.aspects,
        "ytid": clip.ytid,
        "source_start_s": clip.start,
        "source_end_s": clip.end,
    }


def prepare_musiccaps(
    csv_path: str | os.PathLike[str],
    audio_dir: str | os.PathLike[str],
    output: str | os.PathLike[str],
) -> dict:
    """Write the manifest, its cut clips and the missing list (see the module doc).

    Returns a summary: ``rows``, ``written``, ``in_place``, ``cut``, ``missing`` (rows
    with no audio file), ``skipped`` (all rows left out, by reason), ``notes``, and the
    paths ``manifest``, ``clips`` (None when nothing was cut) and ``missing_list``."""
    manifest, clips_dir, missing_path = output_paths(output)
    rows = read_csv(csv_path)
    audio = index_audio(audio_dir)
    base = manifest.parent
    planned: list[Clip] = []
    skipped: list[dict] = []
    seen: set[tuple[str, float, float]] = set()
    for row in rows:
        clip, why = plan_row(row, audio)
        if clip is not None:
            key = (clip.ytid, clip.start, clip.end)
            if key in seen:
                clip, why = None, "duplicate row"
            else:
                seen.add(key)
        if clip is None:
            skipped.append({k: (row.get(k) or "").strip() for k in ("ytid", "start_s", "end_s")})
            skipped[-1]["reason"] = why
        else:
            planned.append(clip)
    lines, written_clips = _write_clips(planned, clips_dir, base, skipped)
    outputs.write_text(missing_path, _missing_csv(skipped))
    outputs.write_text(manifest, "".join(json.dumps(line) + "\n" for line in lines))
    reasons: dict[str, int] = {}
    for entry in skipped:
        reason = entry["reason"].split(" (")[0].split(":")[0]
        reasons[reason] = reasons.get(reason, 0) + 1
    notes = [f"{c.ytid}: {n}" for c in planned for n in c.notes]
    return {
        "rows": len(rows),
        "written": len(lines),
        "in_place": sum(not c.cut for c in planned),
        "cut": written_clips,
        "missing": reasons.get("no audio file", 0),
        "skipped": dict(sorted(reasons.items())),
        "notes": notes,
        "manifest": str(manifest),
        "clips": str(clips_dir) if written_clips else None,
        "missing_list": str(missing_path),
    }


def _write_clips(planned, clips_dir: Path, base: Path, skipped: list):
    """Cut what must be cut (into a folder moved into place when all are done); the
    manifest lines in CSV order. A clip that cannot be cut joins ``skipped``."""
    lines, cut = [], 0
    if not any(c.cut for c in planned):
        return [manifest_row(clip, clip.audio, base) for clip in planned], 0
    with outputs.replace_dir(clips_dir) as temp:
        for clip in planned:
            if clip.cut:
                try:
                    cut_clip(clip, temp / clip.clip_name)
                except MusicGenError as exc:
                    skipped.append(
                        {"ytid": clip.ytid, "start_s": f"{clip.start:g}", "end_s": f"{clip.end:g}",
                         "reason": f"unreadable audio: {exc}"}
                    )  # fmt: skip
                    continue
                cut += 1
                lines.append(manifest_row(clip, clips_dir / clip.clip_name, base))
            else:
                lines.append(manifest_row(clip, clip.audio, base))
    return lines, cut


def _missing_csv(skipped: list[dict]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["ytid", "start_s", "end_s", "reason"])
    writer.writeheader()
    writer.writerows(skipped)
    return text.getvalue()


def format_summary(summary: dict) -> str:
    """What ``data prepare`` prints."""
    other = {k: v for k, v in summary["skipped"].items() if k != "no audio file"}
    lines = [
        ("rows in CSV", summary["rows"]),
        ("clips written", f"{summary['written']} ({summary['in_place']} files used as they are, "
                          f"{summary['cut']} cut)"),
        ("missing audio", summary["missing"]),
        ("other skipped", ", ".join(f"{k}: {v}" for k, v in other.items()) or 0),
        ("skipped list", summary["missing_list"]),
        ("manifest", summary["manifest"]),
    ]  # fmt: skip
    if summary["clips"]:
        lines.insert(-1, ("cut clips", summary["clips"]))
    if summary["notes"]:
        lines.append(("notes", f"{len(summary['notes'])}: {summary['notes'][0]}"
                      + (" ..." if len(summary["notes"]) > 1 else "")))  # fmt: skip
    return "\n".join(f"{name:<15}{value}" for name, value in lines)
