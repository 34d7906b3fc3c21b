"""`music-gen export`: ONNX graphs that decode like PyTorch, safetensors bundles that load
and generate the same codes, and one-line errors with nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from music_gen import MusicGen
from music_gen.cli import main
from music_gen.models import formats
from music_gen.models.attributes import attribute_bucket
from music_gen.models.patterns import revert_delay
from music_gen.pipelines import checkpoints
from tests.helpers import tiny_musicgen, transformers_musicgen

pytestmark = pytest.mark.unit

PROMPTS = ["upbeat jazz with a walking bass", "calm piano"]
ATTRIBUTES = [{"genre": "jazz", "bpm": 120}, {"genre": None, "bpm": 70}]


def greedy(model, prompts=PROMPTS, **kwargs):
    return model.generate_codes(prompts, duration=0.3, top_k=1, guidance_scale=3.0, **kwargs)


def run_export(src, fmt, out) -> int:
    return main(["export", "--model", str(src), "--format", fmt, "--output", str(out)])


def leftovers(folder):
    """Temporary folders ``replace_dir`` would leave beside an output."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


# -- ONNX --------------------------------------------------------------------------------


@pytest.mark.slow
def test_onnx_graphs_decode_like_pytorch(tmp_path, capsys):
    ort = pytest.importorskip(
        "onnxruntime", reason="onnxruntime is not installed (pip install 'music-gen[onnx]')"
    )
    from transformers import AutoTokenizer

    model = tiny_musicgen(attributes=["genre", "bpm"])
    source = model.save_pretrained(tmp_path / "model")
    out = tmp_path / "onnx"
    assert run_export(source, "onnx", out) == 0
    assert "exported" in capsys.readouterr().out
    manifest = json.loads((out / "onnx_export.json").read_text())
    sessions = {
        name: ort.InferenceSession(str(out / graph["file"]), providers=["CPUExecutionProvider"])
        for name, graph in manifest["graphs"].items()
    }
    for name, session in sessions.items():  # the manifest describes the files
        declared = manifest["graphs"][name]
        assert [i.name for i in session.get_inputs()] == [i["name"] for i in declared["inputs"]]
        assert [o.name for o in session.get_outputs()] == [o["name"] for o in declared["outputs"]]
    info = manifest["model"]
    assert manifest["attributes"]["names"] == ["genre", "bpm"]

    # The conditioner from the exported tokenizer files, against PyTorch's conditioner.
    tokenizer = AutoTokenizer.from_pretrained(out / manifest["tokenizer"]["dir"])
    tokens = tokenizer(PROMPTS, padding=True, truncation=True, return_tensors="np",
                       max_length=manifest["tokenizer"]["max_length"])  # fmt: skip
    names = manifest["attributes"]["names"]
    attribute_ids = np.array(
        [[attribute_bucket(n, row.get(n)) for n in names] for row in ATTRIBUTES]
    )
    memory, memory_mask = sessions["conditioner"].run(
        None,
        {
            "input_ids": tokens["input_ids"].astype(np.int64),
            "attention_mask": tokens["attention_mask"].astype(np.int64),
            "attribute_ids": attribute_ids.astype(np.int64),
        },
    )
    with torch.no_grad():
        want_memory, want_mask = model.conditioner(PROMPTS, ATTRIBUTES)
    np.testing.assert_allclose(memory, want_memory.numpy(), rtol=1e-4, atol=1e-5)
    assert (memory_mask == want_mask.numpy()).all() and not memory_mask.all()

    # Decode with guidance: conditional rows, then null rows (zeros, masked out).
    memory = np.concatenate([memory, np.zeros_like(memory)])
    memory_mask = np.concatenate([memory_mask, np.zeros_like(memory_mask)])
    cross_k, cross_v = sessions["lm_start"].run(None, {"memory": memory})
    frames = round(0.3 * info["frame_rate"])
    delays = np.array(info["delays"])
    steps = frames + delays.max()
    rows, special = 2 * len(PROMPTS), info["special_token"]
    shape = (info["num_layers"], rows, info["num_heads"], 0, info["head_dim"])
    past_k = past_v = np.zeros(shape, dtype=np.float32)
    codes = np.full((len(PROMPTS), info["num_codebooks"]), special, dtype=np.int64)
    state = model.lm.start(torch.from_numpy(memory), torch.from_numpy(memory_mask), steps)
    chosen, worst = [], 0.0
    for step in range(steps):
        fed = np.concatenate([codes, codes])
        logits, past_k, past_v = sessions["lm_step"].run(
            None,
            {"codes": fed, "past_k": past_k, "past_v": past_v, "cross_k": cross_k,
             "cross_v": cross_v, "memory_mask": memory_mask},
        )  # fmt: skip
        assert past_k.shape[3] == step + 1  # the cache grows by the step fed
        with torch.no_grad():
            want = model.lm.step(torch.from_numpy(fed)[..., None], state)[:, :, -1]
        np.testing.assert_allclose(logits, want.numpy(), rtol=1e-3, atol=1e-4)
        worst = max(worst, float(np.abs(logits - want.numpy()).max()))
        cond, uncond = np.split(logits, 2)
        codes = (uncond + 3.0 * (cond - uncond)).argmax(axis=-1)
        frame = step - delays  # [K]: the frame each codebook predicts at this step
        codes = np.where((frame >= 0) & (frame < frames), codes, special)
        chosen.append(codes)
    delayed = torch.from_numpy(np.stack(chosen, axis=-1))  # [B, K, steps]
    onnx_codes = revert_delay(delayed, info["audio_channels"])
    assert torch.equal(onnx_codes, greedy(model, attributes=ATTRIBUTES))
    assert worst < 1e-4


# -- safetensors -------------------------------------------------------------------------


def training_checkpoint(root, model):
    """A complete training checkpoint as training writes it (model dir + train_state)."""
    directory = root / checkpoints.checkpoint_dir_name(20)
    checkpoints.save_checkpoint(directory, model, model.state_dict(), {"step": 20}, {"state": {}})
    path = checkpoints.marker_path(directory)
    with open(path, "wb") as handle:
        handle.write(checkpoints.marker_bytes(20))
    return directory


def test_safetensors_bundle_from_a_training_checkpoint(tmp_path):
    model = tiny_musicgen(seed=3)
    run = tmp_path / "run"
    checkpoint = training_checkpoint(run, model)
    for src, out in ((checkpoint, tmp_path / "bundle"), (run, tmp_path / "from_run")):
        assert run_export(src, "safetensors", out) == 0
        assert sorted(p.name for p in out.iterdir()) == sorted(formats.MODEL_ENTRIES)
        assert torch.equal(greedy(MusicGen.from_pretrained(out)), greedy(model))
    assert leftovers(tmp_path) == []


def test_safetensors_bundle_from_a_transformers_checkpoint(tmp_path):
    transformers_musicgen(tmp_path / "hf")
    out = tmp_path / "bundle"
    assert run_export(tmp_path / "hf", "safetensors", out) == 0
    assert formats.source_kind(out) == "ours"
    assert (out / formats.TEXT_ENCODER_DIR / "tokenizer_config.json").is_file()
    source = MusicGen.from_pretrained(tmp_path / "hf")
    assert torch.equal(greedy(MusicGen.from_pretrained(out)), greedy(source))


# -- bad input ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return tiny_musicgen().save_pretrained(tmp_path_factory.mktemp("ckpt") / "model")


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("music-gen: error: "), err
    return err[0]


def test_unknown_format_is_one_line_and_writes_nothing(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    assert run_export(checkpoint, "tflite", out) == 2
    assert "unknown export format 'tflite' (onnx, safetensors)" in one_error_line(capsys)
    assert not out.exists()


def test_output_that_is_not_empty_is_refused_and_kept(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert run_export(checkpoint, "safetensors", out) == 2
    assert "exists and is not empty" in one_error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    (out / "keep.txt").unlink()  # an empty folder is fine
    assert run_export(checkpoint, "safetensors", out) == 0
    assert formats.source_kind(out) == "ours"


def test_a_model_that_cannot_load_leaves_nothing(tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / formats.FORMAT_FILE).write_text("{not json")
    for src, reason in ((broken, "not valid JSON"), (tmp_path / "nowhere", "checkpoint not found")):
        out = tmp_path / "out"
        assert run_export(src, "safetensors", out) == 1
        assert reason in one_error_line(capsys)
        assert not out.exists() and leftovers(tmp_path) == []


def test_an_incomplete_training_checkpoint_is_refused(tmp_path, capsys):
    checkpoint = training_checkpoint(tmp_path / "run", tiny_musicgen())
    (checkpoint / checkpoints.TRAIN_STATE / checkpoints.COMPLETE_FILE).unlink()
    out = tmp_path / "out"
    assert run_export(checkpoint, "safetensors", out) == 1
    assert "is incomplete" in one_error_line(capsys)
    assert not out.exists()


def test_a_failure_while_writing_leaves_nothing(checkpoint, tmp_path, monkeypatch, capsys):
    from music_gen.errors import MusicGenError
    from music_gen.pipelines import export

    def half_then_fail(model, directory, out):
        (out / formats.WEIGHTS_FILE).write_bytes(b"half")
        raise MusicGenError("disk full")

    monkeypatch.setattr(export, "write_safetensors", half_then_fail)
    out = tmp_path / "out"
    assert run_export(checkpoint, "safetensors", out) == 1
    assert "disk full" in one_error_line(capsys)
    assert not out.exists() and leftovers(tmp_path) == []


def test_onnx_without_its_packages_says_how_to_get_them(checkpoint, tmp_path, monkeypatch, capsys):
    from music_gen.pipelines import export

    monkeypatch.setattr(export, "_importable", lambda name: name != "onnxruntime")
    out = tmp_path / "out"
    assert run_export(checkpoint, "onnx", out) == 2
    assert "pip install 'music-gen[onnx]'" in one_error_line(capsys)
    assert not out.exists()


def test_onnx_refuses_a_prefix_conditioned_model_before_writing(tmp_path):
    import dataclasses

    from music_gen.errors import UsageError
    from music_gen.models.lm import LM
    from music_gen.pipelines.export import write_onnx

    model = tiny_musicgen()
    model.lm = LM(dataclasses.replace(model.lm.cfg, cross_attention=False))  # as MusicGen-Melody
    with pytest.raises(UsageError, match="prefix-conditioned"):
        write_onnx(model, tmp_path)
    assert list(tmp_path.iterdir()) == []
