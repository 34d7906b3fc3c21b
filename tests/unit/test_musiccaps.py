"""`music-gen data prepare --format musiccaps`: a CSV and audio written here -> a manifest
that the project's own reader lists and that decodes and encodes with a tiny codec."""

import csv
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from music_gen.audio import write_audio
from music_gen.cli import main
from music_gen.models.codebooks import tiny_calibrated_codec
from music_gen.pipelines import musiccaps as mc
from music_gen.pipelines import sources, tokenize
from music_gen.testing import sine

pytestmark = pytest.mark.unit

RATE = 16000
HEADER = ["ytid", "start_s", "end_s", "audioset_positive_labels", "aspect_list", "caption"]


def write_csv(path, rows, header=HEADER):
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


@pytest.fixture
def musiccaps(tmp_path):
    """Audio as downloaders leave it, and a CSV with good, missing and broken rows."""
    audio = tmp_path / "downloads"
    # A whole 3 s recording: 440 Hz, then 880 Hz in [1, 2) s (the clip), then 440 Hz.
    recording = torch.cat([sine(440, 1, RATE), sine(880, 1, RATE), sine(440, 1, RATE)], dim=1)
    write_audio(audio / "full-rec_1.wav", recording.expand(2, -1), RATE)  # stereo
    write_audio(audio / "sub" / "[clip2].flac", sine(330, 1.0, RATE), RATE)  # the clip alone
    write_audio(audio / "mp3clip.mp3", sine(550, 1.0, RATE), RATE)
    write_audio(audio / "short.wav", sine(220, 0.3, RATE), RATE)
    rows = [
        ["full-rec_1", "1", "2", "/m/x",
         "['pop', 'mellow piano melody', 'bass drum', '120 bpm', 'male vocal']",
         "A mellow pop song with piano."],
        ["clip2", "30", "31", "", "['Rock', 'electric guitar', 'energetic', 'aggressive']",
         "Loud rock guitar."],
        ["mp3clip", "0", "1", "", "['jazz', 'saxophone']", ""],
        ["gone", "10", "20", "", "['pop']", "Not downloaded."],
        ["short", "5", "6", "", "['folk']", "Truncated download."],
        ["badtime", "x", "2", "", "['pop']", "Bad seconds."],
        ["full-rec_1", "1", "2", "/m/x", "['pop']", "The same clip again."],
    ]  # fmt: skip
    return write_csv(tmp_path / "musiccaps.csv", rows), str(audio), tmp_path


def test_aspects_map_to_attributes_by_the_vocabulary():
    aspects = mc.parse_aspects(
        "['drum and bass', 'bass drum', 'sad', 'Melancholy', \"singer's voice\"]"
    )
    assert aspects[-1] == "singer's voice"
    assert mc.aspect_attributes(aspects) == {
        "genre": "drum and bass", "moods": ["sad", "melancholic"], "instrument": "drums",
    }  # fmt: skip
    mixed = ["mellow piano melody", "pop rock", "fast tempo", "96 bpm", "low quality"]
    assert mc.aspect_attributes(mixed) == {
        "genre": "pop", "moods": ["mellow"], "instrument": "piano", "bpm": 96.0,
    }  # fmt: skip
    assert mc.aspect_attributes(["male vocal", "funky"]) == {"moods": ["funky"]}  # not funk
    for bad in ("pop, rock", "['a', 1]", "__import__('os')"):
        with pytest.raises((ValueError, SyntaxError)):
            mc.parse_aspects(bad)


def test_prepare_writes_a_manifest_the_reader_lists(musiccaps, capsys):
    csv_path, audio, root = musiccaps
    manifest = root / "out" / "manifest.jsonl"
    argv = ["data", "prepare", "--format", "musiccaps", "--csv", csv_path, "--audio-dir", audio]
    assert main([*argv, "--output", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "missing audio  1" in out and "clips written  3 (2 files used as they are, 1 cut)" in out

    lines = [json.loads(line) for line in manifest.read_text().splitlines()]
    assert [line["ytid"] for line in lines] == ["full-rec_1", "clip2", "mp3clip"]
    assert lines[0]["path"] == "manifest_clips/full-rec_1_1-2.flac"  # cut, beside the manifest
    assert lines[1]["path"] == str((root / "downloads" / "sub" / "[clip2].flac").resolve())
    with open(root / "out" / "manifest.missing.csv") as handle:
        skipped = {row["ytid"]: row["reason"] for row in csv.DictReader(handle)}
    assert skipped["gone"] == "no audio file"
    assert skipped["short"].startswith("audio shorter than its clip")
    assert skipped["badtime"].startswith("bad start_s/end_s")
    assert skipped["full-rec_1"] == "duplicate row" and len(skipped) == 4

    # The cut clip is [1, 2) s of the recording, at its own rate and channels.
    cut, rate = sf.read(root / "out" / lines[0]["path"], always_2d=True)
    whole, _ = sf.read(root / "downloads" / "full-rec_1.wav", always_2d=True)
    assert rate == RATE and cut.shape == (RATE, 2)
    np.testing.assert_allclose(cut, whole[RATE : 2 * RATE], atol=1e-4)

    records = sources.list_sources(str(manifest))
    assert [r["stage"] for r in records] == ["", "", ""]
    assert records[0]["caption"] == "A mellow pop song with piano."
    assert records[2]["caption"] == "jazz, saxophone"  # no caption: from the attributes
    first = json.loads(records[0]["attributes"])
    assert (first["genre"], first["moods"], first["instrument"], first["bpm"]) == (
        "pop", ["mellow"], "piano", 120.0,
    )  # fmt: skip
    second = json.loads(records[1]["attributes"])
    assert second["genre"] == "rock" and second["moods"] == ["energetic", "aggressive"]

    # Tokenize's own decode stage and a calibrated tiny codec read every clip.
    codec = tiny_calibrated_codec(num_codebooks=4, cardinality=64)
    settings = {
        "sample_rate": codec.sample_rate, "channels": 1, "min_seconds": 0.5, "silence_db": -60.0,
        "normalize": "peak", "segment_seconds": 30.0, "stride_seconds": None, "pad_tail": False,
    }  # fmt: skip
    for record in records:
        (row,) = tokenize.decode_segments({**record, "group": 0, "order": 0}, settings)
        assert row["stage"] == "" and row["duration"] == pytest.approx(1.0, abs=0.01)
        clip = np.frombuffer(row["audio"], np.float32).reshape(1, -1)
        codes = codec.encode(torch.from_numpy(clip.copy())[None])  # [1, K, T]
        assert codes.shape[:2] == (1, 4) and abs(codes.shape[-1] - 50) <= 1
        assert int(codes.max()) > 0


def test_a_csv_without_the_columns_is_one_line(tmp_path, capsys):
    bad = write_csv(tmp_path / "bad.csv", [["a", "0", "x"]], header=["ytid", "start_s", "caption"])
    (tmp_path / "audio").mkdir()
    manifest = tmp_path / "m.jsonl"
    argv = ["data", "prepare", "--format", "musiccaps", "--csv", bad, "--audio-dir"]
    assert main([*argv, str(tmp_path / "audio"), "--output", str(manifest)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("music-gen: error: ") and err.count("\n") == 1
    assert "end_s, aspect_list" in err
    assert not manifest.exists() and not (tmp_path / "m.missing.csv").exists()


@pytest.mark.parametrize(
    "fix, message",
    [
        ({"output": "m.csv"}, "must be a .jsonl manifest"),
        ({"csv": "none.csv"}, "not found"),
        ({"audio": "none"}, "is not a folder"),
    ],
)
def test_bad_paths_are_one_line(musiccaps, capsys, fix, message):
    csv_path, audio, root = musiccaps
    output = root / fix.get("output", "m.jsonl")
    csv_path = str(root / fix["csv"]) if "csv" in fix else csv_path
    audio = str(root / fix["audio"]) if "audio" in fix else audio
    argv = ["data", "prepare", "--format", "musiccaps", "--csv", csv_path, "--audio-dir", audio]
    assert main([*argv, "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not output.exists()
