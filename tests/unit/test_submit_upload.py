"""What `music-gen submit` uploads: the user's folder, their data, the package; never the
platform's own state; and a clear refusal for paths the cluster would not have."""

import pytest

from music_gen.errors import UsageError
from music_gen.platform import jobs

pytestmark = pytest.mark.unit


@pytest.fixture
def project(tmp_path, monkeypatch):
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "run.yaml").write_text("train: {steps: 1}\n")
    (tmp_path / "work" / "tokens").mkdir(parents=True)
    (tmp_path / "work" / "tokens" / "shard-0.parquet").write_bytes(b"x" * 1000)
    (tmp_path / "work" / "runs" / "old").mkdir(parents=True)
    (tmp_path / "work" / "runs" / "old" / "big.safetensors").write_bytes(b"x" * 5000)
    (tmp_path / "work" / "mlflow.db").write_bytes(b"db")
    (tmp_path / ".venv" / "lib").mkdir(parents=True)
    (tmp_path / ".venv" / "lib" / "x.py").write_text("")
    (tmp_path / ".gitignore").write_text("work/\n")  # must not hide the user's data
    (tmp_path / ".rayignore").write_text("scratch/\n")
    (tmp_path / "scratch").mkdir()
    (tmp_path / "scratch" / "tmp.txt").write_text("t")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_uploads_the_current_folder_with_its_data_and_not_the_state(project):
    upload = jobs.plan_upload()
    names = {p.relative_to(project).as_posix() for p in upload.files}
    assert {"configs/run.yaml", "work/tokens/shard-0.parquet", ".gitignore"} <= names
    assert not any(n.startswith(("work/runs", ".venv", "scratch")) for n in names)
    assert "work/mlflow.db" not in names
    assert upload.ships_package  # the music_gen package is not inside this folder
    assert upload.describe().startswith(f"uploading {project} (")
    spec = jobs.runtime_env(upload=upload)
    assert spec["working_dir"] == str(project) and len(spec["py_modules"]) == 1


def test_paths_in_the_command_must_reach_the_cluster(project):
    upload = jobs.plan_upload()
    jobs.check_paths(["train", "--config", "configs/run.yaml", "--data", "work/tokens"], upload)
    jobs.check_paths(["train", "data.output=work/tokens", "train.lr=1e-3"], upload)
    with pytest.raises(UsageError, match="'work/runs/old' is left out of the upload"):
        jobs.check_paths(["train", "--init", "work/runs/old"], upload)
    with pytest.raises(UsageError, match="'scratch' is left out"):
        jobs.check_paths(["data", "tokenize", "--input", "scratch"], upload)
    only_configs = jobs.plan_upload(str(project / "configs"))
    with pytest.raises(UsageError, match="'work/tokens' is outside the uploaded folder"):
        jobs.check_paths(["evaluate", "--data", "work/tokens"], only_configs)


def test_an_upload_over_the_limit_is_refused(project, monkeypatch):
    monkeypatch.setattr(jobs, "MAX_UPLOAD_BYTES", 500)
    with pytest.raises(UsageError, match="over Ray's"):
        jobs.plan_upload()


def test_a_working_dir_that_is_not_a_folder(project):
    with pytest.raises(UsageError, match="not a directory"):
        jobs.plan_upload(str(project / "configs" / "run.yaml"))
