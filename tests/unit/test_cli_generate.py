"""`music-gen generate`: files that play, and one-line errors for bad input."""

import subprocess
import sys

import pytest

from music_gen.audio import audio_info, read_audio
from music_gen.cli import main, split_overrides
from tests.helpers import tiny_musicgen

pytestmark = pytest.mark.unit

TINY = [
    "model.dim=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.text.dim=16",
    "model.text.num_layers=1",
    "model.text.num_heads=2",
    "codec.cardinality=64",
]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_musicgen().save_pretrained(tmp_path_factory.mktemp("ckpt") / "model")


def test_console_script_writes_a_playable_file(checkpoint, tmp_path):
    out = tmp_path / "jazz.wav"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "music_gen.cli",
            "generate",
            "upbeat jazz",
            "--model",
            str(checkpoint),
            "--duration",
            "0.5",
            "--output",
            str(out),
            "--seed",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    info = audio_info(out)
    assert info.format == "wav" and info.channels == 1
    assert info.duration == pytest.approx(0.5, abs=0.02)
    audio, _ = read_audio(out)
    assert float(audio.abs().max()) > 0  # not silence


def test_batch_of_prompts_in_each_format(checkpoint, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("jazz\n\n# a comment\nslow rock\nambient pads\n")
    for fmt in ("flac", "mp3", "ogg"):
        code = main(
            [
                "generate",
                "--prompts",
                str(prompts),
                "--model",
                str(checkpoint),
                "--output-dir",
                str(tmp_path / fmt),
                "--format",
                fmt,
                "--duration",
                "0.3",
                "--batch-size",
                "2",
            ]
        )
        assert code == 0
        files = sorted((tmp_path / fmt).iterdir())
        assert [f.name for f in files] == [
            f"000_jazz.{fmt}",
            f"001_slow_rock.{fmt}",
            f"002_ambient_pads.{fmt}",
        ]
        assert all(audio_info(f).frames > 0 for f in files)


def test_random_init_with_overrides(tmp_path, capsys):
    out = tmp_path / "noise.flac"
    assert main(["generate", "x", "--random-init", *TINY, "--duration", "0.2", "-o", str(out)]) == 0
    assert "random" in capsys.readouterr().out
    assert audio_info(out).format == "flac"


def test_audio_prompt_continuation(checkpoint, tmp_path):
    from music_gen.audio import write_audio
    from tests.helpers import sine

    prompt = write_audio(tmp_path / "intro.wav", sine(330, 0.4, 44100, channels=2), 44100)
    out = tmp_path / "cont.wav"
    assert (
        main(
            [
                "generate",
                "more",
                "--model",
                str(checkpoint),
                "--audio-prompt",
                str(prompt),
                "--duration",
                "1.0",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert audio_info(out).duration == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["generate", "", "--random-init"], 2, "prompt 1 is empty"),
        (["generate", "x", "--random-init", "--duration", "0"], 2, "duration"),
        (["generate", "x", "--random-init", "--duration", "99999"], 2, "duration"),
        (["generate", "x", "--random-init", "-o", "out.xyz"], 2, "unknown audio format 'xyz'"),
        (["generate", "x", "--random-init", "model.dimm=3"], 2, "unknown config key 'model.dimm'"),
        (["generate", "x"], 2, "give --model"),
        (["generate", "x", "--model", "/does/not/exist"], 1, "checkpoint not found"),
        (
            ["generate", "--prompts", "/no/such/file.txt", "--output-dir", "d", "--random-init"],
            2,
            "cannot read prompts file",
        ),
        (["generate", "x", "--random-init", "--device", "cuda:7"], 2, "device 'cuda:7'"),
        (["generate", "x", "--random-init", "--device", "abacus"], 2, "unknown device 'abacus'"),
        (["generate", "x", "--random-init", "--temperature", "nan"], 2, "temperature"),
        (["generate", "x", "--random-init", "--cfg", "inf"], 2, "guidance_scale"),
        (
            ["generate", "x", "--random-init", "model.dim=30", "model.num_heads=4"],
            2,
            "model: dim 30 is not divisible by 4 heads",
        ),
    ],
)
def test_bad_input_is_one_line_and_nonzero(argv, code, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing written


def test_prompts_file_that_is_not_utf8(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.txt").write_bytes(b"\xff\xfe jazz\n")
    argv = ["generate", "--prompts", "prompts.txt", "--output-dir", "out", "--random-init"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "not UTF-8" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_corrupt_checkpoint_and_unreadable_audio_prompt(checkpoint, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(checkpoint, broken)
    (broken / "music_gen.json").write_text("{not json")
    assert main(["generate", "x", "--model", str(broken), "-o", str(tmp_path / "a.wav")]) == 1
    assert "cannot read" in capsys.readouterr().err
    bad = tmp_path / "bad.wav"
    bad.write_text("this is not audio")
    out = tmp_path / "b.wav"
    assert (
        main(
            [
                "generate",
                "x",
                "--model",
                str(checkpoint),
                "--audio-prompt",
                str(bad),
                "-o",
                str(out),
            ]
        )
        == 1
    )
    assert "bad.wav" in capsys.readouterr().err
    assert not out.exists() and not (tmp_path / "a.wav").exists()


def test_overrides_are_found_anywhere_but_not_after_double_dash():
    rest, overrides = split_overrides(["train", "train.lr=1", "--config", "a.yaml", "model.dim=8"])
    assert rest == ["train", "--config", "a.yaml"] and overrides == ["train.lr=1", "model.dim=8"]
    rest, overrides = split_overrides(["submit", "--", "train", "train.lr=1"])
    assert overrides == [] and rest == ["submit", "--", "train", "train.lr=1"]
