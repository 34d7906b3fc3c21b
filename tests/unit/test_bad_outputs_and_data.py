"""Hardening (issue 8) outside training, through the real CLI on tiny data the tests write.

Each failure is one line ``music-gen: error: ...``, a non-zero exit, no traceback, and
nothing left behind:

- outputs in the way (a file where a folder goes, a folder where a file goes) are
  refused before any work, and results are written atomically;
- empty or damaged datasets are refused before evaluation starts, and
  ``data validate`` fails on them;
- a ``runs:/`` URI against a store that does not exist yet creates no store;
- a Ray address with nothing listening fails at once.
"""

import os

import pytest

from music_gen import outputs
from music_gen.cli import main
from music_gen.errors import UsageError
from music_gen.pipelines import shards
from tests.helpers import make_synth_dataset, tiny_codec_config, tiny_musicgen

pytestmark = pytest.mark.unit


def snapshot(root):
    """Every path under ``root`` with its size (folders: -1): what a failed command must keep."""
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1)
        for p in sorted(root.rglob("*"))
    }


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("music-gen: error: "), err
    return err


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_musicgen().save_pretrained(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from music_gen.models.codec import build_codec

    root = tmp_path_factory.mktemp("data") / "ds"
    return make_synth_dataset(root, build_codec(tiny_codec_config()), num_clips=6, seconds=0.4)


# --- class 4: outputs in the way ------------------------------------------------------------


def _output_cases(checkpoint, dataset):
    return {
        "synth into a file": ["data", "synth", "-o", "afile", "--num-clips", "2"],
        "synth under a file": ["data", "synth", "-o", "afile/sub", "--num-clips", "2"],
        "calibrate into a file": ["codec", "calibrate", "-i", "clips", "-o", "afile"],
        "tokenize into a file": ["data", "tokenize", "-i", "clips", "-o", "afile"],
        "evaluate -o a folder": [
            "evaluate", "--model", checkpoint, "--data", dataset, "-o", "adir", "--no-mlflow",
        ],
        "generate -o a folder": ["generate", "x", "--random-init", "-o", "adir.wav"],
        "generate --output-dir under a file": [
            "generate", "--prompts", "prompts.txt", "--output-dir", "afile/out", "--random-init",
        ],
    }  # fmt: skip


CASES = [
    "synth into a file",
    "synth under a file",
    "calibrate into a file",
    "tokenize into a file",
    "evaluate -o a folder",
    "generate -o a folder",
    "generate --output-dir under a file",
]


@pytest.mark.parametrize("case", CASES)
def test_an_output_in_the_way_is_refused_before_the_work(
    case, checkpoint, dataset, tmp_path, monkeypatch, capsys
):
    from music_gen.models import generator

    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("keep me")
    (tmp_path / "adir").mkdir()
    (tmp_path / "adir.wav").mkdir()
    (tmp_path / "clips").mkdir()
    (tmp_path / "prompts.txt").write_text("jazz\n")

    def no_work(*args, **kwargs):
        raise AssertionError("the work started before the output was checked")

    # The expensive steps: a model load or build must not happen before the check.
    monkeypatch.setattr(generator.MusicGen, "from_pretrained", classmethod(no_work))
    monkeypatch.setattr(generator.MusicGen, "from_config", classmethod(no_work))
    before = snapshot(tmp_path)
    argv = _output_cases(str(checkpoint), str(dataset))[case]
    assert main(argv) == 2
    err = one_error_line(capsys)
    assert ("is a file, not a folder" in err) or ("is a folder; give a file path" in err), err
    assert snapshot(tmp_path) == before  # nothing created, nothing removed


def test_results_are_written_atomically_and_leave_no_temp_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    target.write_text("old")
    outputs.write_text(target, "new")
    assert target.read_text() == "new"

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        outputs.write_text(target, "newer")
    assert target.read_text() == "new"  # the old result is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no stray temp file
    with pytest.raises(UsageError, match="is a folder"):
        outputs.check_file(tmp_path, "--output")


# --- class 3: damaged state passes as good ---------------------------------------------------


def _damage(root, how: str) -> None:
    shard = root / shards.SHARDS / (shards.part_name(0) + ".parquet")
    if how == "deleted shard":
        shard.unlink()
    elif how == "truncated shard":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif how == "no rows":
        pass  # written empty by the fixture below


@pytest.fixture
def damaged(tmp_path, request):
    """A copy of a tiny dataset, damaged as ``request.param`` says."""
    from music_gen.models.codec import build_codec
    from tests.helpers import write_dataset

    codec = build_codec(tiny_codec_config())
    root = tmp_path / "ds"
    if request.param == "no rows":
        write_dataset(root, [], [], codec, save_codec=False)
    else:
        make_synth_dataset(root, codec, num_clips=4, seconds=0.4, save_codec=False)
    _damage(root, request.param)
    return root, request.param


DAMAGE = {
    "deleted shard": "has no shards",
    "truncated shard": "is damaged (shards/part-00000.parquet is",
    "no rows": "holds no clips",
}


@pytest.mark.parametrize("damaged", list(DAMAGE), indirect=True)
def test_empty_or_damaged_data_is_refused_before_evaluating_and_fails_validate(
    damaged, checkpoint, tmp_path, monkeypatch, capsys
):
    from music_gen.pipelines import evaluate

    root, how = damaged
    monkeypatch.chdir(tmp_path)

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(evaluate, "load_model", no_model)
    before = snapshot(tmp_path)
    argv = ["evaluate", "--model", str(checkpoint), "--data", str(root), "--no-mlflow"]
    assert main([*argv, "-o", "results.json"]) == 1
    assert DAMAGE[how] in one_error_line(capsys)
    assert snapshot(tmp_path) == before  # no results file, no temp file
    # The same shared check is what training calls before any worker starts.
    with pytest.raises(shards.MusicGenError, match="shard|clips"):
        shards.readable_shards(str(root))
    from music_gen.config import load_config
    from music_gen.pipelines.train import plan_run

    with pytest.raises(shards.MusicGenError, match=DAMAGE[how].split(" (")[0]):
        plan_run(load_config((), [f"data.output={root}"]))
    assert main(["data", "validate", str(root)]) == 1
    report = capsys.readouterr().out
    assert "violations  0" not in report


def test_a_good_dataset_passes_the_shared_check(dataset, capsys):
    assert len(shards.readable_shards(str(dataset))) == 1
    assert main(["data", "validate", str(dataset)]) == 0
    assert "violations  0" in capsys.readouterr().out


# --- class 9: reading a model URI creates no store ----------------------------------------


@pytest.mark.parametrize("uri", ["runs:/nonexistent/model", "models:/nothing@production"])
def test_a_model_uri_against_a_store_that_does_not_exist_creates_none(
    uri, tmp_path, monkeypatch, capsys
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MUSIC_GEN_WORK_DIR", raising=False)
    assert main(["generate", "x", "--model", uri, "-o", "out.wav"]) == 1
    err = one_error_line(capsys)
    assert "no MLflow store at" in err and uri in err
    assert list(tmp_path.iterdir()) == []  # no ./work/mlflow.db, no out.wav
