"""The sweep's search space and sizing, checked before Ray starts."""

import pytest

from music_gen.cli import main
from music_gen.config import load_config
from music_gen.errors import ConfigError
from music_gen.tune import space
from music_gen.tune.sweep import check, concurrency, trial_resources

pytestmark = pytest.mark.unit


def cfg_with(search_space, *overrides):
    cfg = load_config(overrides=["data.output=/data", *overrides])
    cfg.tune.search_space = search_space
    return cfg


def test_space_in_dotted_config_keys():
    cfg = cfg_with({
        "train.lr": {"loguniform": [1e-4, 3e-3]},
        "model.num_layers": {"choice": [2, 4]},
        "model.dim": {"grid": [32, 64]},
        "model.cond_dropout": {"uniform": [0.0, 0.5]},
        "train.batch_size": {"randint": [2, 9]},
    })  # fmt: skip
    parsed = check(cfg)
    assert parsed["train.lr"] == ("loguniform", [1e-4, 3e-3])
    tune_space = space.to_tune(parsed)
    assert set(tune_space) == set(cfg.tune.search_space)
    trial = space.apply_params(cfg, {"train.lr": 1e-3, "model.num_layers": 4, "model.dim": 64})
    assert trial.train.lr == 1e-3 and trial.model.num_layers == 4 and trial.model.dim == 64
    assert cfg.model.num_layers is None  # the base config is untouched


@pytest.mark.parametrize(
    ("search_space", "needle"),
    [
        ({}, "empty"),
        ({"train.lrr": {"choice": [1e-3]}}, "unknown config key 'train.lrr'"),
        ({"trainer.lr": {"choice": [1e-3]}}, "unknown config key 'trainer'"),
        ({"train.lr": [1e-4, 1e-3]}, "must be one of"),
        ({"train.lr": {"loguniform": [1e-3, 1e-4]}}, "lo < hi"),
        ({"train.lr": {"loguniform": [0, 1e-3]}}, "lo > 0"),
        ({"train.lr": {"normal": [0, 1]}}, "unknown distribution 'normal'"),
        ({"train.lr": {"choice": []}}, "non-empty list"),
        ({"model.num_layers": {"uniform": [1, 4]}}, "model.num_layers"),
        ({"model.num_layers": {"choice": [2, -1]}}, "model.num_layers"),
        ({"model.cond_dropout": {"choice": [0.1, 1.5]}}, "model.cond_dropout"),
        ({"train.name": {"choice": ["a", "b"]}}, "set by the sweep"),
        ({"tune.num_samples": {"choice": [1, 2]}}, "set by the sweep"),
        ({"train.num_workers": {"choice": [1, 2]}}, "sizes every trial"),
    ],
)
def test_bad_space_is_one_clear_error(search_space, needle):
    with pytest.raises(ConfigError, match=None) as info:
        check(cfg_with(search_space))
    assert needle in str(info.value)


def test_grid_search_takes_lists_only():
    cfg = cfg_with({"train.lr": {"uniform": [1e-4, 1e-3]}}, "tune.search=grid")
    with pytest.raises(ConfigError, match="grid search takes choice/grid"):
        check(cfg)
    grid = space.to_grid(check(cfg_with({"train.lr": {"choice": [1e-4, 1e-3]}})))
    assert grid["train.lr"] == {"grid_search": [1e-4, 1e-3]}


def test_metric_must_be_one_training_reports():
    good = {"train.lr": {"choice": [1e-3]}}
    check(cfg_with(good, "tune.metric=val_loss_cb2"))
    with pytest.raises(ConfigError, match="not reported by training"):
        check(cfg_with(good, "tune.metric=accuracy"))


def test_concurrency_from_cluster_and_trial_size():
    cfg = load_config(overrides=["train.num_workers=1", "train.cpus_per_worker=0.5"])
    assert trial_resources(cfg) == {"CPU": pytest.approx(0.55)}
    assert concurrency(cfg, {"CPU": 2.0}) == 2  # 0.5 CPU stays free for Ray Data
    assert concurrency(cfg, {"CPU": 8.0}) == 13
    cfg.tune.max_concurrent_trials = 1
    assert concurrency(cfg, {"CPU": 8.0}) == 1
    big = load_config(overrides=["train.num_workers=4", "train.cpus_per_worker=1"])
    with pytest.raises(ConfigError, match=r"a trial needs 4.05 CPU .* the cluster has 2"):
        concurrency(big, {"CPU": 2.0})
    gpu = load_config(overrides=["train.use_gpu=true"])
    with pytest.raises(ConfigError, match="GPU"):
        concurrency(gpu, {"CPU": 8.0})


def test_cli_rejects_a_bad_space_before_ray(capsys, tmp_path):
    code = main(["tune", "--data", str(tmp_path), "tune.search_space={train.lrr: {choice: [1]}}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "unknown config key 'train.lrr'" in err[0]


def test_trial_metrics_fall_back_to_its_mlflow_run(tmp_path):
    """Tune's record of a trial can come back empty: the values its training logged to
    MLflow (at the steps it reported) answer instead; Tune's record wins when it has them."""
    from types import SimpleNamespace

    import mlflow
    import pandas as pd

    from music_gen.tune.sweep import _reported

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = client.create_run(client.create_experiment("trials"))
    for step, value in [(2, 3.0), (4, 2.5), (6, float("nan"))]:
        client.log_metric(run.info.run_id, "val_loss", value, step=step)
    empty = SimpleNamespace(metrics_dataframe=pd.DataFrame(), metrics={"trial_id": "a_00000"})
    assert _reported(empty, "val_loss", client, run) == ([3.0, 2.5], 6)
    assert _reported(empty, "val_loss", client, None) == ([], 0)
    tune_record = pd.DataFrame({"val_loss": [4.0, None], "step": [2, 4]})
    reported = SimpleNamespace(metrics_dataframe=tune_record, metrics={"step": 4})
    assert _reported(reported, "val_loss", client, run) == ([4.0], 4)
