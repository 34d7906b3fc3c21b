"""Serve configs, the app's deployment options and the CLI's serve section (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest

from music_gen.cli import build_parser, main
from music_gen.config import ServeConfig
from music_gen.errors import ConfigError
from music_gen.serve.app import AppArgs, generator_options, load_serve_config, serve_tree

pytestmark = pytest.mark.unit
CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "serve"


def test_local_and_gpu_configs_load():
    local = load_serve_config([str(CONFIGS / "local.yaml")], [], {"model": "work/ckpt"})
    assert local.model == "work/ckpt" and local.num_gpus == 0 and local.port == 8000
    gpu = load_serve_config([str(CONFIGS / "gpu.yaml")], ["serve.max_batch_size=4"], {})
    assert gpu.num_gpus == 1 and gpu.host == "0.0.0.0" and gpu.max_batch_size == 4
    options = generator_options(gpu)
    assert options["ray_actor_options"]["num_gpus"] == 1
    scaling = options["autoscaling_config"]
    assert scaling["min_replicas"] == 1 and scaling["max_replicas"] == 8
    assert "num_replicas" not in options
    assert options["max_ongoing_requests"] >= gpu.max_batch_size
    assert options["max_queued_requests"] == 256


def test_fixed_replicas_and_defaults():
    options = generator_options(ServeConfig(model="m", num_replicas=2, max_batch_size=6))
    assert options["num_replicas"] == 2 and options["max_ongoing_requests"] == 12
    assert options["user_config"] == {"model": "m"}
    assert "runtime_env" not in options["ray_actor_options"]
    env = generator_options(ServeConfig(model="m", env_vars={"A": "1"}))
    assert env["ray_actor_options"]["runtime_env"] == {"env_vars": {"A": "1"}}


def test_bad_serve_settings_name_the_key(tmp_path):
    with pytest.raises(ConfigError, match="serve.max_batch_size"):
        load_serve_config([], ["serve.max_batch_size=0"], {})
    bad = tmp_path / "bad.yaml"
    bad.write_text("applications:\n  - args: {model: m, colour: red}\n")
    with pytest.raises(ConfigError, match="colour"):
        load_serve_config([str(bad)], [], {})
    assert serve_tree(bad) == {"model": "m", "colour": "red"}


def test_build_app_takes_a_config_file_and_fields():
    from music_gen.serve.app import build_app

    app = build_app(AppArgs(config=str(CONFIGS / "local.yaml"), model="x", max_batch_size=2))
    assert app is not None
    with pytest.raises(ConfigError, match="serve.model is not set"):
        build_app(AppArgs())


def test_cli_serve_parses(capsys):
    args = build_parser().parse_args(["serve", "--model", "m", "--port", "9000"])
    assert args.model == "m" and args.port == 9000 and args.serve_command is None
    reload = build_parser().parse_args(["serve", "reload", "--url", "http://h:1"])
    assert reload.url == "http://h:1"


def test_cli_reload_unreachable_is_one_line(capsys):
    assert main(["serve", "reload", "--url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("music-gen: error: cannot reach http://127.0.0.1:9")
    assert "Traceback" not in err


def test_serve_with_a_missing_checkpoint_is_one_line_before_ray(tmp_path, capsys):
    missing = tmp_path / "nothing"
    assert main(["serve", "--model", str(missing)]) == 1
    err = capsys.readouterr().err
    assert err.strip() == f"music-gen: error: checkpoint not found: '{missing}'"
    (tmp_path / "empty").mkdir()
    assert main(["serve", "--model", str(tmp_path / "empty")]) == 1
    assert "not a music-gen" in capsys.readouterr().err
