"""`music-gen evaluate` end to end: a saved tiny random model, tiny synthetic data, MLflow.

Evaluation reads shards with plain pyarrow and needs no Ray; the data is written
directly (``music_gen.testing.make_synth_dataset``), which is much faster on two
cores than the tokenize pipeline and gives the same shard format. A random model does
not follow prompts, so these tests check structure and ranges, not high accuracy.
"""

import json
import math

import numpy as np
import pytest

from music_gen import MusicGen
from music_gen.cli import main
from music_gen.models.codebooks import tiny_calibrated_codec
from music_gen.pipelines import evaluate as ev
from music_gen.pipelines import synth
from music_gen.testing import make_synth_dataset, synth_codes, tiny_model_config, write_dataset

pytestmark = pytest.mark.integration

PER_CLASS = 2
NUM_CLASSES = len(synth.SYNTH_CLASSES)


@pytest.fixture(scope="module")
def codec():
    return tiny_calibrated_codec(num_codebooks=4, cardinality=64)


@pytest.fixture(scope="module")
def model_dir(codec, tmp_path_factory):
    model = MusicGen.from_config(tiny_model_config(), codec)
    return str(model.save_pretrained(tmp_path_factory.mktemp("model") / "tiny"))


@pytest.fixture(scope="module")
def data_dir(codec, tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return make_synth_dataset(root, codec, num_clips=24, seconds=1.0, save_codec=False)


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One private MLflow store for the module (creating a sqlite store takes seconds);
    the cwd too, where MLflow puts a sqlite store's artifacts."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.chdir(root)
        yield uri


def evaluate_args(model_dir, data_dir, *extra):
    return [
        "evaluate",
        "--model",
        model_dir,
        "--data",
        data_dir,
        "--per-class",
        str(PER_CLASS),
        "--duration",
        "0.5",
        "--fad-clips",
        "4",
        "--batch-size",
        "6",
        "--device",
        "cpu",
        *extra,
    ]


def check_results(results: dict) -> None:
    val = results["validation"]
    assert math.isfinite(val["loss"]) and val["loss"] > 0
    assert val["perplexity"] == pytest.approx(math.exp(val["loss"]))
    assert len(val["per_codebook"]) == 4 and val["rows"] >= 1
    # A random model's loss sits near log(card): it has learned nothing.
    assert abs(val["loss"] - math.log(64)) < 1.0

    adherence = results["prompt_adherence"]
    assert adherence["labels"] == list(synth.SYNTH_CLASSES)
    assert adherence["chance"] == pytest.approx(1 / NUM_CLASSES)
    assert 0.0 <= adherence["accuracy"] <= 1.0
    confusion = np.array(adherence["confusion"])
    assert confusion.shape == (NUM_CLASSES, NUM_CLASSES)
    assert (confusion.sum(axis=1) == PER_CLASS).all()
    assert adherence["accuracy"] == pytest.approx(np.trace(confusion) / confusion.sum())
    by_ear = adherence["audio"]  # the same generations, decoded and classified on audio
    assert by_ear["labels"] == adherence["labels"] and by_ear["classifier"] == "log-mel centroid"
    assert np.array(by_ear["confusion"]).sum(axis=1).tolist() == [PER_CLASS] * NUM_CLASSES

    fad = results["fad"]
    assert math.isfinite(fad["fad"]) and fad["fad"] >= 0
    assert fad["embedding"] == "log-mel" and fad["fake_clips"] == PER_CLASS * NUM_CLASSES


def test_prompt_adherence_by_ear_judges_the_same_generations_on_audio(model_dir, data_dir):
    """The benchmarks' entry point: adherence on codes, and with ``by_ear`` on audio."""
    model = MusicGen.from_pretrained(model_dir)
    report = ev.prompt_adherence(model, data_dir, per_class=1, duration=0.3, by_ear=True)
    by_ear = report["audio"]
    assert by_ear["labels"] == report["labels"] == list(synth.SYNTH_CLASSES)
    assert np.array(by_ear["confusion"]).sum(axis=1).tolist() == [1] * NUM_CLASSES
    assert 0.0 <= by_ear["accuracy"] <= 1.0
    assert "audio" not in ev.prompt_adherence(model, data_dir, per_class=1, duration=0.3)


@pytest.mark.slow
def test_evaluate_cli_writes_json_and_logs_to_mlflow(
    model_dir, data_dir, tracking, tmp_path, capsys
):
    import mlflow

    output = tmp_path / "out" / "results.json"
    assert main(evaluate_args(model_dir, data_dir, "-o", str(output))) == 0
    printed = capsys.readouterr().out
    assert "adherence" in printed and "fad" in printed

    results = json.loads(output.read_text())
    check_results(results)
    run = mlflow.MlflowClient(tracking).get_run(results["mlflow_run_id"])
    metrics = run.data.metrics
    assert metrics["eval_loss"] == pytest.approx(results["validation"]["loss"])
    assert metrics["eval_adherence_accuracy"] == pytest.approx(
        results["prompt_adherence"]["accuracy"]
    )
    assert metrics["eval_fad"] == pytest.approx(results["fad"]["fad"])
    audio = results["prompt_adherence"]["audio"]["accuracy"]
    assert metrics["eval_audio_adherence_accuracy"] == pytest.approx(audio)
    assert "on audio" in printed
    assert {f"eval_loss_cb{k}" for k in range(4)} <= metrics.keys()
    experiment = mlflow.MlflowClient(tracking).get_experiment(run.info.experiment_id)
    assert experiment.name == "evaluate"
    artifacts = mlflow.MlflowClient(tracking).list_artifacts(run.info.run_id, "evaluate")
    assert [a.path for a in artifacts] == ["evaluate/results.json"]


def test_evaluate_logs_into_a_given_run(model_dir, data_dir, tracking):
    import mlflow

    client = mlflow.MlflowClient(tracking)
    run_id = client.create_run(client.create_experiment("training")).info.run_id
    settings = ev.EvaluateConfig(per_class=1, duration=0.2, fad_clips=2, batch_size=6)
    results = ev.evaluate(model_dir, data_dir, settings, run_id=run_id)
    assert results["mlflow_run_id"] == run_id
    assert "eval_fad" in client.get_run(run_id).data.metrics


def test_unknown_run_id_is_a_one_line_error(model_dir, data_dir, tracking, capsys):
    args = evaluate_args(model_dir, data_dir, "--run-id", "0123456789abcdef0123456789abcdef")
    assert main(args) == 1  # before any model is loaded
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("music-gen: error: MLflow") and "not found" in err[-1]
    assert not any("Traceback" in line for line in err)


def test_non_synthetic_data_skips_adherence(codec, model_dir, tmp_path):
    codes, _ = synth_codes(codec, num_clips=4, seconds=0.6)
    # Captions and attributes that name no synth class: not synthetic data.
    plain = [{"name": f"song{i}", "description": f"a song number {i}"} for i in range(4)]
    root = write_dataset(tmp_path / "plain", codes, plain, codec, save_codec=False)
    settings = ev.EvaluateConfig(duration=0.2, fad_clips=4, batch_size=4)
    results = ev.evaluate(model_dir, root, settings, mlflow_logging=False)
    assert "skipped" in results["prompt_adherence"]
    assert math.isfinite(results["validation"]["loss"])
    assert results["fad"]["fake_clips"] == 4 and math.isfinite(results["fad"]["fad"])


def test_codec_mismatch_is_a_user_error(model_dir, tmp_path, capsys):
    other = tiny_calibrated_codec(num_codebooks=2, cardinality=64)
    data = make_synth_dataset(tmp_path / "k2", other, num_clips=2, seconds=0.2, save_codec=False)
    assert main(["evaluate", "--model", model_dir, "--data", data, "--no-mlflow"]) == 1
    assert "codebooks" in capsys.readouterr().err


def test_held_out_rows_follow_data_val_fraction(model_dir, data_dir, tmp_path):
    # The same files as training holds out: data.val_fraction of the config, unless
    # --val-fraction says otherwise.
    rows = ev.read_rows(data_dir)
    held = {f: len(ev.split_rows(rows, f)[1]) for f in (0.05, 0.3)}
    assert held[0.05] != held[0.3]
    for extra, fraction in [(["data.val_fraction=0.3"], 0.3), (["--val-fraction", "0.05"], 0.05)]:
        out = tmp_path / "results.json"
        args = evaluate_args(model_dir, data_dir, "--no-mlflow", "-o", str(out), *extra)
        assert main([*args, "--per-class", "1", "--duration", "0.2"]) == 0
        assert json.loads(out.read_text())["validation"]["rows"] == held[fraction]


def test_register_metrics_feeds_the_promotion_gate(model_dir, data_dir, tracking, capsys):
    from music_gen.platform import registry

    name = "eval-gated"
    assert main(["registry", "register", "--model", model_dir, "--name", name]) == 0
    assert main(["registry", "register", "--model", model_dir, "--name", name]) == 0
    registry.record_metrics(name, "1", {"eval_loss": 0.5})  # an unbeatable holder
    assert main(["registry", "promote", name, "--version", "1"]) == 0
    capsys.readouterr()

    args = evaluate_args(f"models:/{name}/2", data_dir, "--register-metrics", "--per-class", "1")
    assert main(args) == 0
    assert f"on models:/{name}/2" in capsys.readouterr().out
    metrics = registry.show(f"{name}/2")["metrics"]
    assert float(metrics["eval_loss"]) > 1.0 and float(metrics["eval_fad"]) >= 0
    assert 0.0 <= float(metrics["eval_adherence_accuracy"]) <= 1.0
    # The gate reads what evaluate recorded: a random model's loss is worse than 0.5.
    assert main(["registry", "promote", name, "--version", "2", "--metric", "eval_loss"]) == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "0.5000" in line and f"{float(metrics['eval_loss']):.4f}" in line
    assert registry.show(f"{name}@production")["version"] == "1"


@pytest.mark.parametrize("model", ["plain-dir", "models:/eval-gated/99", "models:/nobody/1"])
def test_register_metrics_needs_a_registered_version(model, model_dir, data_dir, tracking, capsys):
    model = model_dir if model == "plain-dir" else model
    args = evaluate_args(model, data_dir, "--register-metrics", "--no-mlflow")
    assert main(args) != 0  # before any compute
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("music-gen: error: "), err
