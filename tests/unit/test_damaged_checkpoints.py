"""Damaged model directories: one clear error naming the file and the problem, never a
traceback or a silently partial model."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from music_gen import MusicGen
from music_gen.cli import main
from music_gen.errors import CheckpointError
from music_gen.models import formats
from tests.helpers import tiny_musicgen

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_musicgen().save_pretrained(tmp_path_factory.mktemp("ckpt") / "model")


def _copy(checkpoint, tmp_path):
    return shutil.copytree(checkpoint, tmp_path / "copy")


def _edit_weights(directory, edit):
    path = directory / formats.WEIGHTS_FILE
    weights = load_file(str(path))
    edit(weights)
    save_file(weights, str(path))


def _truncate(directory):
    path = directory / formats.WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:100])


def _empty(directory):
    (directory / formats.WEIGHTS_FILE).write_bytes(b"")


def _extra_tensor(directory):
    _edit_weights(directory, lambda w: w.update({"lm.blocks.9.fc1.weight": torch.zeros(2, 2)}))


def _missing_tensor(directory):
    _edit_weights(directory, lambda w: w.pop("lm.head.weight"))


def _wrong_shape(directory):
    _edit_weights(directory, lambda w: w.update({"lm.norm.weight": torch.zeros(3)}))


def _wrong_dtype(directory):
    _edit_weights(
        directory, lambda w: w.update({"lm.norm.weight": torch.zeros(32, dtype=torch.long)})
    )


def _config_of_another_size(directory):
    meta = json.loads((directory / formats.FORMAT_FILE).read_text())
    meta["lm"]["num_layers"] = 1
    (directory / formats.FORMAT_FILE).write_text(json.dumps(meta))


def _junk_config(directory):
    (directory / formats.FORMAT_FILE).write_text("{junk")


def _config_missing_a_section(directory):
    (directory / formats.FORMAT_FILE).write_text("{}")


def _no_codec(directory):
    shutil.rmtree(directory / formats.CODEC_DIR)


DAMAGE = {
    "truncated weights": (_truncate, "corrupt or truncated"),
    "empty weights": (_empty, "corrupt or truncated"),
    "an extra tensor": (_extra_tensor, "unexpected lm.blocks.9.fc1.weight"),
    "a missing tensor": (_missing_tensor, "missing lm.head.weight"),
    "a wrong shape": (_wrong_shape, r"lm.norm.weight has shape \[3\]"),
    "a wrong dtype": (_wrong_dtype, "lm.norm.weight has dtype"),
    "a config of another size": (_config_of_another_size, "unexpected lm.blocks.1"),
    "junk config": (_junk_config, "not valid JSON"),
    "a config missing a section": (_config_missing_a_section, "malformed"),
    "no codec": (_no_codec, "codec"),
}


@pytest.mark.parametrize("damage", DAMAGE, ids=list(DAMAGE))
def test_damaged_checkpoint_is_one_clear_error(damage, checkpoint, tmp_path):
    damage_fn, message = DAMAGE[damage]
    broken = _copy(checkpoint, tmp_path)
    damage_fn(broken)
    with pytest.raises(CheckpointError, match=message):
        MusicGen.from_pretrained(broken)


def _transformers_dir(tmp_path, config_text: str, weights: bytes):
    directory = tmp_path / "hf"
    directory.mkdir()
    (directory / "config.json").write_text(config_text)
    (directory / "model.safetensors").write_bytes(weights)
    return directory


@pytest.mark.parametrize(
    "config_text, weights",
    [
        ('{"junk": 1', b"\x00" * 100),  # junk JSON
        ('{"model_type": "musicgen"}', b"\xff" * 1000),  # a random safetensors header
    ],
    ids=["junk-config", "random-weights"],
)
def test_damaged_transformers_dir_through_the_cli(config_text, weights, tmp_path, capsys):
    directory = _transformers_dir(tmp_path, config_text, weights)
    out = tmp_path / "out.wav"
    assert main(["generate", "jazz", "--model", str(directory), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("music-gen: error: cannot load MusicGen checkpoint")
    assert "Traceback" not in "\n".join(err) and not out.exists()


def test_truncated_weights_through_the_cli(checkpoint, tmp_path, capsys):
    broken = _copy(checkpoint, tmp_path)
    _truncate(broken)
    out = tmp_path / "out.wav"
    assert main(["generate", "jazz", "--model", str(broken), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.safetensors" in err and not out.exists()


def test_source_kinds(checkpoint, tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text("{}")
    assert formats.source_kind(checkpoint) == "ours"
    assert formats.source_kind(tmp_path / "hf") == "transformers"
    assert formats.source_kind("models:/m@production") == "mlflow"
    assert formats.source_kind("runs:/abc/model") == "mlflow"
    assert formats.source_kind("facebook/musicgen-small") == "hub"
    assert formats.source_kind(tmp_path) == "unknown"
    for missing in ("./nope/x", str(tmp_path / "nope"), "a/b/c", "~/x"):
        assert formats.source_kind(missing) == "missing", missing
