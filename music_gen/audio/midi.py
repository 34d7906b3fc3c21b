"""Audio to MIDI: the melody line of a clip as notes, written as a Standard MIDI File.

librosa's probabilistic YIN (pYIN) tracks the fundamental frequency frame by frame with
a hidden Markov model over pitch and voicing; its frames are cut into notes where the
rounded pitch changes, where voicing stops, and where an onset (spectral flux) restarts
the same pitch. pretty_midi writes the notes as one piano track. The tracker is
monophonic: a chord comes out as its most prominent pitch, one note at a time.

    notes = transcribe(audio, sample_rate)          # audio [C, S]: stereo is mixed down
    write_midi("clip.mid", notes)                   # temp file beside it + os.replace
    score_notes(notes, reference)                   # onset (50 ms) and pitch accuracy

librosa and pretty_midi are the ``midi`` extra: without them every entry point raises
one ``MusicGenError`` that says what to install. Nothing here downloads anything.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from music_gen import outputs
from music_gen.audio.io import AudioSource, read_audio
from music_gen.audio.transforms import resample, to_channels
from music_gen.errors import MusicGenError

# pYIN at 16 kHz: 64 ms frames reach down to E1 (41 Hz: pYIN needs the longest period
# within half a frame); 10 ms hops place onsets well inside the 50 ms that scores allow.
SAMPLE_RATE = 16_000
FRAME_LENGTH = 1024
HOP_LENGTH = 160
LOWEST_PITCH = 28  # E1, a bass guitar's lowest string
HIGHEST_PITCH = 96  # C7
# Pitch candidates a quarter semitone apart: notes are whole semitones, and pYIN's
# Viterbi costs the square of the candidates (0.1, its default, is about 10x slower).
PITCH_RESOLUTION = 0.25
# pYIN's HMM stays "voiced" across short gaps in a steady pitch; a frame counts as a
# note only where its own voicing probability reaches this.
VOICED_PROBABILITY = 0.3
# Octaves per second the pitch may move between frames. pYIN's default (35.92, sung
# pitch) needs 100 ms to leap three octaves, so a low note after a high one came late or
# not at all; 1.5 octaves a frame raised note F-measure on synthetic melodies 0.84 -> 0.97.
MAX_TRANSITION_RATE = 150.0
MIN_NOTE_SECONDS = 0.05  # shorter runs of one pitch are glitches, not notes
ONSET_SNAP_SECONDS = 0.05  # a note starts at a detected onset this close to its first frame
QUIETEST_DB = -40.0  # a note this far below the loudest gets velocity 1

_MISSING = "MIDI export needs librosa and pretty_midi: pip install 'music-gen[midi]'"


@dataclass(frozen=True)
class Note:
    """One transcribed (or known) note."""

    onset: float  # seconds from the start of the clip
    offset: float  # seconds; after onset
    pitch: int  # MIDI note number (60 is middle C)
    velocity: int = 100  # 1..127


def require_midi() -> None:
    """Raise one clear ``MusicGenError`` unless the ``midi`` extra is installed.

    Called before any work (``generate --midi`` checks it before loading a model).
    """
    try:
        import librosa  # noqa: F401
        import pretty_midi  # noqa: F401
    except ImportError:
        raise MusicGenError(_MISSING) from None


def transcribe(audio: torch.Tensor, sample_rate: int) -> list[Note]:
    """The notes of ``audio`` (``[C, S]`` or ``[S]`` at ``sample_rate``), in time order."""
    require_midi()
    clip = audio.detach().to("cpu", torch.float32)
    clip = clip if clip.dim() == 2 else clip.unsqueeze(0)  # [C, S]
    clip = to_channels(clip, 1)  # [1, S]: the mean of the channels
    if sample_rate != SAMPLE_RATE:
        clip = resample(clip, sample_rate, SAMPLE_RATE)  # [1, S']
    return _transcribe_mono(clip[0].numpy().astype(np.float32))


def transcribe_file(source: AudioSource) -> list[Note]:
    """The notes of an audio file (any format ``read_audio`` reads).

    Raises:
        AudioError: the file is missing, empty, truncated or not audio.
    """
    require_midi()
    audio, _ = read_audio(source, sample_rate=SAMPLE_RATE, channels=1)  # [1, S]
    return _transcribe_mono(audio[0].numpy())


def midi_bytes(notes: list[Note], program: int = 0) -> bytes:
    """``notes`` as the bytes of a Standard MIDI File: one track, General MIDI ``program``."""
    require_midi()
    import pretty_midi

    song = pretty_midi.PrettyMIDI()
    track = pretty_midi.Instrument(program=program)
    track.notes = [
        pretty_midi.Note(velocity=n.velocity, pitch=n.pitch, start=n.onset, end=n.offset)
        for n in notes
    ]
    song.instruments.append(track)
    buffer = io.BytesIO()
    song.write(buffer)
    return buffer.getvalue()


def write_midi(path: str | os.PathLike[str], notes: list[Note], program: int = 0) -> Path:
    """Write ``notes`` to ``path`` atomically (never a partial file) and return the path."""
    return outputs.write_bytes(path, midi_bytes(notes, program))


def read_midi(path: str | os.PathLike[str]) -> list[Note]:
    """The notes of a MIDI file, all tracks together, in time order."""
    require_midi()
    import pretty_midi

    song = pretty_midi.PrettyMIDI(str(path))
    notes = [
        Note(onset=n.start, offset=n.end, pitch=n.pitch, velocity=n.velocity)
        for track in song.instruments
        for n in track.notes
    ]
    return sorted(notes, key=lambda n: (n.onset, n.pitch))


def summary(notes: list[Note]) -> str:
    """One line: how many notes and their pitch range, e.g. ``7 notes, A3..C5 (57..72)``."""
    if not notes:
        return "no notes (silent or unpitched audio)"
    low, high = min(n.pitch for n in notes), max(n.pitch for n in notes)
    count = f"{len(notes)} note{'s' if len(notes) != 1 else ''}"
    return f"{count}, {note_name(low)}..{note_name(high)} ({low}..{high})"


def note_name(pitch: int) -> str:
    """Scientific pitch notation: 60 -> C4, 61 -> C#4."""
    import librosa

    return str(librosa.midi_to_note(pitch, unicode=False))


def score_notes(
    estimated: list[Note], reference: list[Note], onset_tolerance: float = 0.05
) -> dict[str, float]:
    """Transcription scores of ``estimated`` against the known ``reference`` notes.

    Notes are paired one to one, nearest onsets first, when their onsets are within
    ``onset_tolerance`` seconds (50 ms, as in MIREX note tracking). ``onset_*`` count
    pairs whatever their pitch; ``note_*`` count pairs that also have the same pitch;
    ``pitch_accuracy`` is the share of onset pairs with the right pitch.
    """
    pairs = sorted(
        (abs(e.onset - r.onset), i, j)
        for i, e in enumerate(estimated)
        for j, r in enumerate(reference)
        if abs(e.onset - r.onset) <= onset_tolerance
    )
    used_e: set[int] = set()
    used_r: set[int] = set()
    matched: list[tuple[Note, Note]] = []
    for _, i, j in pairs:
        if i not in used_e and j not in used_r:
            used_e.add(i)
            used_r.add(j)
            matched.append((estimated[i], reference[j]))
    same_pitch = sum(e.pitch == r.pitch for e, r in matched)
    onset = _prf(len(matched), len(estimated), len(reference))
    note = _prf(same_pitch, len(estimated), len(reference))
    errors = [abs(e.onset - r.onset) for e, r in matched]
    return {
        "onset_precision": onset[0],
        "onset_recall": onset[1],
        "onset_f_measure": onset[2],
        "note_precision": note[0],
        "note_recall": note[1],
        "note_f_measure": note[2],
        "pitch_accuracy": same_pitch / len(matched) if matched else 0.0,
        "mean_onset_error_s": float(np.mean(errors)) if errors else math.nan,
    }


# ---------------------------------------------------------------------------
# Pitch tracking and note segmentation


def _transcribe_mono(samples: np.ndarray) -> list[Note]:
    """Notes of mono float samples at ``SAMPLE_RATE``."""
    import librosa

    if samples.size < FRAME_LENGTH or not np.any(np.abs(samples) > 1e-6):
        return []  # too short to hold one pitch frame, or digital silence
    f0, voiced, voiced_prob = librosa.pyin(
        samples,
        fmin=float(librosa.midi_to_hz(LOWEST_PITCH)),
        fmax=float(librosa.midi_to_hz(HIGHEST_PITCH)),
        sr=SAMPLE_RATE,
        frame_length=FRAME_LENGTH,
        hop_length=HOP_LENGTH,
        resolution=PITCH_RESOLUTION,
        max_transition_rate=MAX_TRANSITION_RATE,
    )  # [frames] each
    voiced &= voiced_prob >= VOICED_PROBABILITY  # a gap between repeated notes stays a gap
    pitches = np.where(voiced, np.round(librosa.hz_to_midi(np.nan_to_num(f0, nan=1.0))), -1)
    onsets = librosa.onset.onset_detect(y=samples, sr=SAMPLE_RATE, hop_length=HOP_LENGTH)
    rms = librosa.feature.rms(y=samples, frame_length=FRAME_LENGTH, hop_length=HOP_LENGTH)[0]
    return segment_notes(pitches.astype(int), onsets, rms, HOP_LENGTH / SAMPLE_RATE)


def segment_notes(
    pitches: np.ndarray, onsets: np.ndarray, rms: np.ndarray, frame_seconds: float
) -> list[Note]:
    """Cut a frame-wise pitch track into notes.

    ``pitches``: MIDI number per frame, -1 where unvoiced; ``onsets``: frame indices
    where spectral flux peaks; ``rms``: loudness per frame (sets the velocity);
    frame ``i`` is centred on ``i * frame_seconds``. A note is a run of one pitch, cut
    again at an onset when both halves are long enough to be notes (a repeated note);
    its start moves to a detected onset within ``ONSET_SNAP_SECONDS``, which times
    attacks better than pYIN's voicing does.
    """
    min_frames = max(1, round(MIN_NOTE_SECONDS / frame_seconds))
    snap = round(ONSET_SNAP_SECONDS / frame_seconds)
    onsets = np.asarray(onsets, dtype=int)
    runs = _split_repeats(_pitch_runs(pitches), onsets, min_frames)
    runs = [(start, stop, pitch) for start, stop, pitch in runs if stop - start >= min_frames]
    loudest = max((float(rms[start:stop].max()) for start, stop, _ in runs), default=0.0)
    notes: list[Note] = []
    for start, stop, pitch in runs:
        first = _snap_to_onset(start, onsets, snap)
        previous_end = round(notes[-1].offset / frame_seconds) if notes else 0
        first = min(max(first, previous_end), stop - 1)  # not before the previous note ends
        velocity = _velocity(float(rms[start:stop].max()), loudest)
        notes.append(Note(first * frame_seconds, stop * frame_seconds, int(pitch), velocity))
    return notes


def _pitch_runs(pitches: np.ndarray) -> list[tuple[int, int, int]]:
    """Maximal runs ``(start, stop, pitch)`` of one voiced pitch (stop exclusive)."""
    runs = []
    start = 0
    for i in range(1, len(pitches) + 1):
        if i == len(pitches) or pitches[i] != pitches[start]:
            if pitches[start] >= 0:
                runs.append((start, i, int(pitches[start])))
            start = i
    return runs


def _split_repeats(
    runs: list[tuple[int, int, int]], onsets: np.ndarray, min_frames: int
) -> list[tuple[int, int, int]]:
    """Cut runs at inner onsets that leave notes of ``min_frames`` on both sides."""
    out = []
    for start, stop, pitch in runs:
        for onset in onsets[(onsets > start) & (onsets < stop)]:
            if onset - start >= min_frames and stop - onset >= min_frames:
                out.append((start, int(onset), pitch))
                start = int(onset)
        out.append((start, stop, pitch))
    return out


def _snap_to_onset(frame: int, onsets: np.ndarray, reach: int) -> int:
    near = onsets[np.abs(onsets - frame) <= reach]
    return int(near[np.argmin(np.abs(near - frame))]) if near.size else frame


def _velocity(level: float, loudest: float) -> int:
    """1..127 from a note's peak RMS in dB below the clip's loudest note."""
    if loudest <= 0 or level <= 0:
        return 1
    db = 20 * math.log10(level / loudest)  # <= 0
    return int(np.clip(round(1 + 126 * (1 - db / QUIETEST_DB)), 1, 127))


def _prf(hits: int, estimated: int, reference: int) -> tuple[float, float, float]:
    precision = hits / estimated if estimated else 0.0
    recall = hits / reference if reference else 0.0
    total = precision + recall
    return precision, recall, (2 * precision * recall / total if total else 0.0)
