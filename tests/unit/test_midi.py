"""MIDI export: known synthetic melodies transcribed, `transcribe` and `generate --midi`."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from music_gen.audio import write_audio
from music_gen.audio.midi import (
    Note,
    read_midi,
    score_notes,
    segment_notes,
    summary,
    transcribe,
    write_midi,
)
from music_gen.cli import main
from music_gen.testing import TIMBRES, random_melody, render_notes
from tests.helpers import tiny_musicgen

pytestmark = pytest.mark.unit

RATE = 22050


@pytest.fixture(scope="module")
def melody_clip(tmp_path_factory):
    """A WAV of a known melody and its notes."""
    notes = random_melody(seed=0, count=10)
    path = tmp_path_factory.mktemp("clips") / "tune.wav"
    write_audio(path, render_notes(notes, RATE, "organ"), RATE)
    return path, notes


def test_known_melodies_are_transcribed_with_their_onsets_and_pitches():
    scores = []
    for timbre in TIMBRES:
        for seed in range(2):
            reference = random_melody(seed, count=10)
            notes = transcribe(render_notes(reference, RATE, timbre), RATE)
            scores.append(score_notes(notes, reference, onset_tolerance=0.05))
    mean = {key: float(np.nanmean([s[key] for s in scores])) for key in scores[0]}
    print(  # the figures, seen with pytest -s
        f"\ntranscription of {len(scores)} clips: onset F {mean['onset_f_measure']:.3f}, "
        f"note F {mean['note_f_measure']:.3f}, pitch accuracy {mean['pitch_accuracy']:.3f}, "
        f"mean onset error {mean['mean_onset_error_s'] * 1000:.1f} ms"
    )
    assert mean["onset_f_measure"] >= 0.9  # onsets within 50 ms
    assert mean["note_f_measure"] >= 0.85  # onset within 50 ms and the right pitch
    assert mean["pitch_accuracy"] >= 0.9
    assert mean["mean_onset_error_s"] < 0.03


def test_stereo_and_any_sample_rate_give_the_same_notes():
    reference = random_melody(seed=3, count=6, low=48, high=80)
    mono = transcribe(render_notes(reference, 16000, "clarinet"), 16000)
    stereo = render_notes(reference, 44100, "clarinet").repeat(2, 1)  # [2, S]
    assert [n.pitch for n in transcribe(stereo, 44100)] == [n.pitch for n in mono]
    assert score_notes(mono, reference)["note_f_measure"] >= 0.8


def test_silence_has_no_notes():
    assert transcribe(torch.zeros(1, RATE), RATE) == []
    assert transcribe(torch.zeros(1, 100), RATE) == []  # shorter than one frame
    assert summary([]).startswith("no notes")


def test_repeated_pitch_is_cut_at_its_onset_and_glitches_dropped():
    pitches = np.array([-1] * 5 + [60] * 30 + [61] * 2 + [64] * 20 + [-1] * 5)
    rms = np.ones(len(pitches))
    notes = segment_notes(pitches, np.array([5, 20, 37]), rms, frame_seconds=0.01)
    assert [(n.pitch, round(n.onset, 2), round(n.offset, 2)) for n in notes] == [
        (60, 0.05, 0.2),
        (60, 0.2, 0.35),
        (64, 0.37, 0.57),  # the 2-frame 61 is a glitch, not a note
    ]
    assert all(n.velocity == 127 for n in notes)


def test_scores_pair_each_note_once():
    reference = [Note(0.1, 0.3, 60), Note(0.5, 0.7, 62)]
    estimated = [Note(0.12, 0.3, 60), Note(0.13, 0.3, 60), Note(0.52, 0.7, 64)]
    scores = score_notes(estimated, reference)
    assert scores["onset_recall"] == 1.0 and scores["onset_precision"] == pytest.approx(2 / 3)
    assert scores["note_recall"] == 0.5 and scores["pitch_accuracy"] == 0.5


def test_midi_file_round_trip(tmp_path):
    notes = [Note(0.1, 0.4, 60, 90), Note(0.5, 1.0, 67, 40)]
    path = write_midi(tmp_path / "song.mid", notes)
    assert path.read_bytes()[:4] == b"MThd"
    back = read_midi(path)
    assert [(n.pitch, n.velocity) for n in back] == [(60, 90), (67, 40)]
    assert [n.onset for n in back] == pytest.approx([0.1, 0.5], abs=1e-3)
    assert [n.offset for n in back] == pytest.approx([0.4, 1.0], abs=1e-3)
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


# -- the command line ---------------------------------------------------------------------


def test_console_script_transcribes_a_clip(melody_clip, tmp_path):
    clip, reference = melody_clip
    out = tmp_path / "tune.mid"
    result = subprocess.run(
        [sys.executable, "-m", "music_gen.cli", "transcribe", str(clip), "--output", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(out)) and " notes, " in result.stdout
    assert score_notes(read_midi(out), reference)["note_f_measure"] >= 0.8


def test_many_clips_to_a_folder_or_beside_each_clip(melody_clip, tmp_path, capsys):
    clip, _ = melody_clip
    second = tmp_path / "two.flac"
    write_audio(second, render_notes(random_melody(5, 4), RATE, "sine"), RATE)
    assert main(["transcribe", str(clip), str(second), "--output-dir", str(tmp_path / "m")]) == 0
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["tune.mid", "two.mid"]
    assert main(["transcribe", str(second)]) == 0  # default: beside the clip
    assert (tmp_path / "two.mid").is_file()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(" notes, " in line for line in lines)


@pytest.mark.parametrize("problem", ["missing", "not audio", "empty", "output is a folder"])
def test_bad_input_is_one_line_and_leaves_no_file(problem, melody_clip, tmp_path, capsys):
    clip, _ = melody_clip
    out = tmp_path / "out.mid"
    if problem == "missing":
        clip = tmp_path / "nope.wav"
    elif problem == "not audio":
        clip = tmp_path / "notes.wav"
        clip.write_text("not a sound\n" * 50)
    elif problem == "empty":
        clip = tmp_path / "empty.wav"
        clip.touch()
    else:
        out = tmp_path / "folder"
        out.mkdir()
    code = main(["transcribe", str(clip), "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and err.startswith("music-gen: error:"), err
    assert not list(tmp_path.glob("*.mid")) and not list(tmp_path.glob(".*.tmp"))


def test_two_clips_to_one_output_is_refused(melody_clip, tmp_path, capsys):
    clip, _ = melody_clip
    assert main(["transcribe", str(clip), str(clip), "-o", str(tmp_path / "x.mid")]) == 2
    assert "--output-dir" in capsys.readouterr().err


def test_missing_extra_says_what_to_install(melody_clip, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "librosa", None)  # import librosa -> ImportError
    clip, _ = melody_clip
    assert main(["transcribe", str(clip), "-o", str(tmp_path / "x.mid")]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        "music-gen: error: MIDI export needs librosa and pretty_midi: pip install 'music-gen[midi]'"
    )
    assert not (tmp_path / "x.mid").exists()


def test_generate_midi_writes_a_midi_file_beside_each_clip(tmp_path, capsys):
    checkpoint = tiny_musicgen().save_pretrained(tmp_path / "model")
    out = tmp_path / "clip.wav"
    code = main(
        ["generate", "anything", "--model", str(checkpoint), "--duration", "0.5"]
        + ["--output", str(out), "--seed", "1", "--midi"]
    )
    assert code == 0
    midi_path = tmp_path / "clip.mid"
    assert midi_path.read_bytes()[:4] == b"MThd"
    read_midi(midi_path)  # random weights: noise, so any number of notes
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"{midi_path}  ")
