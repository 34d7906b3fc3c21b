"""Tokenize audio into Parquet shards of codec codes: a streaming Ray Data pipeline.

::

    list sources (driver)            records: path, caption, attributes   (sources.py)
      -> from_items                  a few files per block
      -> flat_map(decode_segments)   Ray tasks: read, mix, resample, check, normalise,
                                     cut into segments; a bad file becomes one error row
      -> map_batches(CodecEncoder)   actor pool (ActorPoolStrategy), a GPU each when the
                                     cluster has GPUs: audio [B, C, S] -> codes [B, K, T]
                                     and (``data.chroma``) each segment's pitch class per
                                     code frame [B, T], what melody training conditions on
      -> iter_batches (driver)       rows grouped by shard; a shard is written when all
                                     its files are in: shards/, errors/, _progress/

Why the driver writes: codes are ~100x smaller than the audio they replace (16 kHz
float audio is 64 kB/s, 4 codebooks at 50 Hz are 400 B/s), so the heavy work stays on
the cluster while one writer keeps shard names deterministic, which is what makes
resume exact. Memory stays bounded: Ray Data streams blocks with backpressure and the
driver holds only the codes of shards still in flight.

Resume: input files are listed in a fixed order and cut into shards of
``data.files_per_shard`` files; a shard is done when its ``_progress`` marker exists
(written last, after the shard and its errors) and the files it vouches for still have
the size and sha256 it recorded. A re-run skips done shards and rewrites the rest
(damaged ones too, named in the summary under ``shards_redone``), so the result equals
an uninterrupted run. ``overwrite`` starts afresh.

Longer than most modules on purpose: the pipeline's row layout (``_row``), the stages
that fill it and the writer that empties it change together; codec calibration and Ray
start-up live elsewhere (``calibrate.py``, ``platform/cluster.py``).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
import time
from collections import Counter, defaultdict

import numpy as np

from music_gen.config import Config
from music_gen.errors import AudioError, MusicGenError, UsageError
from music_gen.pipelines import shards, sources

# AudioError message fragment -> short reason for the summary table (first match wins).
READ_REASONS = (
    ("file not found", "missing"),
    ("file is empty", "empty file"),
    ("not a recognised audio format", "not audio"),
    ("truncated:", "truncated"),
    ("malformed or truncated", "corrupt"),
    ("corrupt or truncated", "corrupt"),
    ("holds no audio samples", "no samples"),
)


class TooManyErrors(MusicGenError):
    """More files failed than ``data.max_error_fraction`` allows; the shards are kept."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


# --- decode and segment: runs in Ray tasks, one input record at a time ---------------


def error_row(record: dict, stage: str, reason: str, detail: str = "") -> dict:
    return _row(record, stage=stage, reason=reason, detail=detail[:500])


def _row(record: dict, **fields) -> dict:
    """A pipeline row: every row has every column so that blocks share one schema."""
    row = {
        "group": record["group"],
        "order": record["order"],
        "path": record["path"],
        "source_id": record["source_id"],
        "caption": record["caption"],
        "attributes": record["attributes"],
        "segment": 0,
        "num_segments": 1,
        "start": 0.0,
        "duration": 0.0,
        "file_seconds": 0.0,
        "channels": 0,
        "samples": 0,
        "audio": b"",
        "stage": "",
        "reason": "",
        "detail": "",
    }
    row.update(fields)
    return row


def read_reason(exc: AudioError) -> str:
    text = str(exc)
    return next((reason for needle, reason in READ_REASONS if needle in text), "unreadable")


def load_audio(path: str, sample_rate: int, channels: int):
    """Decode a local path or a remote URI to ``[C, S]`` at ``sample_rate``."""
    from music_gen.audio import read_audio

    if "://" in path:
        try:
            data = sources.read_bytes(path)
        except FileNotFoundError:
            raise AudioError(f"cannot read audio {path!r}: file not found") from None
        except OSError as exc:
            raise AudioError(f"cannot read audio {path!r}: {exc}") from None
        return read_audio(data, sample_rate, channels)[0]
    return read_audio(path, sample_rate, channels)[0]


def segment_bounds(total: int, length: int, stride: int, min_length: int) -> list[tuple[int, int]]:
    """``(start, stop)`` sample windows: full windows every ``stride``, then one tail
    window (shorter than ``length``) when it holds at least ``min_length`` samples."""
    bounds, start = [], 0
    while start + length <= total:
        bounds.append((start, start + length))
        start += stride
    covered = bounds[-1][1] if bounds else 0
    if start < total and total > covered and total - start >= min_length:
        bounds.append((start, total))
    return bounds


def decode_segments(record: dict, settings: dict) -> list[dict]:
    """One input file -> segment rows with float32 audio bytes, or one error row."""
    import torch

    from music_gen.audio import is_silent, loudness_normalize, peak_normalize

    sr, channels = settings["sample_rate"], settings["channels"]
    try:
        audio = load_audio(record["path"], sr, channels)  # [C, S]
    except AudioError as exc:
        return [error_row(record, "read", read_reason(exc), str(exc))]
    except Exception as exc:  # a file that breaks the decoder must not stop the run
        return [error_row(record, "read", "unreadable", f"{type(exc).__name__}: {exc}")]
    try:
        seconds = audio.shape[-1] / sr
        if seconds < settings["min_seconds"]:
            return [error_row(record, "check", "too short", f"{seconds:.3f} s")]
        if is_silent(audio, settings["silence_db"]):
            return [error_row(record, "check", "silent", f"below {settings['silence_db']} dBFS")]
        if settings["normalize"] == "peak":
            audio = peak_normalize(audio)
        elif settings["normalize"] == "loudness":
            audio = loudness_normalize(audio, sr)
        length = round(settings["segment_seconds"] * sr)
        stride = round((settings["stride_seconds"] or settings["segment_seconds"]) * sr)
        bounds = segment_bounds(
            audio.shape[-1], length, stride, round(settings["min_seconds"] * sr)
        )
        rows = []
        for index, (start, stop) in enumerate(bounds):
            piece = audio[:, start:stop]  # [C, L]
            if settings["pad_tail"] and piece.shape[-1] < length:
                piece = torch.nn.functional.pad(piece, (0, length - piece.shape[-1]))
            piece = piece.contiguous().float().numpy()
            rows.append(
                _row(
                    record,
                    segment=index,
                    num_segments=len(bounds),
                    start=start / sr,
                    duration=piece.shape[-1] / sr,
                    file_seconds=seconds,
                    channels=piece.shape[0],
                    samples=piece.shape[-1],
                    audio=piece.tobytes(),
                )
            )
        return rows
    except Exception as exc:
        return [error_row(record, "decode", "decode failed", f"{type(exc).__name__}: {exc}")]


# --- encode: a Ray actor holds the codec --------------------------------------------------


def build_codec(codec_config: dict):
    from music_gen.config import CodecConfig
    from music_gen.models.codec import build_codec as build

    return build(CodecConfig(**codec_config))


class CodecEncoder:
    """Ray Data actor: rows with audio -> rows with codes (and chroma, with ``chroma``).
    Error rows pass through."""

    def __init__(
        self, codec_config: dict, device: str = "cpu", threads: int = 1, chroma: bool = True
    ):
        import torch

        if device == "cpu":
            torch.set_num_threads(max(1, threads))
        self.device = device
        self.codec = build_codec(codec_config).to(device).eval()
        self.chroma = chroma

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(batch["path"])
        codes = np.full(n, b"", dtype=object)
        chroma = np.full(n, b"", dtype=object)
        num_codebooks = np.zeros(n, dtype=np.int16)
        frames = np.zeros(n, dtype=np.int32)
        stage, reason, detail = (
            batch[k].astype(object).copy() for k in ("stage", "reason", "detail")
        )
        by_shape = defaultdict(list)  # same-length segments encode together
        for i in range(n):
            if not stage[i]:
                by_shape[(int(batch["channels"][i]), int(batch["samples"][i]))].append(i)
        for (channels, samples), rows in by_shape.items():
            try:
                encoded = self.encode(batch["audio"], rows, channels, samples)  # [B, K, T]
                classes = self.pitch_classes(batch["audio"], rows, channels, encoded.shape[-1])
            except Exception as exc:  # a codec failure costs these segments, not the run
                for i in rows:
                    stage[i], reason[i], detail[i] = (
                        "encode",
                        "encode failed",
                        f"{type(exc).__name__}: {exc}"[:500],
                    )
                continue
            for i, item, pitches in zip(rows, encoded, classes, strict=True):
                codes[i] = shards.codes_to_bytes(item)
                chroma[i] = shards.chroma_to_bytes(pitches)
                num_codebooks[i], frames[i] = item.shape
        out = {k: v for k, v in batch.items() if k not in ("audio", "stage", "reason", "detail")}
        out.update(stage=stage, reason=reason, detail=detail)
        out.update(codes=codes, num_codebooks=num_codebooks, frames=frames, chroma=chroma)
        return out

    def pitch_classes(self, audio, rows: list[int], channels: int, frames: int) -> list:
        """Each segment's dominant pitch class per code frame (``uint8 [T]`` each), from
        the same audio the codes are of; empty without ``chroma``."""
        import torch

        from music_gen.models.melody import pitch_classes

        if not self.chroma:
            return [np.zeros(0, np.uint8)] * len(rows)
        rate, hop = self.codec.sample_rate, self.codec.hop_length
        clips = (np.frombuffer(audio[i], dtype=np.float32).reshape(channels, -1) for i in rows)
        with torch.inference_mode():  # one clip at a time: long STFTs of a batch are large
            return [
                pitch_classes(torch.from_numpy(c.copy()).to(self.device), rate, hop, frames)
                .cpu()
                .numpy()
                for c in clips
            ]

    def encode(self, audio: np.ndarray, rows: list[int], channels: int, samples: int) -> np.ndarray:
        import torch

        clips = [np.frombuffer(audio[i], dtype=np.float32).reshape(channels, samples) for i in rows]
        batch = torch.from_numpy(np.stack(clips)).to(self.device)  # [B, C, S]
        with torch.inference_mode():
            return self.codec.encode(batch).cpu().numpy()  # [B, K, T]


# --- driver: write shards as their files complete ------------------------------------------


class ShardWriter:
    """Collects pipeline rows per shard; writes a shard once every one of its files is in."""

    def __init__(
        self,
        fs,
        root: str,
        meta: dict,
        group_files: dict[int, int],
        on_file=None,
        chroma: bool = True,
    ):
        self.fs, self.root, self.meta, self.chroma = fs, root, meta, chroma
        self.expected = dict(group_files)  # group -> number of files
        self.rows = defaultdict(lambda: defaultdict(list))  # group -> order -> rows
        self.done_files = Counter()  # group -> files complete
        self.on_file = on_file or (lambda rows: None)

    def add(self, row: dict) -> None:
        """Take one pipeline row; a file is complete when all its segments (or its error) are in."""
        group, order = row["group"], row["order"]
        rows = self.rows[group][order]
        rows.append(row)
        if len(rows) < row["num_segments"]:
            return
        self.done_files[group] += 1
        self.on_file(rows)
        if self.done_files[group] == self.expected[group]:
            self.write(group)

    def write(self, group: int) -> None:
        """Write shard ``group``: its errors, its segments, then its completion marker."""
        files = self.rows.pop(group)
        good, bad, reasons = [], [], Counter()
        source_seconds = encoded_seconds = 0.0
        for order in sorted(files):  # input order, then segment order: deterministic shards
            rows = sorted(files[order], key=lambda r: r["segment"])
            failed = next((r for r in rows if r["stage"]), None)
            if failed is not None:
                bad.append({k: failed[k] for k in ("path", "stage", "reason", "detail")})
                reasons[failed["reason"]] += 1
                continue
            good.extend(shard_row(r) for r in rows)
            source_seconds += rows[0]["file_seconds"]
            encoded_seconds += sum(r["duration"] for r in rows)
        name = shards.part_name(group)
        errors_file = shards.join(shards.ERRORS, name + ".parquet")
        shard_file = shards.join(shards.SHARDS, name + ".parquet")
        checksums = {
            errors_file: shards.write_table(
                self.fs, shards.join(self.root, errors_file), shards.errors_table(bad)
            ),
            shard_file: shards.write_table(
                self.fs,
                shards.join(self.root, shard_file),
                shards.shard_table(good, self.meta, self.chroma),
            ),
        }
        counts = {
            "files": len(files),
            "files_failed": len(bad),
            "segments": len(good),
            "source_seconds": round(source_seconds, 6),
            "encoded_seconds": round(encoded_seconds, 6),
            "reasons": dict(sorted(reasons.items())),
        }
        shards.write_marker(self.fs, self.root, name, counts, checksums)

    def unfinished(self) -> list[int]:
        return sorted(g for g in self.expected if self.done_files[g] < self.expected[g])


def shard_row(row: dict) -> dict:
    attrs = json.loads(row["attributes"])
    return {
        "id": f"{row['source_id']}-{row['segment']:05d}",
        "source": row["path"],
        "segment": row["segment"],
        "start": row["start"],
        "duration": row["duration"],
        "caption": row["caption"],
        "genre": attrs.get("genre"),
        "moods": attrs.get("moods"),
        "key": attrs.get("key"),
        "bpm": attrs.get("bpm"),
        "instrument": attrs.get("instrument"),
        "attributes": row["attributes"],
        "codes": row["codes"],
        "num_codebooks": row["num_codebooks"],
        "frames": row["frames"],
        "chroma": row["chroma"],
    }


# --- the run ------------------------------------------------------------------------------

# DataConfig fields that change what is written: a resumed run must use the same values.
OUTPUT_SETTINGS = (
    "segment_seconds",
    "stride_seconds",
    "min_seconds",
    "pad_tail",
    "channels",
    "normalize",
    "silence_db",
    "files_per_shard",
    "chroma",
)


def codec_metadata(codec, codec_config) -> dict:
    """What a reader must know about the codec that made the codes (shard metadata)."""
    name = codec_config.source or f"{codec.backend}:{codec_config.preset}"
    return {
        "format_version": shards.FORMAT_VERSION,
        "codec": name,
        "backend": codec.backend,
        "sample_rate": int(codec.sample_rate),
        "channels": int(codec.channels),
        "frame_rate": float(codec.frame_rate),
        "hop_length": int(codec.hop_length),
        "num_codebooks": int(codec.num_codebooks),
        "cardinality": int(codec.cardinality),
        "codes_dtype": shards.CODES_DTYPE,
    }


def chroma_settings(codec) -> dict:
    """The chroma settings of a dataset's ``chroma`` column (``dataset.json``)."""
    from music_gen.models.melody import frame_chroma_settings

    return frame_chroma_settings(codec.sample_rate, codec.hop_length).to_dict()


def check_codec_usable(codec) -> None:
    """Refuse a codec with random codebooks: it maps every sound to code 0."""
    import torch

    probe = torch.randn(
        2, codec.channels, codec.sample_rate, generator=torch.Generator().manual_seed(0)
    )
    codes = codec.encode(0.3 * probe)  # [2, K, T]
    if int(codes.max()) == 0:
        raise UsageError(
            "the codec encodes every sound to code 0 (random, uncalibrated codebooks); "
            "calibrate one with `music-gen codec calibrate --input SRC --output DIR` "
            "and pass --codec DIR"
        )


def clear_output(fs, root: str) -> None:
    """Remove what tokenize wrote under ``root`` (and nothing else the user keeps there)."""
    import pyarrow.fs as pafs

    for name in (shards.SHARDS, shards.ERRORS, shards.PROGRESS):
        if fs.get_file_info(shards.join(root, name)).type == pafs.FileType.Directory:
            fs.delete_dir(shards.join(root, name))
    for name in (shards.DATASET_FILE, shards.SUMMARY_FILE, shards.ERRORS_CSV):
        if fs.get_file_info(shards.join(root, name)).type == pafs.FileType.File:
            fs.delete_file(shards.join(root, name))


def remove_partial_writes(fs, root: str) -> None:
    """Delete ``*.tmp`` files an interrupted run left behind (never read, but untidy)."""
    import pyarrow.fs as pafs

    for name in (shards.SHARDS, shards.ERRORS, shards.PROGRESS):
        selector = pafs.FileSelector(shards.join(root, name), allow_not_found=True)
        for info in fs.get_file_info(selector):
            if info.type == pafs.FileType.File and info.path.endswith(".tmp"):
                fs.delete_file(info.path)


def describe_change(previous: dict, info: dict) -> str | None:
    """What differs between the dataset on disk and this run, if anything that matters."""
    before = previous.get("settings") or {}
    changed = [k for k, v in info["settings"].items() if before.get(k) != v]
    if changed:
        return (
            "data settings ("
            + ", ".join(f"{k}: {before.get(k)!r} -> {info['settings'][k]!r}" for k in changed)
            + ")"
        )
    if previous.get("codec") != info["codec"]:
        return "codec"
    # Not "input" itself: the same files named by another path are the same dataset.
    if any(previous.get(k) != info[k] for k in ("sources_digest", "num_files", "num_shards")):
        return "input files"
    return None


def prepare_output(fs, root: str, info: dict, overwrite: bool) -> None:
    """Start afresh (``overwrite``) or check that a resumed run uses the same settings."""
    if overwrite:
        clear_output(fs, root)
    remove_partial_writes(fs, root)
    previous = shards.read_json(fs, shards.join(root, shards.DATASET_FILE))
    change = None if previous is None else describe_change(previous, info)
    if change:
        raise UsageError(
            f"{root} holds a dataset made with other {change}; "
            "pass --overwrite to start afresh, or choose another --output"
        )
    shards.write_json(fs, shards.join(root, shards.DATASET_FILE), info)


def encoder_resources(data) -> dict:
    """Resources of one codec actor: a GPU each when the cluster has them, else CPUs."""
    import ray

    gpus = data.encode_num_gpus
    if gpus is None:
        gpus = 1.0 if ray.cluster_resources().get("GPU", 0) > 0 else 0.0
    return {"num_cpus": data.encode_num_cpus, "num_gpus": gpus}


FILES_PER_BLOCK = 8
"""Files each decode task reads. One task per file spent a quarter of a tokenize of many
short clips on task overhead (320 clips of 2 s on 2 cores: 21-22 s, against 14-17 s in
blocks of 8); Ray Data still splits a task's output into blocks of its target size."""
MAX_BLOCKS = 2000


def build_pipeline(records: list[dict], cfg: Config, settings: dict):
    """The Ray Data pipeline (lazy): records -> decoded segments -> codes."""
    import ray

    data = cfg.data
    resources = encoder_resources(data)
    device = "cuda" if resources["num_gpus"] > 0 else "cpu"
    blocks = min(-(-len(records) // FILES_PER_BLOCK), MAX_BLOCKS)
    ds = ray.data.from_items(records, override_num_blocks=blocks)
    ds = ds.flat_map(
        decode_segments, fn_kwargs={"settings": settings}, num_cpus=data.decode_num_cpus
    )
    return ds.map_batches(
        CodecEncoder,
        fn_constructor_kwargs={
            "codec_config": cfg.codec.model_dump(),
            "device": device,
            "threads": max(1, int(data.encode_num_cpus)),
            "chroma": data.chroma,
        },
        batch_size=data.batch_size,
        batch_format="numpy",
        # Ray Data places its actors with its context's strategy, SPREAD unless a user
        # changed it: encoders go to as many nodes as can hold them.
        compute=ray.data.ActorPoolStrategy(size=data.num_actors),
        **resources,
    )


def tokenize(
    cfg: Config, *, overwrite: bool = False, progress: bool = True, max_shards: int | None = None
) -> dict:
    """Tokenize ``cfg.data.input`` into shards under ``cfg.data.output``; returns the summary.

    ``max_shards`` stops after writing that many new shards (the next run resumes).
    Raises ``TooManyErrors`` (after writing everything) when the share of bad files
    exceeds ``cfg.data.max_error_fraction``.
    """
    from music_gen.models.codec import build_codec as build

    data = cfg.data
    if not data.input or not data.output:
        raise UsageError("tokenize needs an input (--input) and an output (--output)")
    started = time.time()
    fs, root = sources.resolve(data.output)
    check_output(fs, root, data.output)
    from music_gen.platform.cluster import check_address

    check_address()  # a cluster address nothing answers at: before anything is written
    codec = build(cfg.codec)
    if data.channels != codec.channels:
        raise UsageError(
            f"data.channels={data.channels} but the codec takes {codec.channels} channel(s); "
            f"set data.channels={codec.channels}"
        )
    check_codec_usable(codec)
    meta = codec_metadata(codec, cfg.codec)
    records = sources.list_sources(data.input)
    if not records:
        raise UsageError(
            f"no audio files ({', '.join(sources.AUDIO_EXTENSIONS)}) found in {data.input}"
        )
    per_shard = data.files_per_shard
    groups = [records[i : i + per_shard] for i in range(0, len(records), per_shard)]
    settings = {k: getattr(data, k) for k in OUTPUT_SETTINGS}
    info = {
        "format_version": shards.FORMAT_VERSION,
        "input": data.input,
        "codec": meta,
        "settings": settings,
        "num_files": len(records),
        "num_shards": len(groups),
        # Which files in which order: a resumed run must cut the same shards.
        "sources_digest": hashlib.sha1("\n".join(r["path"] for r in records).encode()).hexdigest(),
        # The STFT behind the shards' chroma column (one frame per code frame).
        "chroma": chroma_settings(codec) if data.chroma else None,
    }
    prepare_output(fs, root, info, overwrite)
    done, redone = verified_shards(fs, root)
    for name, why in sorted(redone.items()):
        print(f"music-gen: note: shard {name} is damaged ({why}): redoing it", file=sys.stderr)
    todo = [g for g in range(len(groups)) if shards.part_name(g) not in done][: max_shards or None]
    run = run_shards(groups, todo, cfg, {**settings, **meta}, fs, root, meta, progress)
    summary = summarize(fs, root, len(groups), len(todo), run, started)
    summary["shards_redone"] = redone
    write_reports(fs, root, summary)
    check_error_share(summary, data.max_error_fraction)
    return summary


def check_output(fs, root: str, output: str) -> None:
    """Before any work: the output is a folder (or can be made), not a file."""
    import pyarrow.fs as pafs

    from music_gen import outputs

    if isinstance(fs, pafs.LocalFileSystem):
        outputs.check_dir(root, "--output")
    elif fs.get_file_info(root).type == pafs.FileType.File:
        raise UsageError(f"--output {output} is a file, not a folder; give a folder")


def verified_shards(fs, root: str) -> tuple[set[str], dict[str, str]]:
    """``(done, redone)``: shards whose marker vouches for intact files, and the damaged
    ones (name -> why), whose markers are removed so that this run writes them again."""
    done, redone = set(), {}
    for name in completed_shards(fs, root):
        damage = shards.shard_damage(fs, root, shards.read_marker(fs, root, name))
        if damage is None:
            done.add(name)
            continue
        redone[name] = damage
        fs.delete_file(shards.marker_path(root, name))
    return done, redone


def completed_shards(fs, root: str) -> list[str]:
    """Names (``part-00003``) of the shards whose completion marker exists: one listing."""
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(shards.join(root, shards.PROGRESS), allow_not_found=True)
    names = [info.base_name for info in fs.get_file_info(selector)]
    return sorted(name[: -len(".json")] for name in names if name.endswith(".json"))


def run_shards(groups, todo, cfg, settings, fs, root, meta, show_progress) -> dict:
    """Process the shards ``todo``; returns seconds of audio encoded and when codes first came."""
    from tqdm import tqdm

    num_files = sum(len(groups[g]) for g in todo)
    if any(not record["stage"] for g in todo for record in groups[g]):
        from music_gen.platform.cluster import ensure_ray

        ensure_ray()  # before the bar: it takes the terminal's stderr as it is then
    bar = tqdm(total=num_files, unit="file", desc="tokenize", disable=not show_progress or not todo)
    counts = Counter()
    first_output = None

    def on_file(rows: list[dict]) -> None:
        if any(r["stage"] for r in rows):
            counts["failed"] += 1
        else:
            counts["segments"] += len(rows)
            counts["seconds"] += sum(r["duration"] for r in rows)
        bar.update(1)
        bar.set_postfix(segments=counts["segments"], failed=counts["failed"], refresh=False)

    files = {g: len(groups[g]) for g in todo}
    writer = ShardWriter(fs, root, meta, files, on_file, chroma=cfg.data.chroma)
    pending = []
    for g in todo:
        for order, record in enumerate(groups[g]):
            record = {**record, "group": g, "order": order}
            if record["stage"]:  # broken before any audio was read (manifest, sidecar)
                writer.add(error_row(record, record["stage"], record["reason"], record["detail"]))
            else:
                pending.append(record)
    if pending:
        for batch in build_pipeline(pending, cfg, settings).iter_batches(
            batch_size=None, batch_format="pyarrow"
        ):
            first_output = first_output or time.time()
            for row in batch.to_pylist():
                writer.add(row)
    bar.close()
    if writer.unfinished():
        raise RuntimeError(f"pipeline lost rows of shards {writer.unfinished()}")
    return {"seconds": counts["seconds"], "first_output": first_output}


MARKER_COUNTS = ("files", "files_failed", "segments", "source_seconds", "encoded_seconds")


def summarize(fs, root: str, num_shards: int, ran: int, run: dict, started: float) -> dict:
    """Totals over every completed shard (this run's and earlier ones) plus this run's speed."""
    encoded, wall = run["seconds"], time.time() - started
    totals, reasons = Counter(), Counter()
    complete = completed_shards(fs, root)
    for name in complete:
        marker = shards.read_marker(fs, root, name) or {}
        reasons.update(marker.get("reasons", {}))
        totals.update({k: marker.get(k, 0) for k in MARKER_COUNTS})
    return {
        "shards": num_shards,
        "shards_complete": len(complete),
        "shards_this_run": ran,
        "files": totals["files"],
        "files_ok": totals["files"] - totals["files_failed"],
        "files_failed": totals["files_failed"],
        "failed_by_reason": dict(sorted(reasons.items())),
        "segments": totals["segments"],
        "hours": round(totals["source_seconds"] / 3600, 4),
        "hours_encoded": round(totals["encoded_seconds"] / 3600, 4),
        "seconds_encoded_this_run": round(encoded, 3),
        "wall_seconds": round(wall, 3),
        # From the start to the first codes: listing, cluster and actor start-up.
        "startup_seconds": round(run["first_output"] - started, 3) if run["first_output"] else None,
        "audio_seconds_per_second": round(encoded / wall, 2) if wall > 0 else 0.0,
    }


def write_reports(fs, root: str, summary: dict) -> None:
    """``summary.json`` and ``errors.csv`` (every failed file), for people."""
    shards.write_json(fs, shards.join(root, shards.SUMMARY_FILE), summary)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=shards.ERROR_SCHEMA.names)
    writer.writeheader()
    writer.writerows(shards.read_errors(sources.to_uri(fs, root)).to_pylist())
    shards.write_bytes_atomic(fs, shards.join(root, shards.ERRORS_CSV), text.getvalue().encode())


def check_error_share(summary: dict, limit: float) -> None:
    """Fail a finished dataset with too many bad files (a partial one is judged when done)."""
    files, failed = summary["files"], summary["files_failed"]
    finished = summary["shards_complete"] == summary["shards"]
    if finished and files and failed / files > limit:
        raise TooManyErrors(
            f"{failed} of {files} files failed ({failed / files:.0%} > data.max_error_fraction="
            f"{limit:g}); see errors.csv in the output",
            summary,
        )


def format_summary(summary: dict) -> str:
    """The end-of-run table."""
    reasons = ", ".join(f"{r}: {n}" for r, n in summary["failed_by_reason"].items())
    lines = [
        ("files read", summary["files"]),
        ("segments written", summary["segments"]),
        ("files failed", f"{summary['files_failed']}" + (f" ({reasons})" if reasons else "")),
        ("hours of audio", f"{summary['hours']:.4f}"),
        (
            "shards",
            f"{summary['shards_complete']}/{summary['shards']} complete, {summary['shards_this_run']} this run",
        ),
        ("audio s / wall s", f"{summary['audio_seconds_per_second']:.1f}"),
    ]
    redone = summary.get("shards_redone") or {}
    lines += [("shard redone", f"{name}: {why}") for name, why in sorted(redone.items())]
    return "\n".join(f"{name:<18}{value}" for name, value in lines)
