"""Damaged state and bad inputs of `data tokenize`, through the real CLI (issue 8).

- resume redoes a shard that was deleted or truncated after its marker was written,
  and says so; the result equals the first run;
- a manifest row with bytes that are not UTF-8 is skipped and listed in errors.csv;
- a Ray address with nothing listening fails in one line before anything is written.
"""

import csv
import os
import socket
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from music_gen.cli import main
from music_gen.pipelines import shards, synth

pytestmark = pytest.mark.integration

SETTINGS = [
    "--no-progress", "data.segment_seconds=1.0", "data.min_seconds=0.5",
    "data.files_per_shard=2", "data.batch_size=4", "data.encode_num_cpus=0.5",
    "data.decode_num_cpus=0.5", "data.num_actors=1",
]  # fmt: skip


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    synth.write_synth_dataset(root / "clips", 4, 1.0, seed=0)
    codec = root / "codec"
    args = ["codec", "calibrate", "-i", str(root / "clips"), "-o", str(codec)]
    assert main([*args, "--max-seconds", "4", "codec.cardinality=64"]) == 0
    return root


def all_rows(root) -> list[dict]:
    rows = [r for p in shards.shard_paths(str(root)) for r in pq.read_table(p).to_pylist()]
    return sorted(rows, key=lambda r: r["id"])


def test_resume_redoes_a_deleted_or_truncated_shard_and_says_so(
    ray_cluster, corpus, tmp_path, capsys
):
    out = tmp_path / "ds"
    argv = ["data", "tokenize", "-i", str(corpus / "clips"), "-o", str(out)]
    argv += ["--codec", str(corpus / "codec"), *SETTINGS]
    assert main(argv) == 0
    first = all_rows(out)
    capsys.readouterr()
    (out / "shards" / "part-00000.parquet").unlink()
    truncated = out / "shards" / "part-00001.parquet"
    truncated.write_bytes(truncated.read_bytes()[:100])
    assert main(["data", "validate", str(out)]) == 1  # damage is not passed as good
    assert "damaged after writing" in capsys.readouterr().out

    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "shard part-00000 is damaged (shards/part-00000.parquet missing): redoing it" in (
        captured.err
    )
    assert "shard part-00001 is damaged (shards/part-00001.parquet is 100 bytes" in captured.err
    assert "2/2 complete, 2 this run" in captured.out
    assert all_rows(out) == first
    assert main(["data", "validate", str(out)]) == 0


def test_a_manifest_row_that_is_not_utf8_is_skipped_and_listed(
    ray_cluster, corpus, tmp_path, capsys
):
    clips = sorted((corpus / "clips").glob("*.wav"))
    manifest = tmp_path / "songs.jsonl"
    manifest.write_bytes(
        b'{"path": "%s", "caption": "caf\xe9 jazz"}\n' % str(clips[0]).encode()
        + b'{"path": "%s", "caption": "calm piano"}\n' % str(clips[1]).encode()
    )
    out = tmp_path / "ds"
    argv = ["data", "tokenize", "-i", str(manifest), "-o", str(out)]
    argv += ["--codec", str(corpus / "codec"), *SETTINGS, "data.max_error_fraction=0.6"]
    assert main(argv) == 0
    assert "not UTF-8: 1" in capsys.readouterr().out
    with open(out / "errors.csv", newline="") as handle:
        (error,) = list(csv.DictReader(handle))
    assert error["path"] == str(clips[0]) and error["reason"] == "not UTF-8"
    assert "songs.jsonl:1" in error["detail"] and "caption" in error["detail"]
    rows = all_rows(out)
    assert {r["source"] for r in rows} == {str(clips[1])}
    assert not any("\ufffd" in r["caption"] for r in rows)


def test_a_ray_address_with_nothing_listening_fails_in_one_line_and_writes_nothing(
    corpus, tmp_path
):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ds"
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    command = [sys.executable, "-m", "music_gen.cli", "data", "tokenize"]
    command += ["-i", str(corpus / "clips"), "-o", str(out), "--codec", str(corpus / "codec")]
    result = subprocess.run(
        [*command, *SETTINGS], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "RpcError" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("music-gen:")]
    assert errors == [
        f"music-gen: error: no Ray cluster answers at 127.0.0.1:{port} (RAY_ADDRESS: "
        "Connection refused); start one there (`ray start --head`), fix the address, "
        "or unset RAY_ADDRESS to run locally"
    ]
    assert not out.exists()
