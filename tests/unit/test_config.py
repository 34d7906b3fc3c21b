from pathlib import Path

import pytest

from music_gen.config import Config, load_config, parse_override
from music_gen.errors import ConfigError

pytestmark = pytest.mark.unit


def test_defaults_validate():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.model.preset == "debug"


def test_files_then_overrides(tmp_path):
    first = tmp_path / "a.yaml"
    first.write_text("model:\n  preset: small\n  num_codebooks: 8\ntrain:\n  lr: 0.001\n")
    second = tmp_path / "b.yaml"
    second.write_text("train:\n  steps: 5\n")
    cfg = load_config([first, second], ["train.lr=3e-4", "model.text.dim=32"])
    assert cfg.model.preset == "small" and cfg.model.num_codebooks == 8
    assert cfg.train.lr == pytest.approx(3e-4) and cfg.train.steps == 5
    assert cfg.model.text.dim == 32


def test_override_parses_yaml_values():
    assert parse_override("model.attributes=[genre, bpm]") == {
        "model": {"attributes": ["genre", "bpm"]}
    }


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.dimm=3", "unknown config key 'model.dimm'"),
        ("nosection.x=1", "unknown config key 'nosection'"),
        ("train.lr=fast", "bad value for 'train.lr'"),
        ("model.dim=-4", "bad value for 'model.dim'"),
        ("train.lr", "not of the form"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "missing.yaml"])
    broken = tmp_path / "broken.yaml"
    broken.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([broken])
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("model:\n  layers: 3\n")
    with pytest.raises(ConfigError, match="model.layers"):
        load_config([unknown])


@pytest.mark.parametrize(
    "path",
    sorted(
        str(path)
        for kind in ("codec", "data", "model", "train")
        for path in (Path(__file__).parents[2] / "configs" / kind).glob("*.yaml")
    ),
)
def test_every_shipped_config_loads(path):
    """configs/{codec,data,model,train}/*.yaml are music-gen configs: each passes the schema
    (serve/ holds Ray Serve files, tune/ sweep files, checked by their own tests)."""
    load_config([path])
