"""The tokenized dataset on disk: Parquet shards of codec codes, their schema and checks.

A dataset directory (local or ``s3://``/``gs://``) written by ``music-gen data tokenize``::

    DIR/dataset.json              codec metadata, settings, number of shards
    DIR/shards/part-00000.parquet one row per segment (SHARD_SCHEMA)
    DIR/errors/part-00000.parquet files that could not be used (ERROR_SCHEMA)
    DIR/_progress/part-00000.json a shard's completion marker: counts, and the size and
                                  sha256 of the files it vouches for (for resume)
    DIR/errors.csv, DIR/summary.json   the last run's error list and summary, for people

A shard row holds one segment: ``id`` (``<source_id>-<segment>``), ``source`` (path or
URI), ``segment`` (index in its file), ``start`` and ``duration`` (seconds the codes
cover, padding included), ``caption``, the attributes ``genre``, ``moods``, ``key``,
``bpm``, ``instrument`` (null when unknown), ``attributes`` (all the file's metadata
as JSON text), ``codes`` (``uint16`` little-endian bytes of the row-major ``[K, T]``
array), ``num_codebooks`` (K), ``frames`` (T) and ``chroma`` (the dominant pitch class,
0-11, of each of the T frames as ``uint8`` bytes: what melody training conditions on,
``models/melody.py``; shards written before it, or with ``data.chroma=false``, lack the
column and are otherwise read as before). The codec that made the codes is
described in every shard's file metadata (key ``music_gen``) and in ``dataset.json``:
``codec``, ``sample_rate``, ``frame_rate``, ``num_codebooks``, ``cardinality``...

For training::

    ds = ray.data.read_parquet(shard_paths(root))
    codes = read_codes(row)                 # np.int64 [K, T]
    check_codec(root, num_codebooks=4, cardinality=2048)

Damage after writing (a shard deleted, truncated or overwritten) is caught by the
marker's ``checksums``: ``tokenize`` redoes such a shard on resume (``shard_damage``),
``validate`` reports it, and ``readable_shards`` (what training and evaluation call
first) refuses a dataset whose shards are missing, of the wrong size, unreadable or
empty, in one line, before any work starts.

The train/validation split is by whole source files (``choose_val_sources``): training,
validation and ``music-gen evaluate`` hold out the same files.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from music_gen.errors import MusicGenError
from music_gen.pipelines.sources import resolve, to_uri

FORMAT_VERSION = 1
METADATA_KEY = b"music_gen"
CODES_DTYPE = "<u2"  # cardinalities up to 65536 fit; MusicGen's is 2048
SHARDS, ERRORS, PROGRESS = "shards", "errors", "_progress"
DATASET_FILE, SUMMARY_FILE, ERRORS_CSV = "dataset.json", "summary.json", "errors.csv"

SHARD_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("segment", pa.int32()),
        ("start", pa.float64()),
        ("duration", pa.float64()),
        ("caption", pa.string()),
        ("genre", pa.string()),
        ("moods", pa.list_(pa.string())),
        ("key", pa.string()),
        ("bpm", pa.float32()),
        ("instrument", pa.string()),
        ("attributes", pa.string()),
        ("codes", pa.binary()),
        ("num_codebooks", pa.int16()),
        ("frames", pa.int32()),
        ("chroma", pa.binary()),
    ]
)
CHROMA = "chroma"
CHROMA_DTYPE = "u1"
NO_CHROMA_SCHEMA = SHARD_SCHEMA.remove(SHARD_SCHEMA.get_field_index(CHROMA))
"""Shards without the chroma column (older datasets, or ``data.chroma=false``)."""


def is_shard_schema(schema: pa.Schema) -> bool:
    """A music-gen shard's schema, with or without the chroma column (metadata aside)."""
    schema = schema.remove_metadata()
    return schema.equals(SHARD_SCHEMA) or schema.equals(NO_CHROMA_SCHEMA)


ERROR_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("stage", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
    ]
)


# --- codes -----------------------------------------------------------------------------


def codes_to_bytes(codes: np.ndarray) -> bytes:
    """``[K, T]`` integer codes -> compact bytes (``uint16``, row-major)."""
    if codes.size and (codes.min() < 0 or codes.max() > np.iinfo(np.uint16).max):
        raise ValueError("codes must lie in [0, 65535] to be stored as uint16")
    return np.ascontiguousarray(codes, dtype=CODES_DTYPE).tobytes()


def read_codes(row: dict) -> np.ndarray:
    """The codes of a shard row (a dict with ``codes``, ``num_codebooks``, ``frames``): int64 ``[K, T]``."""
    flat = np.frombuffer(row["codes"], dtype=CODES_DTYPE)
    return flat.reshape(int(row["num_codebooks"]), int(row["frames"])).astype(np.int64)


def chroma_to_bytes(classes: np.ndarray) -> bytes:
    """``[T]`` pitch classes -> ``uint8`` bytes (one per frame)."""
    return np.ascontiguousarray(classes, dtype=CHROMA_DTYPE).tobytes()


def read_chroma(data: bytes) -> np.ndarray:
    """A row's ``chroma`` bytes -> int64 pitch classes ``[T]``."""
    return np.frombuffer(data, dtype=CHROMA_DTYPE).astype(np.int64)


def batch_codes(batch: dict) -> list[np.ndarray]:
    """The codes of every row of a columnar batch (``iter_batches(batch_format="numpy")``)."""
    columns = zip(batch["codes"], batch["num_codebooks"], batch["frames"], strict=True)
    return [read_codes({"codes": c, "num_codebooks": k, "frames": t}) for c, k, t in columns]


# --- layout ----------------------------------------------------------------------------------


def split_key(source: str) -> bytes:
    """What decides a file's split: its name and the folder it is in, not where that folder
    lives, so a dataset moved, copied or written under another temp dir splits the same way
    (``song_12/audio.wav`` and ``song_13/audio.wav`` still differ)."""
    parts = source.replace("\\", "/").rstrip("/").split("/")
    return "/".join(parts[-2:]).encode()


SPLIT_BUCKETS = 10_000
"""``split_hash`` lands in [0, SPLIT_BUCKETS); a fraction f holds out the buckets below f * it."""


def split_hash(source: str) -> int:
    """A stable, well-spread hash of ``split_key`` in [0, SPLIT_BUCKETS). (CRC32 is linear: names
    one digit apart, ``synth-00001.wav``, ``synth-00002.wav``, clustered, and 10 of 24 such
    files fell below a 0.2 cut.)"""
    return int.from_bytes(hashlib.sha1(split_key(source)).digest()[:8], "big") % SPLIT_BUCKETS


def is_validation(source: str, fraction: float) -> bool:
    """Whole files go to one split, by a stable hash of their name and folder (no leakage).
    ``choose_val_sources`` applies the same cut to every file at once."""
    return split_hash(source) < fraction * SPLIT_BUCKETS


def choose_val_sources(sources: Sequence[str], fraction: float) -> set[str]:
    """The validation files; at least one when ``fraction`` > 0 and there are two files or more,
    never all of them."""
    ranked = sorted((split_hash(s), s) for s in set(sources))  # each file hashed once
    chosen = {s for h, s in ranked if h < fraction * SPLIT_BUCKETS}
    if not chosen and fraction > 0 and len(ranked) > 1:
        chosen = {ranked[0][1]}
    if ranked and len(chosen) == len(ranked):
        chosen.discard(ranked[-1][1])
    return chosen


def part_name(group: int) -> str:
    return f"part-{group:05d}"


def join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts)


def shard_paths(root: str) -> list[str]:
    """Every shard of a dataset directory (URIs for remote filesystems), sorted."""
    fs, path = resolve(root)
    return [to_uri(fs, p) for p in _list(fs, join(path, SHARDS), ".parquet")]


def _list(fs: pafs.FileSystem, directory: str, suffix: str) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pafs.FileType.File and i.path.endswith(suffix))


def read_json(fs: pafs.FileSystem, path: str) -> dict | None:
    if fs.get_file_info(path).type != pafs.FileType.File:
        return None
    with fs.open_input_file(path) as handle:
        return json.loads(handle.read())


def write_bytes_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write then rename, so that a crash never leaves a half-written file under ``path``."""
    fs.create_dir(posixpath.dirname(path), recursive=True)
    tmp = path + ".tmp"
    with fs.open_output_stream(tmp) as handle:
        handle.write(data)
    fs.move(tmp, path)


def write_json(fs: pafs.FileSystem, path: str, value: dict) -> None:
    write_bytes_atomic(fs, path, (json.dumps(value, indent=1, sort_keys=True) + "\n").encode())


def write_table(fs: pafs.FileSystem, path: str, table: pa.Table) -> dict:
    """Write ``table`` as Parquet (atomically); returns its ``file_record`` for the marker."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    data = sink.getvalue().to_pybytes()
    write_bytes_atomic(fs, path, data)
    return file_record(data)


# --- completion markers ---------------------------------------------------------------------


def file_record(data: bytes) -> dict:
    """What a marker remembers of a file it vouches for: its size and sha256."""
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def marker_path(root: str, name: str) -> str:
    return join(root, PROGRESS, name + ".json")


def write_marker(fs: pafs.FileSystem, root: str, name: str, counts: dict, files: dict) -> None:
    """Shard ``name``'s completion marker, written last: ``counts`` plus ``checksums``
    (``files``: path relative to ``root`` -> ``file_record``)."""
    write_json(fs, marker_path(root, name), {**counts, "checksums": files})


def read_marker(fs: pafs.FileSystem, root: str, name: str) -> dict | None:
    """A shard's marker, or None when it is missing or not JSON (an interrupted write)."""
    try:
        marker = read_json(fs, marker_path(root, name))
    except (ValueError, UnicodeDecodeError):
        return None
    return marker if isinstance(marker, dict) else None


def _hash_file(fs: pafs.FileSystem, path: str) -> str:
    digest = hashlib.sha256()
    with fs.open_input_stream(path) as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def shard_damage(
    fs: pafs.FileSystem, root: str, marker: dict | None, verify: bool = True
) -> str | None:
    """Why the files a marker vouches for are not what was written, or None when they are.

    Sizes are always compared (one listing); ``verify`` also compares checksums (reads
    every byte). A marker of an older format (no ``checksums``) vouches for its shard
    existing only.
    """
    if marker is None:
        return "completion marker unreadable"
    records = marker.get("checksums")
    if records is None:
        return None
    for relative, record in sorted(records.items()):
        info = fs.get_file_info(join(root, relative))
        if info.type != pafs.FileType.File:
            return f"{relative} missing"
        if info.size != record["bytes"]:
            return f"{relative} is {info.size} bytes, {record['bytes']} were written"
        if verify and _hash_file(fs, join(root, relative)) != record["sha256"]:
            return f"{relative} differs from what was written (sha256)"
    return None


def shard_table(rows: list[dict], meta: dict, chroma: bool = True) -> pa.Table:
    """Rows as a shard; ``chroma`` False leaves the chroma column out."""
    schema = SHARD_SCHEMA if chroma else NO_CHROMA_SCHEMA
    schema = schema.with_metadata({METADATA_KEY: json.dumps(meta, sort_keys=True)})
    return pa.Table.from_pylist(rows, schema=schema)


def errors_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=ERROR_SCHEMA)


# --- reading back --------------------------------------------------------------------------


def dataset_info(root: str) -> dict:
    """``dataset.json`` of a dataset directory (codec metadata under ``codec``)."""
    fs, path = resolve(root)
    info = read_json(fs, join(path, DATASET_FILE))
    if info is None:
        raise MusicGenError(f"{root} is not a tokenized dataset (no {DATASET_FILE})")
    return info


def codec_info(root: str) -> dict:
    """Codec metadata of a dataset: ``codec``, ``sample_rate``, ``frame_rate``,
    ``num_codebooks``, ``cardinality``, ``channels``, ``hop_length``."""
    return dataset_info(root)["codec"]


def check_codec(root: str, num_codebooks: int, cardinality: int) -> dict:
    """Raise unless a model with ``num_codebooks`` x ``cardinality`` can learn this dataset."""
    meta = codec_info(root)
    if meta["num_codebooks"] != num_codebooks or meta["cardinality"] > cardinality:
        raise MusicGenError(
            f"dataset {root} has {meta['num_codebooks']} codebooks of {meta['cardinality']} codes "
            f"but the model expects {num_codebooks} of {cardinality} "
            "(set model.num_codebooks / model.cardinality to match the codec)"
        )
    return meta


def readable_shards(root: str) -> list[str]:
    """The shard paths of a dataset fit to train or evaluate on; else one-line ``MusicGenError``.

    What training's and evaluation's drivers call before any work: ``dataset.json``
    present, at least one shard, each shard of the size its marker recorded, with a
    readable Parquet footer and ``SHARD_SCHEMA``, and at least one row in all. Cheap:
    footers and a listing, not the codes (``music-gen data validate`` reads those).
    """
    dataset_info(root)
    fs, path = resolve(root)
    files = _list(fs, join(path, SHARDS), ".parquet")
    if not files:
        raise MusicGenError(
            f"dataset {root} has no shards: run `music-gen data tokenize --output {root}`"
        )
    redo = f"re-run `music-gen data tokenize` with --output {root} to redo it"
    rows = 0
    for shard in files:
        name = posixpath.basename(shard)[: -len(".parquet")]
        marker = read_marker(fs, path, name)
        damage = None if marker is None else shard_damage(fs, path, marker, verify=False)
        if damage:
            raise MusicGenError(f"dataset {root}: shard {name} is damaged ({damage}); {redo}")
        try:
            metadata = pq.read_metadata(shard, filesystem=fs)
            schema = metadata.schema.to_arrow_schema().remove_metadata()
        except Exception as exc:  # any corruption pyarrow reports
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            raise MusicGenError(
                f"dataset {root}: shard {name} is unreadable ({reason}); {redo}"
            ) from None
        if not is_shard_schema(schema):
            raise MusicGenError(f"dataset {root}: shard {name} is not a music-gen shard; {redo}")
        rows += metadata.num_rows
    if rows == 0:
        raise MusicGenError(
            f"dataset {root} holds no clips (every file failed: see {join(root, ERRORS_CSV)})"
        )
    return [to_uri(fs, p) for p in files]


def shards_without_chroma(paths: Sequence[str]) -> list[str]:
    """The shards among ``paths`` (from ``readable_shards``) that lack the chroma column."""
    missing = []
    for uri in paths:
        fs, path = resolve(uri)
        if CHROMA not in pq.read_schema(path, filesystem=fs).names:
            missing.append(posixpath.basename(path))
    return missing


def read_errors(root: str) -> pa.Table:
    """All files that could not be used, from every shard's errors table."""
    fs, path = resolve(root)
    tables = [pq.read_table(p, filesystem=fs) for p in _list(fs, join(path, ERRORS), ".parquet")]
    return pa.concat_tables(tables) if tables else ERROR_SCHEMA.empty_table()


def shard_meta(fs: pafs.FileSystem, path: str) -> dict:
    raw = (pq.read_schema(path, filesystem=fs).metadata or {}).get(METADATA_KEY)
    return json.loads(raw) if raw else {}


# --- validation -------------------------------------------------------------------------------

CODEC_KEYS = ("codec", "sample_rate", "frame_rate", "num_codebooks", "cardinality")


def validate(root: str, max_violations: int = 20) -> dict:
    """Check every shard of ``root``; returns a report (``violations`` empty when all is well).

    Checks: the schema, the codec metadata, codes below the cardinality and of the
    stated size, frame counts consistent with duration x frame rate, chroma (when the
    shard has the column) of one pitch class per frame, captions present,
    unique ids, every shard complete and as its marker recorded it (size, sha256), at
    least one shard and one clip. Reads one row group at a time (bounded memory).
    """
    fs, path = resolve(root)
    info = dataset_info(root)
    codec = info["codec"]
    report = {
        "shards": 0,
        "clips": 0,
        "sources": 0,
        "hours": 0.0,
        "genres": Counter(),
        "errors": Counter(),
        "violations": [],
    }
    ids, sources = set(), set()

    def violate(where: str, what: str) -> None:
        report["violations"].append(f"{where}: {what}")

    shard_files = _list(fs, join(path, SHARDS), ".parquet")
    markers = {
        posixpath.basename(p)[: -len(".json")] for p in _list(fs, join(path, PROGRESS), ".json")
    }
    expected = {part_name(g) for g in range(int(info.get("num_shards", 0)))}
    for missing in sorted(expected - markers):
        violate(missing, "shard missing or incomplete (re-run tokenize to finish)")
    for name in sorted(markers):
        damage = shard_damage(fs, path, read_marker(fs, path, name))
        if damage:
            violate(name, f"damaged after writing: {damage} (re-run tokenize to redo it)")
    for shard in shard_files:
        name = posixpath.basename(shard)
        if name[: -len(".parquet")] not in markers:
            violate(name, "no completion marker (interrupted write; re-run tokenize)")
        report["shards"] += 1
        _validate_shard(fs, shard, name, codec, report, ids, sources, violate)
    if not shard_files:
        violate(root, "no shards (run `music-gen data tokenize`)")
    elif not report["clips"]:
        violate(root, "no clips in any shard (every file failed? see errors.csv)")
    for row in read_errors(root).to_pylist():
        report["errors"][row["reason"]] += 1
    report["sources"] = len(sources)
    report["hours"] = round(report["hours"], 4)
    report["total_violations"] = len(report["violations"])
    report["violations"] = report["violations"][:max_violations]
    return report


def _validate_shard(fs, shard, name, codec, report, ids, sources, violate) -> None:
    try:
        parquet = pq.ParquetFile(shard, filesystem=fs)
        meta = shard_meta(fs, shard)
    except Exception as exc:  # any corruption pyarrow can report
        violate(name, f"unreadable shard ({type(exc).__name__}: {exc})")
        return
    if not is_shard_schema(parquet.schema_arrow):
        violate(name, "schema differs from SHARD_SCHEMA")
        return
    for key in CODEC_KEYS:
        if meta.get(key) != codec.get(key):
            violate(name, f"metadata {key}={meta.get(key)!r}, dataset says {codec.get(key)!r}")
    try:
        for batch in parquet.iter_batches():
            _validate_rows(batch.to_pylist(), name, codec, report, ids, sources, violate)
    except Exception as exc:
        violate(name, f"unreadable rows ({type(exc).__name__}: {exc})")


def _validate_rows(rows, name, codec, report, ids, sources, violate) -> None:
    itemsize = np.dtype(CODES_DTYPE).itemsize
    for row in rows:
        where = f"{name}:{row['id']}"
        k, t = row["num_codebooks"], row["frames"]
        if row["id"] in ids:
            violate(where, "duplicate id")
        ids.add(row["id"])
        sources.add(row["source"])
        if not (row["caption"] or "").strip():
            violate(where, "empty caption")
        if k != codec["num_codebooks"]:
            violate(where, f"{k} codebooks, codec has {codec['num_codebooks']}")
        if row["codes"] is None or len(row["codes"]) != k * t * itemsize:
            violate(
                where, f"codes hold {len(row['codes'] or b'')} bytes, expected K x T = {k} x {t}"
            )
            continue
        codes = np.frombuffer(row["codes"], dtype=CODES_DTYPE)
        if codes.size and int(codes.max()) >= codec["cardinality"]:
            violate(where, f"code {int(codes.max())} >= cardinality {codec['cardinality']}")
        chroma = row.get(CHROMA, b"")  # absent: a shard without the column
        if chroma is None or (CHROMA in row and len(chroma) != t):
            violate(where, f"chroma holds {len(chroma or b'')} frames, the codes {t}")
        elif chroma and int(np.frombuffer(chroma, dtype=CHROMA_DTYPE).max()) >= 12:
            violate(where, "chroma holds a pitch class above 11")
        expected = row["duration"] * codec["frame_rate"]
        if row["duration"] <= 0 or abs(t - expected) > 1.0 + 1e-6:
            violate(
                where,
                f"{t} frames but {row['duration']:.3f} s x {codec['frame_rate']} Hz = {expected:.1f}",
            )
        report["clips"] += 1
        report["hours"] += row["duration"] / 3600
        report["genres"][row["genre"] or "unknown"] += 1


def format_report(report: dict) -> str:
    lines = [
        f"shards      {report['shards']}",
        f"clips       {report['clips']}",
        f"sources     {report['sources']}",
        f"hours       {report['hours']:.3f}",
        "genres      "
        + (", ".join(f"{g}: {n}" for g, n in sorted(report["genres"].items())) or "-"),
        "errors      "
        + (", ".join(f"{r}: {n}" for r, n in sorted(report["errors"].items())) or "0"),
        f"violations  {report['total_violations']}",
    ]
    lines += [f"  {v}" for v in report["violations"]]
    if report["total_violations"] > len(report["violations"]):
        lines.append(f"  ... and {report['total_violations'] - len(report['violations'])} more")
    return "\n".join(lines)
