"""`evaluate --samples` into a training run, then `report`: samples embedded, loss curves
read from the run's MLflow history (a real sqlite store). No Ray: evaluation needs none;
integration tier for MLflow's start-up (seconds on two cores)."""

import json
from html.parser import HTMLParser

import pytest

from music_gen import MusicGen
from music_gen.cli import main
from music_gen.models.codebooks import tiny_calibrated_codec
from music_gen.pipelines import report
from music_gen.testing import make_synth_dataset, tiny_model_config

pytestmark = pytest.mark.integration


class Sources(HTMLParser):
    def __init__(self, text):
        super().__init__()
        self.found: list[tuple[str, str]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        src = dict(attrs).get("src")
        if src:
            self.found.append((tag, src))


@pytest.fixture
def training_run(tmp_path, monkeypatch):
    """A run with a training loss history, as the training loop logs it."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)
    client = MlflowClient(uri)
    run = client.create_run(client.create_experiment("train")).info.run_id
    metrics = [Metric("train_loss", 5.0 - 0.5 * s, 0, s) for s in range(1, 5)]
    client.log_batch(run, metrics=metrics + [Metric("val_loss", 3.4, 0, 4)])
    return run


def test_evaluate_samples_then_report_with_mlflow_curves(tmp_path, training_run, capsys):
    codec = tiny_calibrated_codec(num_codebooks=4, cardinality=64)
    model_dir = str(
        MusicGen.from_config(tiny_model_config(), codec).save_pretrained(tmp_path / "m")
    )
    data = make_synth_dataset(tmp_path / "data", codec, num_clips=12, save_codec=False)
    results_path = tmp_path / "eval" / "results.json"
    code = main(
        ["evaluate", "--model", model_dir, "--data", data, "--per-class", "1",
         "--duration", "0.5", "--fad-clips", "4", "--device", "cpu", "--run-id", training_run,
         "--samples", "2", "-o", str(results_path)]
    )  # fmt: skip
    assert code == 0
    assert "samples      2 clips in" in capsys.readouterr().out
    results = json.loads(results_path.read_text())
    assert [s["path"] for s in results["samples"]] == [
        "results_samples/sample-000.wav",
        "results_samples/sample-003.wav",  # 6 classes x 1: spread evenly
    ]
    assert all((results_path.parent / s["path"]).is_file() for s in results["samples"])

    assert report.run_ids_of(results) == [training_run]
    assert main(["report", str(results_path), "-o", str(tmp_path / "report.html")]) == 0
    out = capsys.readouterr().out
    assert "loss curves  train_loss, val_loss" in out and "samples      2 embedded" in out
    found = Sources((tmp_path / "report.html").read_text()).found
    assert [tag for tag, _ in found].count("audio") == 2
    assert [tag for tag, _ in found].count("img") == 3  # curves + 2 spectrograms
    history, _ = report.mlflow_history([training_run])
    assert history["train_loss"] == [[1, 4.5], [2, 4.0], [3, 3.5], [4, 3.0]]
