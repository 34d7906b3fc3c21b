"""MIDI transcription (``music-gen transcribe``) on synthetic melodies whose notes are known.

Random one-voice melodies (``music_gen.testing.random_melody``: E2 to C6, 0.15-0.45 s
notes, some repeated pitches with no gap) are rendered in each timbre of
``music_gen.testing.TIMBRES`` at 22.05 kHz and transcribed. Scores as in MIREX note
tracking: an estimated note pairs with a known one when their onsets are within 50 ms;
a note counts when it also has the right pitch. Prints one JSON line::

    python benchmarks/midi.py                  # 4 timbres x 8 melodies of 16 notes
    python benchmarks/midi.py --melodies 2 --notes 8   # a quick look
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder comes first on sys.path and its tokenize.py would shadow
# the standard library's `tokenize` (which `inspect` needs): drop the folder.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

RATE = 22050


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--melodies", type=int, default=8, help="melodies per timbre")
    parser.add_argument("--notes", type=int, default=16, help="notes per melody")
    parser.add_argument("--seed", type=int, default=100, help="first melody's seed")
    args = parser.parse_args()

    import numpy as np

    from music_gen.audio.midi import score_notes, transcribe
    from music_gen.testing import TIMBRES, random_melody, render_notes

    transcribe(render_notes(random_melody(0, 2), RATE), RATE)  # numba's first compile
    per_timbre, audio_seconds, seconds = {}, 0.0, 0.0
    for timbre in TIMBRES:
        scores = []
        for i in range(args.melodies):
            reference = random_melody(args.seed + i, args.notes)
            audio = render_notes(reference, RATE, timbre)  # [1, S]
            started = time.perf_counter()
            notes = transcribe(audio, RATE)
            seconds += time.perf_counter() - started
            audio_seconds += audio.shape[-1] / RATE
            scores.append(score_notes(notes, reference, onset_tolerance=0.05))
        per_timbre[timbre] = {
            key: round(float(np.nanmean([s[key] for s in scores])), 3)
            for key in ("onset_f_measure", "note_f_measure", "pitch_accuracy")
        }
    mean = {
        key: round(float(np.mean([row[key] for row in per_timbre.values()])), 3)
        for key in ("onset_f_measure", "note_f_measure", "pitch_accuracy")
    }
    print(
        json.dumps(
            {
                "benchmark": "midi",
                "method": "librosa pyin + onset split",
                "clips": len(TIMBRES) * args.melodies,
                "notes_per_clip": args.notes,
                "onset_tolerance_s": 0.05,
                **mean,
                "per_timbre": per_timbre,
                "audio_s_per_s": round(audio_seconds / seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
