"""The tokenize pipeline on a local Ray cluster, with files the tests write.

One corpus (every format, odd rates and channel counts, deliberately broken files)
is tokenized once with a codec calibrated on it; the other tests compare against
that run: resume, manifest input, validation of corrupted shards.
"""

import csv
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from music_gen.audio import encode_audio, write_audio
from music_gen.cli import main
from music_gen.config import CodecConfig, Config, DataConfig
from music_gen.errors import UsageError
from music_gen.pipelines import shards, sources, synth
from music_gen.pipelines.tokenize import (
    TooManyErrors,
    decode_segments,
    segment_bounds,
    tokenize,
)

pytestmark = pytest.mark.integration

SECONDS = 2.0
# name -> (sample rate, channels, WAV/FLAC subtype or None, with a sidecar)
FORMATS = {
    "formats/stereo_44k.flac": (44100, 2, "PCM_24", True),
    "formats/stereo_32k.mp3": (32000, 2, None, True),
    "formats/mono_48k.ogg": (48000, 1, None, True),
    "formats/three_channels_22k.wav": (22050, 3, "FLOAT", True),
    "formats/mono_8k_pcm24.wav": (8000, 1, "PCM_24", False),
}
# name -> (stage, reason) expected in the errors table
BROKEN = {
    "broken/empty.wav": ("read", "empty file"),
    "broken/text.mp3": ("read", "corrupt"),
    "broken/random_bytes.flac": ("read", "not audio"),
    "broken/truncated.wav": ("read", "truncated"),
    "broken/truncated.flac": ("read", "corrupt"),
    "broken/header_only.wav": ("read", "truncated"),
    "broken/short.wav": ("check", "too short"),
    "broken/silent.flac": ("check", "silent"),
    "broken/bad_sidecar.wav": ("sidecar", "bad sidecar"),
}
NUM_SYNTH = len(synth.SYNTH_CLASSES)


def make_corpus(root):
    """Synth clips (one per class), format variants, broken files; returns good paths."""
    good = [str(p) for p in synth.write_synth_dataset(root, NUM_SYNTH, SECONDS, seed=0)]
    for index, (name, (rate, channels, subtype, sidecar)) in enumerate(FORMATS.items()):
        audio, meta = synth.make_clip(NUM_SYNTH + index, SECONDS, seed=0, sample_rate=rate)
        audio = (
            torch.from_numpy(audio).repeat(channels, 1) * torch.linspace(1, 0.5, channels)[:, None]
        )
        path = root / name
        write_audio(path, audio, rate, subtype=subtype)
        if sidecar:
            path.with_suffix(".json").write_text(json.dumps(meta))
        good.append(str(path))
    tone = 0.5 * torch.sin(torch.arange(32000) / 16000 * 2 * math.pi * 440)[None]  # [1, S]
    broken = root / "broken"
    broken.mkdir()
    (broken / "empty.wav").write_bytes(b"")
    (broken / "text.mp3").write_bytes(b"this is not audio\n" * 200)
    (broken / "random_bytes.flac").write_bytes(np.random.default_rng(0).bytes(5000))
    wav, flac = encode_audio(tone, 16000, "wav"), encode_audio(tone, 16000, "flac")
    (broken / "truncated.wav").write_bytes(wav[: len(wav) // 2])
    (broken / "truncated.flac").write_bytes(flac[: len(flac) // 2])
    (broken / "header_only.wav").write_bytes(wav[:44])
    write_audio(broken / "short.wav", tone[:, :3200], 16000)
    write_audio(broken / "silent.flac", torch.zeros(1, 32000), 16000)
    write_audio(broken / "bad_sidecar.wav", tone, 16000)
    (broken / "bad_sidecar.json").write_text("{not json")
    return good


def data_config(input, output, **overrides) -> DataConfig:
    fields = {
        "input": str(input),
        "output": str(output),
        "segment_seconds": 1.5,
        "min_seconds": 0.5,
        "files_per_shard": 4,
        "batch_size": 4,
        "encode_num_cpus": 0.5,
        "decode_num_cpus": 0.5,
        "max_error_fraction": 0.5,
        **overrides,
    }
    return DataConfig(**fields)


def run_args(codec_dir) -> list[str]:
    """The same settings as ``data_config``, as CLI overrides."""
    return [
        "--codec", str(codec_dir), "--no-progress", "data.segment_seconds=1.5",
        "data.min_seconds=0.5", "data.files_per_shard=4", "data.batch_size=4",
        "data.encode_num_cpus=0.5", "data.decode_num_cpus=0.5", "data.max_error_fraction=0.5",
    ]  # fmt: skip


def shard_rows(root) -> dict[str, list[dict]]:
    return {
        p.rsplit("/", 1)[1]: pq.read_table(p).to_pylist() for p in shards.shard_paths(str(root))
    }


def all_rows(root) -> list[dict]:
    return sorted((r for rows in shard_rows(root).values() for r in rows), key=lambda r: r["id"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, make_corpus(root)


@pytest.fixture(scope="module")
def codec_dir(corpus, tmp_path_factory):
    """A tiny codec calibrated on the corpus by the CLI (broken files are skipped)."""
    out = tmp_path_factory.mktemp("codec")
    args = ["codec", "calibrate", "--input", str(corpus[0]), "--output", str(out)]
    assert main([*args, "--max-seconds", "30", "codec.cardinality=64"]) == 0
    return out


@pytest.fixture(scope="module")
def full_run(ray_cluster, corpus, codec_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    cfg = Config(codec=CodecConfig(source=str(codec_dir)), data=data_config(corpus[0], out))
    summary = tokenize(cfg, progress=False)
    return out, summary, cfg


# --- the pipeline ------------------------------------------------------------------------


def test_every_good_file_encoded_and_every_bad_file_listed(full_run, corpus):
    out, summary, _ = full_run
    root, good = corpus
    rows = all_rows(out)
    assert {r["source"] for r in rows} == set(good)
    errors = {
        e["path"]: (e["stage"], e["reason"]) for e in shards.read_errors(str(out)).to_pylist()
    }
    assert errors == {str(root / name): why for name, why in BROKEN.items()}
    assert summary["files"] == len(good) + len(BROKEN)
    assert summary["files_failed"] == len(BROKEN) and summary["segments"] == len(rows)
    assert sum(summary["failed_by_reason"].values()) == len(BROKEN)
    assert summary["hours"] == pytest.approx(len(good) * SECONDS / 3600, rel=0.02)
    with open(out / "errors.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert {r["path"] for r in table} == set(errors) and all(r["detail"] for r in table)


def test_segments_codes_captions_and_metadata(full_run, corpus):
    out, _, _ = full_run
    root, good = corpus
    meta = shards.codec_info(str(out))
    assert (meta["sample_rate"], meta["frame_rate"], meta["num_codebooks"], meta["cardinality"]) == (
        16000, 50.0, 4, 64,
    )  # fmt: skip
    for path in shards.shard_paths(str(out)):
        assert {k: v for k, v in shards.shard_meta(*sources.resolve(path)).items()} == meta
    rows = all_rows(out)
    by_source = {}
    for row in rows:
        by_source.setdefault(row["source"], []).append(row)
        codes = shards.read_codes(row)
        assert codes.shape == (4, row["frames"]) and codes.max() < 64
        assert row["frames"] == math.ceil(row["duration"] * 50 - 1e-9)
        assert row["id"] == f"{sources.source_id(row['source'])}-{row['segment']:05d}"
    for segs in by_source.values():
        # 2 s files, 1.5 s segments, tails of at least 0.5 s kept unpadded
        assert [s["segment"] for s in segs] == [0, 1]
        assert segs[0]["duration"] == 1.5 and segs[1]["start"] == 1.5
        assert segs[1]["duration"] == pytest.approx(0.5, abs=0.05)
    for path in good[:NUM_SYNTH]:
        sidecar = json.loads(Path(path).with_suffix(".json").read_text())
        row = by_source[path][0]
        assert row["caption"] == sidecar["description"] and row["genre"] == sidecar["genre"]
        assert row["moods"] == sidecar["moods"] and row["bpm"] == sidecar["bpm"]
        assert json.loads(row["attributes"])["synth_class"] == sidecar["synth_class"]
    assert by_source[str(root / "formats/mono_8k_pcm24.wav")][0]["caption"] == "mono 8k pcm24"
    # A calibrated codec tells the classes apart: their code histograms differ.
    hist = [
        np.bincount(shards.read_codes(by_source[p][0])[0], minlength=64) for p in good[:NUM_SYNTH]
    ]
    assert len({h.argmax() for h in hist}) >= 4
    report = shards.validate(str(out))
    assert report["total_violations"] == 0, report["violations"]
    assert report["clips"] == len(rows) and sum(report["genres"].values()) == len(rows)


def test_too_many_errors_fails_and_changed_settings_need_overwrite(full_run):
    out, _, cfg = full_run
    strict = cfg.model_copy(deep=True)
    strict.data.max_error_fraction = 0.1
    with pytest.raises(TooManyErrors, match="9 of 20 files failed") as caught:
        tokenize(strict, progress=False)  # every shard is done: only the summary is re-made
    assert caught.value.summary["shards_this_run"] == 0
    changed = cfg.model_copy(deep=True)
    changed.data.segment_seconds = 1.0
    with pytest.raises(UsageError, match="--overwrite"):
        tokenize(changed, progress=False)


def test_resume_after_interruption_gives_identical_output(
    full_run, corpus, codec_dir, tmp_path, capsys
):
    out, summary, _ = full_run
    # Stale shards from an older dataset: --overwrite must clear them.
    resumed = tmp_path / "resumed"
    shutil.copytree(out, resumed)
    args = ["data", "tokenize", "--input", str(corpus[0]), "--output", str(resumed)]
    assert main([*args, *run_args(codec_dir), "--overwrite", "--max-shards", "2"]) == 0
    assert "files read" in capsys.readouterr().out
    markers = sorted(p.name for p in (resumed / shards.PROGRESS).iterdir())
    assert markers == ["part-00000.json", "part-00001.json"]
    # A crash while writing shard 2, and one between shard 1 and its marker.
    (resumed / shards.SHARDS / "part-00002.parquet.tmp").write_bytes(b"partial")
    (resumed / shards.PROGRESS / "part-00001.json").unlink()
    assert main([*args, *run_args(codec_dir)]) == 0
    assert "4 this run" in capsys.readouterr().out
    assert shard_rows(resumed) == shard_rows(out)
    assert shards.read_errors(str(resumed)).equals(shards.read_errors(str(out)))
    assert not list(resumed.rglob("*.tmp"))
    assert json.loads((resumed / "summary.json").read_text())["segments"] == summary["segments"]


def test_manifest_input_gives_the_same_rows(full_run, corpus, codec_dir, tmp_path, capsys):
    out, _, _ = full_run
    root, good = corpus
    manifest_dir = tmp_path / "manifests"
    manifest_dir.mkdir()
    lines = []
    for index, path in enumerate(good):
        sidecar = path.rsplit(".", 1)[0] + ".json"
        fields = json.loads(Path(sidecar).read_text()) if os.path.exists(sidecar) else {}
        # Relative paths resolve against the manifest's directory; file:// URIs work too.
        shown = os.path.relpath(path, manifest_dir) if index % 2 else path
        shown = f"file://{path}" if index == 0 else shown
        lines.append(json.dumps({"path": shown, **fields}))
    lines += [
        "{not json",
        json.dumps({"caption": "a row without a path"}),
        json.dumps({"path": good[1], "caption": "the same file again"}),
        json.dumps({"path": "gone.wav", "caption": "a file that does not exist"}),
    ]
    manifest = manifest_dir / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    result = tmp_path / "from_manifest"
    args = ["data", "tokenize", "--input", f"file://{manifest}", "--output", str(result)]
    assert main([*args, *run_args(codec_dir)]) == 0
    assert "files failed      4" in capsys.readouterr().out
    assert all_rows(result) == all_rows(out)
    reasons = sorted((e["stage"], e["reason"]) for e in shards.read_errors(str(result)).to_pylist())
    assert reasons == [("manifest", "bad row"), ("manifest", "duplicate"), ("manifest", "no path"),
                       ("read", "missing")]  # fmt: skip


def test_validate_catches_corrupted_shards(full_run, tmp_path, capsys):
    out, _, _ = full_run
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    assert main(["data", "validate", str(broken)]) == 0
    assert "violations  0" in capsys.readouterr().out
    # Shard 4: a code past the cardinality, a wrong frame count, an empty caption.
    path = broken / shards.SHARDS / "part-00004.parquet"
    meta = shards.shard_meta(*sources.resolve(str(path)))
    rows = pq.read_table(path).to_pylist()
    codes = shards.read_codes(rows[0])
    codes[0, 0] = 200
    rows[0]["codes"] = shards.codes_to_bytes(codes)
    rows[1]["frames"] -= 5
    rows[1]["codes"] = rows[1]["codes"][: 4 * rows[1]["frames"] * 2]
    rows[1]["chroma"] = rows[1]["chroma"][: rows[1]["frames"]]  # consistent with the codes
    rows[2]["caption"] = " "
    shards.write_table(*sources.resolve(str(path)), shards.shard_table(rows, meta))
    # Shard 3: garbage bytes.
    (broken / shards.SHARDS / "part-00003.parquet").write_bytes(b"PAR1 this is no parquet")
    report = shards.validate(str(broken))
    text = "\n".join(report["violations"])
    for needle in ("cardinality", "frames but", "empty caption", "unreadable shard"):
        assert needle in text, text
    # Both rewritten shards also differ from what their completion markers recorded.
    assert sum("damaged after writing" in line for line in report["violations"]) == 2, text
    assert main(["data", "validate", str(broken)]) == 1
    assert "violations  6" in capsys.readouterr().out


# --- pieces that need no cluster -------------------------------------------------------------


def test_segment_bounds():
    assert segment_bounds(100, 30, 30, 10) == [(0, 30), (30, 60), (60, 90), (90, 100)]
    assert segment_bounds(95, 30, 30, 10) == [(0, 30), (30, 60), (60, 90)]  # 5-sample tail dropped
    assert segment_bounds(20, 30, 30, 10) == [(0, 20)]  # a file shorter than a segment
    assert segment_bounds(70, 30, 20, 10) == [(0, 30), (20, 50), (40, 70)]  # overlapping
    assert segment_bounds(75, 30, 20, 10) == [(0, 30), (20, 50), (40, 70), (60, 75)]


def test_decode_pads_the_tail_when_asked(tmp_path):
    write_audio(tmp_path / "a.wav", 0.5 * torch.ones(2, 44100 * 2 + 441 * 60), 44100)
    record = {**sources.make_record(str(tmp_path / "a.wav"), "x"), "group": 0, "order": 0}
    settings = {
        "sample_rate": 16000, "channels": 1, "segment_seconds": 1.0, "stride_seconds": None,
        "min_seconds": 0.5, "pad_tail": True, "normalize": "peak", "silence_db": -60.0,
    }  # fmt: skip
    rows = decode_segments(record, settings)
    assert [(r["segment"], r["num_segments"], r["samples"]) for r in rows] == [
        (0, 3, 16000), (1, 3, 16000), (2, 3, 16000),
    ]  # fmt: skip
    assert rows[2]["start"] == 2.0 and rows[2]["file_seconds"] == pytest.approx(2.6)
    tail = np.frombuffer(rows[2]["audio"], dtype=np.float32)
    assert tail[:9000].min() > 0.8 and not tail[10000:].any()  # audio, then silence


def test_csv_and_jsonl_manifests_list_the_same_records(tmp_path):
    (tmp_path / "a.wav").write_bytes(b"")
    rows = [
        {
            "path": "a.wav",
            "caption": "calm piano",
            "genre": "classical",
            "moods": "calm, soft",
            "bpm": "72",
        },
        {"path": "b.wav", "caption": "", "genre": "rock", "moods": "", "bpm": ""},
        {"path": "c.wav", "caption": "x", "genre": "", "moods": "", "bpm": "fast"},
    ]
    with open(tmp_path / "m.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    jsonl = [
        {
            "path": "a.wav",
            "caption": "calm piano",
            "genre": "classical",
            "moods": ["calm", "soft"],
            "bpm": 72,
        },
        {"path": "b.wav", "genre": "rock"},
        {"path": "c.wav", "caption": "x", "bpm": "fast"},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in jsonl))
    from_csv = sources.list_sources(str(tmp_path / "m.csv"))
    assert from_csv == sources.list_sources(str(tmp_path / "m.jsonl"))
    assert from_csv[0]["path"] == str(tmp_path / "a.wav")
    assert json.loads(from_csv[0]["attributes"]) == {
        "genre": "classical",
        "moods": ["calm", "soft"],
        "bpm": 72.0,
    }
    assert from_csv[1]["caption"] == "rock"  # no caption: made from the attributes
    assert (from_csv[2]["stage"], from_csv[2]["reason"]) == ("manifest", "bad attributes")
    with pytest.raises(UsageError, match="not found"):
        sources.list_sources(str(tmp_path / "nothing.jsonl"))


def test_a_random_codec_is_refused_before_any_work(tmp_path):
    cfg = Config(data=data_config(tmp_path, tmp_path / "out"))  # codec.source None: random
    with pytest.raises(UsageError, match="codec calibrate"):
        tokenize(cfg, progress=False)
    assert not (tmp_path / "out").exists()
