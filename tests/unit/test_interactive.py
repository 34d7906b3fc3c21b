"""`music-gen interactive`: driven through a pipe, and its session in-process."""

import subprocess
import sys

import pytest
import torch

from music_gen.audio import audio_info
from music_gen.cli.interactive import Session, Settings
from music_gen.errors import UsageError
from tests.helpers import tiny_musicgen

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def model():
    return tiny_musicgen()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory):
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "model")


def test_a_piped_session_writes_files_and_changes_settings(checkpoint, tmp_path):
    script = "\n".join(
        [
            ":duration 0.2",
            ":seed 7",
            "a calm piano",
            ":bogus",
            ":duration abc",
            "a calm piano",
            ":seed 8",
            "a calm piano",
            ":continue",
            ":cfg 4",
            ":settings",
            ":history",
            ":quit",
            "never read: the session ended",
        ]
    )
    out = tmp_path / "takes"
    result = subprocess.run(
        [sys.executable, "-m", "music_gen.cli", "interactive", "--model", str(checkpoint)]
        + ["--output-dir", str(out), "--device", "cpu"],
        input=script + "\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    paths = [line for line in lines if line.endswith(".wav")]
    assert len(paths) == 4, result.stdout
    assert sorted(p.name for p in out.iterdir()) == sorted(p.rsplit("/", 1)[-1] for p in paths)
    infos = [audio_info(p) for p in paths]
    assert [i.duration for i in infos[:3]] == pytest.approx([0.2] * 3, abs=0.021)
    assert infos[3].duration == pytest.approx(0.4, abs=0.041)  # the last clip + 0.2 s
    # (The tiny codec's codebooks are random zeros: its audio says nothing of the codes,
    # so what the seed does is checked in code space below.)
    rest = [line for line in lines if not line.endswith(".wav")]
    assert "cfg 4," in rest[0] and "seed 8," in rest[0] and "duration 0.2 s" in rest[0]
    # The history: the four prompts (the continuation reuses the last one).
    assert [line.split(None, 1)[1] for line in rest[1:]] == ["a calm piano"] * 4
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "unknown command ':bogus'" in errors[0]
    assert ":duration needs a number, got 'abc'" in errors[1]
    assert "Traceback" not in result.stderr


def test_seed_fixes_the_codes_and_continue_keeps_the_prefix(model, tmp_path):
    session = Session(model, tmp_path, Settings(duration=0.2, seed=3))
    one = session.generate("bass line")
    codes = session.last_codes
    two = session.generate("bass line")
    assert one != two and one.is_file() and two.is_file()
    assert torch.equal(session.last_codes, codes)  # same seed, same settings: same codes
    session.handle(":seed 4")
    session.generate("bass line")
    assert not torch.equal(session.last_codes, codes)
    session.handle(":seed 3")
    session.generate("bass line")
    assert session.handle(":continue") is True
    assert session.last_codes.shape[-1] == 2 * codes.shape[-1]
    assert torch.equal(session.last_codes[..., : codes.shape[-1]], codes)


def test_bad_lines_raise_one_usage_error_and_change_nothing(model, tmp_path):
    session = Session(model, tmp_path, Settings(duration=0.2))
    for line in [":nope", ":seed x", ":cfg -1", ":duration 0", ":duration 9999", ":top-k"]:
        with pytest.raises(UsageError):
            session.handle(line)
    with pytest.raises(UsageError, match="no clip yet"):
        session.handle(":continue")
    assert session.settings == Settings(duration=0.2)
    assert session.handle(":exit") is False
    assert list(tmp_path.iterdir()) == []
