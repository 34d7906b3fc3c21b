"""Synthetic captioned music made in code: the offline demo, the tests, the benchmarks.

Every clip plays one instrument class. The classes differ in timbre, register and
rhythm at once, so that they stay far apart in any codec's code space and an
evaluation can check whether generated audio matches its prompt:

================  =========================================  ==============  ==========
class             sound                                      fundamentals    pattern
================  =========================================  ==============  ==========
sine_pad          pure sines, slow attack, triads held        130-620 Hz      chords
square_lead       band-limited square (odd harmonics), short  260-930 Hz      melody
saw_bass          sawtooth low-passed at 1.5 kHz, pulses      33-105 Hz       bassline
plucked_string    Karplus-Strong string, decaying             130-1000 Hz     arpeggio
bell              inharmonic partials 1, 2.76, 5.40, 8.93     0.8-3.7 kHz     sparse notes
noise_drums       sine-sweep kick, noise snare, hi-hat        none            beat
================  =========================================  ==============  ==========

Each clip also has a key and mode (12 roots x major/minor; none for drums), a tempo
(70-150 bpm), a chord progression, a genre tied to the class and two moods (one from
the mode, one from the tempo). These go to the sidecar JSON (``description``,
``genre``, ``moods``, ``key``, ``bpm``, ``instrument``: the fields MusicGen's datasets
use) and fill the caption.

Captions come from ``CAPTION_TEMPLATES``: six phrasings per class, every one naming the
class's keyword (``CLASS_KEYWORDS``). The first ``NUM_TRAIN_PHRASINGS`` are used for
the training clips; the rest are held out (``heldout_captions(cls)``) so that an
evaluation can prompt with wordings the model never saw.

Clip ``i`` of a dataset is class ``classes[i % len(classes)]`` and draws everything
else from ``numpy.random.default_rng([seed, i])``: the same seed gives the same
files, byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

SYNTH_CLASSES: tuple[str, ...] = (
    "sine_pad",
    "square_lead",
    "saw_bass",
    "plucked_string",
    "bell",
    "noise_drums",
)

CLASS_KEYWORDS: dict[str, str] = {
    "sine_pad": "sine pad",
    "square_lead": "square lead",
    "saw_bass": "sawtooth bass",
    "plucked_string": "plucked string",
    "bell": "bell",
    "noise_drums": "drums",
}

CLASS_GENRES: dict[str, str] = {
    "sine_pad": "ambient",
    "square_lead": "chiptune",
    "saw_bass": "synthwave",
    "plucked_string": "folk",
    "bell": "new age",
    "noise_drums": "breakbeat",
}

NUM_TRAIN_PHRASINGS = 4

# Slots: {key} ("A minor"), {bpm}, {mood}, {moods} ("sad and calm"), {genre}.
CAPTION_TEMPLATES: dict[str, list[str]] = {
    "sine_pad": [
        "a {mood} {genre} piece with a soft sine pad playing slow chords in {key} at {bpm} bpm",
        "warm sine pad chords in {key}, {moods}, {bpm} bpm",
        "{genre}: sustained sine pad harmony, {mood} mood",
        "slow evolving sine pad chords, {bpm} bpm, key of {key}",
        # held out
        "gentle held chords from a sine pad, {moods}, in {key}",
        "{bpm} bpm {genre} built on a {mood} sine pad",
    ],
    "square_lead": [
        "a {mood} {genre} melody on a square lead in {key} at {bpm} bpm",
        "bright square lead playing a catchy tune, {moods}, {bpm} bpm",
        "{genre} track with a retro square lead melody in {key}",
        "staccato square lead line, key of {key}, {mood}",
        # held out
        "an 8-bit style tune on a square lead in {key}, {moods}",
        "{bpm} bpm {genre}: {mood} melody played by a square lead",
    ],
    "saw_bass": [
        "a {mood} {genre} groove with a pulsing sawtooth bass in {key} at {bpm} bpm",
        "deep sawtooth bass line, {moods}, {bpm} bpm",
        "{genre} bassline on a sawtooth bass, key of {key}",
        "driving sawtooth bass eighth notes in {key}, {mood}",
        # held out
        "low rumbling sawtooth bass following the chords in {key}, {moods}",
        "{bpm} bpm {genre} with a {mood} sawtooth bass",
    ],
    "plucked_string": [
        "a {mood} {genre} arpeggio on a plucked string in {key} at {bpm} bpm",
        "plucked string arpeggios, {moods}, {bpm} bpm",
        "{genre} piece with a fingerpicked plucked string in {key}",
        "delicate plucked string pattern, key of {key}, {mood}",
        # held out
        "broken chords picked on a plucked string, {moods}, in {key}",
        "{bpm} bpm {genre}: {mood} plucked string arpeggio",
    ],
    "bell": [
        "a {mood} {genre} tune of ringing bells in {key} at {bpm} bpm",
        "chiming bell notes, {moods}, {bpm} bpm",
        "{genre} music box with shimmering bells in {key}",
        "sparse bell melody, key of {key}, {mood}",
        # held out
        "glassy bells ringing out slowly in {key}, {moods}",
        "{bpm} bpm {genre}: {mood} bell chimes",
    ],
    "noise_drums": [
        "a {mood} {genre} beat on drums at {bpm} bpm",
        "punchy drums with kick, snare and hi-hats, {moods}, {bpm} bpm",
        "{genre} loop played on drums, {mood}",
        "solo drums playing a steady groove at {bpm} bpm",
        # held out
        "just drums keeping time with kick and snare, {moods}",
        "{bpm} bpm {genre} rhythm on drums, {mood}",
    ],
}

NOTE_NAMES = ("C", "C#", "D", "Eb", "E", "F", "F#", "G", "Ab", "A", "Bb", "B")
SCALES = {"major": (0, 2, 4, 5, 7, 9, 11), "minor": (0, 2, 3, 5, 7, 8, 10)}
MODE_MOODS = {"major": ("happy", "bright", "uplifting"), "minor": ("sad", "dark", "melancholic")}
# Scale degrees (0-based) of one chord per half bar.
PROGRESSIONS = {"I-V-VI-IV": (0, 4, 5, 3), "I-IV-V-IV": (0, 3, 4, 3), "VI-IV-I-V": (5, 3, 0, 4)}
BELL_PARTIALS = ((1.0, 1.0, 1.0), (2.76, 0.5, 0.6), (5.40, 0.25, 0.35), (8.93, 0.12, 0.2))
# (ratio to fundamental, amplitude, decay time as a share of the fundamental's)


# --- captions -----------------------------------------------------------------------


def caption_templates(cls: str, split: str = "train") -> list[str]:
    """The caption phrasings of a class: ``split`` is ``train``, ``heldout`` or ``all``."""
    templates = CAPTION_TEMPLATES[_check_class(cls)]
    return {
        "train": templates[:NUM_TRAIN_PHRASINGS],
        "heldout": templates[NUM_TRAIN_PHRASINGS:],
        "all": list(templates),
    }[split]


def heldout_captions(cls: str, seed: int = 0) -> list[str]:
    """One caption per held-out phrasing of ``cls``, with attributes drawn from ``seed``."""
    attrs = draw_attributes(cls, np.random.default_rng([seed, 7919]))
    return [format_caption(t, attrs) for t in caption_templates(cls, "heldout")]


def train_captions(cls: str, seed: int = 0) -> list[str]:
    """One caption per training phrasing of ``cls``, with attributes drawn from ``seed``."""
    attrs = draw_attributes(cls, np.random.default_rng([seed, 7919]))
    return [format_caption(t, attrs) for t in caption_templates(cls, "train")]


def class_of_caption(caption: str) -> str | None:
    """The class whose keyword the caption names (``None`` when none or several do)."""
    text = caption.lower()
    found = [c for c, word in CLASS_KEYWORDS.items() if word in text]
    # "drums" never appears inside another keyword, but "bell" could in free text.
    return found[0] if len(found) == 1 else None


def format_caption(template: str, attrs: dict) -> str:
    return template.format(
        key=attrs["key"] or "",
        bpm=attrs["bpm"],
        mood=attrs["moods"][0],
        moods=" and ".join(attrs["moods"]),
        genre=attrs["genre"],
    )


# --- attributes -----------------------------------------------------------------------


def draw_attributes(cls: str, rng: np.random.Generator) -> dict:
    """Key, mode, tempo, progression, genre and moods of one clip of class ``cls``."""
    root = int(rng.integers(12))
    mode = str(rng.choice(list(SCALES)))
    bpm = int(rng.integers(70, 151))
    progression = str(rng.choice(list(PROGRESSIONS)))
    tempo_mood = "energetic" if bpm >= 120 else "calm" if bpm <= 90 else "relaxed"
    drums = cls == "noise_drums"
    return {
        "instrument": CLASS_KEYWORDS[cls],
        "genre": CLASS_GENRES[cls],
        "moods": [str(rng.choice(MODE_MOODS[mode])), tempo_mood],
        "key": None if drums else f"{NOTE_NAMES[root]} {mode}",
        "bpm": bpm,
        "root": root,
        "mode": mode,
        "progression": None if drums else progression,
        "synth_class": cls,
    }


def _check_class(cls: str) -> str:
    if cls not in CAPTION_TEMPLATES:
        raise ValueError(f"unknown synth class {cls!r}; expected one of {SYNTH_CLASSES}")
    return cls


# --- rendering ---------------------------------------------------------------------------


def midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12)


def _chord(attrs: dict, degree: int, base: int) -> list[int]:
    """Triad on a scale degree as MIDI notes, rooted in the octave starting at ``base``."""
    scale = SCALES[attrs["mode"]]
    notes = []
    for step in (degree, degree + 2, degree + 4):
        octave, index = divmod(step, 7)
        notes.append(base + attrs["root"] + scale[index] + 12 * octave)
    return notes


def _envelope(n: int, sr: int, attack: float, decay: float | None) -> np.ndarray:
    """Linear attack then exponential decay (``decay`` = time constant; None holds)."""
    t = np.arange(n) / sr
    env = np.minimum(1.0, t / max(attack, 1e-4))
    if decay is not None:
        env *= np.exp(-t / decay)
    # A 5 ms release so that note ends do not click (clicks are broadband: timbre leak).
    release = min(n, int(0.005 * sr))
    env[n - release :] *= np.linspace(1.0, 0.0, release)
    return env


def _additive(freq: float, n: int, sr: int, partials: list[tuple[float, float]]) -> np.ndarray:
    """Sum of sines ``(ratio, amplitude)``; partials above 0.45 x sr are dropped (no aliasing)."""
    t = np.arange(n) / sr
    out = np.zeros(n)
    for ratio, amp in partials:
        if freq * ratio < 0.45 * sr:
            out += amp * np.sin(2 * np.pi * freq * ratio * t)
    return out


def _square(freq: float, n: int, sr: int) -> np.ndarray:
    return _additive(freq, n, sr, [(k, 1.0 / k) for k in range(1, 60, 2)])


def _saw(freq: float, n: int, sr: int, cutoff: float = 1500.0) -> np.ndarray:
    count = max(1, int(cutoff // freq))
    return _additive(freq, n, sr, [(k, 1.0 / k) for k in range(1, count + 1)])


def _bell(freq: float, n: int, sr: int, decay: float) -> np.ndarray:
    t = np.arange(n) / sr
    out = np.zeros(n)
    for ratio, amp, share in BELL_PARTIALS:
        if freq * ratio < 0.45 * sr:
            out += amp * np.exp(-t / (decay * share)) * np.sin(2 * np.pi * freq * ratio * t)
    return out * _envelope(n, sr, 0.002, None)


def _pluck(freq: float, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Karplus-Strong: a noise burst through a delay line with an averaging filter."""
    period = max(2, int(round(sr / freq)))
    out = np.zeros(max(n, period + 1))
    out[: period + 1] = rng.uniform(-1, 1, period + 1)
    # y[i] = 0.996 * (y[i - P] + y[i - P - 1]) / 2, a block of P samples at a time.
    for start in range(period + 1, len(out), period):
        stop = min(start + period, len(out))
        prev = out[start - period : stop - period]
        prev_1 = out[start - period - 1 : stop - period - 1]
        out[start:stop] = 0.498 * (prev + prev_1)
    return out[:n] * _envelope(n, sr, 0.001, None)


def _drum_hit(kind: str, n: int, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(n) / sr
    if kind == "kick":
        # Pitch falls 120 -> 45 Hz: phase is the integral of the sweeping frequency.
        freq = 45 + 75 * np.exp(-t / 0.04)
        return np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / 0.15)
    noise = rng.uniform(-1, 1, n)
    if kind == "snare":
        body = 0.4 * np.sin(2 * np.pi * 185 * t)
        return (0.8 * noise + body) * np.exp(-t / 0.08)
    hat = np.diff(noise, prepend=0.0)  # first difference: a crude high-pass
    return 0.35 * hat * np.exp(-t / 0.02)


def _place(buffer: np.ndarray, start: int, sound: np.ndarray) -> None:
    stop = min(len(buffer), start + len(sound))
    if start < stop:
        buffer[start:stop] += sound[: stop - start]


def render(attrs: dict, seconds: float, sample_rate: int, rng: np.random.Generator) -> np.ndarray:
    """Audio of one clip: float32 ``[1, samples]`` with peak 0.9."""
    sr = sample_rate
    total = int(round(seconds * sr))
    out = np.zeros(total)
    beat = 60.0 / attrs["bpm"]
    cls = attrs["synth_class"]
    degrees = PROGRESSIONS[attrs["progression"] or "I-V-VI-IV"]
    half_bars = int(np.ceil(seconds / (2 * beat)))
    for bar in range(half_bars):
        chord_start = bar * 2 * beat
        degree = degrees[bar % len(degrees)]
        if cls == "sine_pad":
            n = int(2 * beat * sr)
            env = _envelope(n, sr, 0.15, None)
            for note in _chord(attrs, degree, 48):
                _place(
                    out,
                    int(chord_start * sr),
                    0.3 * env * _additive(midi_hz(note), n, sr, [(1, 1)]),
                )
        elif cls == "square_lead":
            scale = SCALES[attrs["mode"]]
            for eighth in range(4):
                note = 60 + attrs["root"] % 12 + scale[int(rng.integers(7))]
                n = int(0.8 * beat / 2 * sr)
                tone = _square(midi_hz(note), n, sr) * _envelope(n, sr, 0.005, 0.3)
                _place(out, int((chord_start + eighth * beat / 2) * sr), 0.4 * tone)
        elif cls == "saw_bass":
            root = _chord(attrs, degree, 24)[0]
            for eighth in range(4):
                n = int(0.9 * beat / 2 * sr)
                tone = _saw(midi_hz(root), n, sr) * _envelope(n, sr, 0.005, 0.25)
                _place(out, int((chord_start + eighth * beat / 2) * sr), 0.5 * tone)
        elif cls == "plucked_string":
            chord = _chord(attrs, degree, 48)
            for eighth, note in enumerate([*chord, chord[1] + 12]):
                n = int(1.5 * beat * sr)
                tone = _pluck(midi_hz(note), n, sr, rng)
                _place(out, int((chord_start + eighth * beat / 2) * sr), 0.5 * tone)
        elif cls == "bell":
            chord = _chord(attrs, degree, 79)
            for quarter in range(2):
                note = chord[int(rng.integers(3))]
                n = int(2.5 * beat * sr)
                _place(
                    out,
                    int((chord_start + quarter * beat) * sr),
                    0.4 * _bell(midi_hz(note), n, sr, 0.6),
                )
        elif cls == "noise_drums":
            for eighth in range(4):
                start = int((chord_start + eighth * beat / 2) * sr)
                hits = ["hat"] + (["kick"] if eighth == 0 else ["snare"] if eighth == 2 else [])
                for kind in hits:
                    _place(out, start, _drum_hit(kind, int(0.4 * sr), sr, rng))
        else:
            raise ValueError(f"unknown synth class {cls!r}")
    peak = np.abs(out).max()
    out = out * (0.9 / peak) if peak > 0 else out
    return out.astype(np.float32)[None, :]  # [1, S]


# --- clips and datasets ----------------------------------------------------------------


def make_clip(
    index: int,
    seconds: float,
    seed: int = 0,
    sample_rate: int = 16000,
    classes: tuple[str, ...] = SYNTH_CLASSES,
    cls: str | None = None,
    split: str = "train",
) -> tuple[np.ndarray, dict]:
    """Clip ``index`` of a dataset: audio ``[1, S]`` float32 and its sidecar attributes.

    ``cls`` forces the class (class references for an evaluation); ``split`` picks the
    caption phrasings (``train`` or ``heldout``).
    """
    cls = _check_class(cls or classes[index % len(classes)])
    rng = np.random.default_rng([seed, index])
    attrs = draw_attributes(cls, rng)
    template = str(rng.choice(caption_templates(cls, split)))
    audio = render(attrs, seconds, sample_rate, rng)
    meta = {
        "name": f"synth-{index:05d}",
        "description": format_caption(template, attrs),
        **attrs,
    }
    return audio, meta


def write_synth_dataset(
    output: str | Path,
    num_clips: int,
    seconds: float,
    seed: int = 0,
    sample_rate: int = 16000,
    format: str = "wav",
    classes: tuple[str, ...] = SYNTH_CLASSES,
    caption: str | None = None,
) -> list[Path]:
    """Write ``num_clips`` clips as ``synth-00000.wav`` + ``synth-00000.json``; returns audio paths.

    ``caption`` gives every clip that one caption and no key, so that nothing but the audio
    tells the clips apart (a melody model must then take the pitch from the melody)."""
    import torch

    from music_gen import outputs
    from music_gen.audio import write_audio

    if num_clips <= 0 or seconds <= 0:
        raise ValueError("num_clips and seconds must be positive")
    for cls in classes:
        _check_class(cls)
    output = outputs.check_dir(output, "--output")  # before any clip is made
    output.mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(num_clips):
        audio, meta = make_clip(index, seconds, seed, sample_rate, tuple(classes))
        if caption is not None:
            meta |= {"description": caption, "key": None}
        path = output / f"{meta['name']}.{format}"
        write_audio(path, torch.from_numpy(audio), sample_rate)
        outputs.write_text(path.with_suffix(".json"), json.dumps(meta, indent=1) + "\n")
        paths.append(path)
    return paths
