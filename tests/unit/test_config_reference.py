"""docs/configuration.md is the schema's own rendering: it cannot drift from
music_gen/config.py, and every key there has a description."""

from __future__ import annotations

from pathlib import Path

import pytest

from music_gen.cli import main
from music_gen.config import Config, load_config
from music_gen.config_reference import (
    COMMAND,
    missing_descriptions,
    render_reference,
    sections,
)

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "docs" / "configuration.md"


def test_every_config_key_has_a_description():
    missing = missing_descriptions()
    assert not missing, (
        f"config keys without a description: {missing}; write a docstring under each field "
        f"in music_gen/config.py, then run `{COMMAND}`"
    )


def test_the_committed_reference_is_the_schema_rendered():
    assert COMMITTED.is_file(), f"docs/configuration.md is missing: run `{COMMAND}`"
    assert COMMITTED.read_text() == render_reference(), (
        f"docs/configuration.md differs from music_gen/config.py: run `{COMMAND}` and commit it"
    )


def test_every_key_of_every_section_is_a_row():
    text = render_reference()
    assert [key for key, _, _ in sections()] == [
        "model", "model.text", "codec", "codec.train", "data", "train", "train.lora", "tune", "serve",
        "serve.autoscaling_config",
    ]  # fmt: skip
    for key, section, _ in sections():
        assert f"\n{'#' * (2 + key.count('.'))} {key}\n" in text
        for name in section.model_fields:
            assert f"| `{key}.{name}` |" in text or f"### {key}.{name}\n" in text
    assert '| `train.precision` | "fp32" \\| "bf16" \\| "fp16" | `bf16` |' in text
    assert "| `model.cond_dropout` | float (>= 0.0, <= 1.0) | `0.3` |" in text
    assert "| `train.betas` | tuple[float, float] | `[0.9, 0.95]` |" in text


def test_the_intro_examples_are_valid_overrides():
    cfg = load_config(
        overrides=[
            "train.lr=3e-4", "model.dim=512", "model.attributes=[genre,mood]",
            "train.segment_curriculum={0: 10, 2000: 30}", "serve.autoscaling_config.max_replicas=4",
        ]
    )  # fmt: skip
    assert isinstance(cfg, Config) and cfg.serve.autoscaling_config.max_replicas == 4


def test_the_command_prints_or_writes_it(tmp_path, capsys):
    assert main(["config", "reference"]) == 0
    assert capsys.readouterr().out == render_reference()
    out = tmp_path / "sub" / "configuration.md"
    assert main(["config", "reference", "--output", str(out)]) == 0
    assert out.read_text() == render_reference()
    assert main(["config", "reference", "-o", str(tmp_path)]) == 2  # a folder: one line
    assert capsys.readouterr().err.startswith("music-gen: error: --output")
