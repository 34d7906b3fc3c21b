"""List the audio a user wants tokenized, from a directory or a manifest.

Two kinds of input, local or on any filesystem pyarrow opens (``s3://``, ``gs://``,
``hdfs://``), so that the same command works on a laptop and a cluster:

- a directory tree of audio files (``.wav .flac .mp3 .ogg`` and friends), each with an
  optional sidecar ``song.json`` beside ``song.wav`` holding MusicGen's fields:
  ``description``, ``genre``, ``moods``, ``key``, ``bpm``, ``instrument``;
- a manifest: JSONL (one object per line) or CSV with a header, a path and a caption
  per row (``path``/``audio``/``file`` and ``caption``/``description``/``text``);
  any other columns are attributes. Relative paths are relative to the manifest.

Each input becomes one record (a plain dict, see ``make_record``). Broken inputs
(a bad manifest line, a missing path, a sidecar that is not JSON, a duplicate) become
records with ``stage`` and ``reason`` set so that the pipeline reports them instead
of dropping them. Manifests are UTF-8 (a byte-order mark is allowed): a row holding
bytes that are not UTF-8 (a caption saved as Latin-1) is skipped with reason
``not UTF-8`` in the errors table, naming its line, rather than kept with U+FFFD
replacement characters: a mangled caption would teach the model the wrong words. Captions fall back to the attributes, then to the file name.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import posixpath
from urllib.parse import unquote

import pyarrow.fs as pafs

from music_gen.errors import UsageError

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".aif", ".aiff")
MANIFEST_EXTENSIONS = (".jsonl", ".csv")
PATH_KEYS = ("path", "audio", "file", "filepath", "audio_path")
CAPTION_KEYS = ("caption", "description", "text", "prompt")
BUCKET_SCHEMES = ("s3", "gs", "gcs")


# --- filesystems ---------------------------------------------------------------------


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or a URI (``s3://bucket/dir``)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    scheme, rest = uri.split("://", 1)
    try:
        if scheme in BUCKET_SCHEMES:
            # One filesystem per bucket and process: creating one resolves credentials
            # and region, which would otherwise happen once per file.
            bucket = rest.split("/", 1)[0]
            return _bucket_filesystem(f"{scheme}://{bucket}"), rest.rstrip("/")
        return pafs.FileSystem.from_uri(uri)
    except Exception as exc:  # pyarrow raises several kinds for a bad URI
        raise UsageError(f"cannot open {uri}: {exc}") from None


@functools.lru_cache(maxsize=16)
def _bucket_filesystem(bucket_uri: str) -> pafs.FileSystem:
    return pafs.FileSystem.from_uri(bucket_uri)[0]


def to_uri(fs: pafs.FileSystem, path: str) -> str:
    """The string a worker needs to reopen ``path``: local paths stay plain paths."""
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    return f"{fs.type_name}://{path}"


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_file(path) as handle:
        return handle.read()


# --- records ---------------------------------------------------------------------------


def source_id(path: str) -> str:
    """A stable short id of a source path: the same file gets the same segment ids."""
    return hashlib.sha1(path.encode()).hexdigest()[:16]


def make_record(
    path: str,
    caption: str = "",
    attributes: dict | None = None,
    stage: str = "",
    reason: str = "",
    detail: str = "",
) -> dict:
    """One input: ``path``, ``caption``, ``attributes`` (JSON text) and, when broken, why."""
    return {
        "path": path,
        "source_id": source_id(path),
        "caption": caption,
        "attributes": json.dumps(attributes or {}, sort_keys=True),
        "stage": stage,
        "reason": reason,
        "detail": detail[:500],
    }


def normalize_attributes(raw: dict) -> dict:
    """MusicGen's attribute fields with fixed types; other fields are kept as they are.

    Raises ``ValueError`` on a value that cannot be read (e.g. ``bpm: "fast"``).
    """
    attrs = {k: v for k, v in raw.items() if k not in PATH_KEYS + CAPTION_KEYS and v != ""}
    moods = attrs.pop("moods", None) or attrs.pop("mood", None)
    if isinstance(moods, str):
        moods = [m.strip() for m in moods.replace(";", ",").split(",") if m.strip()]
    if moods is not None and not (
        isinstance(moods, list) and all(isinstance(m, str) for m in moods)
    ):
        raise ValueError(f"moods must be a list of strings, got {moods!r}")
    if moods:
        attrs["moods"] = moods
    if attrs.get("bpm") is not None:
        bpm = float(attrs["bpm"])
        if not 0 < bpm < 1000:
            raise ValueError(f"bpm out of range: {bpm}")
        attrs["bpm"] = bpm
    for name in ("genre", "key", "instrument"):
        if attrs.get(name) is not None and not isinstance(attrs[name], str):
            attrs[name] = str(attrs[name])
    return attrs


def fallback_caption(path: str, attrs: dict) -> str:
    """A caption for a file that has none: its attributes, else its name."""
    parts = [attrs.get("genre"), *(attrs.get("moods") or []), attrs.get("instrument")]
    if attrs.get("key"):
        parts.append(f"in {attrs['key']}")
    if attrs.get("bpm"):
        parts.append(f"{attrs['bpm']:g} bpm")
    words = [p for p in parts if p]
    if words:
        return ", ".join(words)
    stem = posixpath.splitext(posixpath.basename(path))[0]
    return stem.replace("_", " ").replace("-", " ").strip() or stem


def _record_from_fields(path: str, caption: object, raw: dict, stage: str = "manifest") -> dict:
    """A record from a manifest row or sidecar (``stage`` names which, for errors)."""
    try:
        attrs = normalize_attributes(raw)
    except (TypeError, ValueError) as exc:
        return make_record(path, stage=stage, reason="bad attributes", detail=str(exc))
    if caption is not None and not isinstance(caption, str):
        return make_record(path, stage=stage, reason="bad caption", detail=repr(caption))
    caption = (caption or "").strip() or fallback_caption(path, attrs)
    return make_record(path, caption, attrs)


# --- directories -------------------------------------------------------------------------


def list_directory(fs: pafs.FileSystem, root: str) -> list[dict]:
    """Records of every audio file under ``root`` (sorted by path), with sidecar metadata."""
    infos = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    files = {info.path for info in infos if info.type == pafs.FileType.File}
    audio = [p for p in sorted(files) if posixpath.splitext(p)[1].lower() in AUDIO_EXTENSIONS]
    return [
        _file_record(fs, path, posixpath.splitext(path)[0] + ".json" in files) for path in audio
    ]


def _file_record(fs: pafs.FileSystem, path: str, has_sidecar: bool) -> dict:
    uri = to_uri(fs, path)
    if not has_sidecar:
        return make_record(uri, fallback_caption(path, {}), {})
    try:
        with fs.open_input_file(posixpath.splitext(path)[0] + ".json") as handle:
            raw = json.loads(handle.read())
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError) as exc:
        return make_record(uri, stage="sidecar", reason="bad sidecar", detail=str(exc))
    return _record_from_fields(uri, _first(raw, CAPTION_KEYS), raw, stage="sidecar")


# --- manifests ------------------------------------------------------------------------------


def _first(row: dict, keys: tuple[str, ...]) -> object:
    return next((row[k] for k in keys if row.get(k) not in (None, "")), None)


def _manifest_rows(fs: pafs.FileSystem, path: str) -> list[tuple[int, dict | None, str]]:
    """``(line number, row or None, why not)`` for each data row of a JSONL/CSV manifest."""
    with fs.open_input_file(path) as handle:
        # Bytes that are not UTF-8 become lone surrogates, found per row below.
        text = handle.read().decode("utf-8-sig", errors="surrogateescape")
    rows = []
    if path.lower().endswith(".csv"):
        for number, row in enumerate(csv.DictReader(io.StringIO(text)), start=2):
            if None in row:  # more cells than header columns
                rows.append((number, None, "too many cells"))
            else:
                rows.append((number, {k: v for k, v in row.items() if v is not None}, ""))
        return rows
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            rows.append((number, None, f"not JSON: {exc}"))
            continue
        rows.append((number, row, "") if isinstance(row, dict) else (number, None, "not an object"))
    return rows


def _not_utf8(row: dict) -> str:
    """The fields of a manifest row that held bytes that are not UTF-8 ('' when none)."""
    bad = [
        str(key).encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        for key, value in row.items()
        if any(_has_surrogates(part) for part in (key, value))
    ]
    return ", ".join(bad)


def _has_surrogates(value: object) -> bool:
    if isinstance(value, list):
        return any(_has_surrogates(v) for v in value)
    return isinstance(value, str) and any("\udc80" <= ch <= "\udcff" for ch in value)


def _readable(value: object) -> str:
    """``value`` as text, bytes that are not UTF-8 shown as U+FFFD (for error details)."""
    return str(value).encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _resolve_audio(fs: pafs.FileSystem, base: str, audio: str) -> str:
    """A manifest's audio path as a URI or absolute path (relative to the manifest)."""
    if audio.startswith("file://"):  # the same file must get the same id either way
        audio = unquote(audio[len("file://") :])
    if "://" not in audio:
        audio = to_uri(fs, posixpath.normpath(posixpath.join(base, audio)))
    return audio


def list_manifest(fs: pafs.FileSystem, path: str) -> list[dict]:
    """Records of the rows of a manifest, in manifest order; broken rows become error records
    (a row with bytes that are not UTF-8 too: skipped, not kept with replacement characters)."""
    base = posixpath.dirname(path)
    records, seen = [], set()
    for number, row, why in _manifest_rows(fs, path):
        where = f"{to_uri(fs, path)}:{number}"
        if row is None:
            records.append(make_record(where, stage="manifest", reason="bad row", detail=why))
            continue
        fields = _not_utf8(row)
        audio = _first(row, PATH_KEYS)
        if fields:  # listed under the audio file it skips (the manifest line if unnamed)
            detail = f"{_readable(where)}: {fields} not UTF-8; save the manifest as UTF-8"
            named = isinstance(audio, str) and not _has_surrogates(audio)
            skipped = _resolve_audio(fs, base, audio) if named else _readable(where)
            records.append(
                make_record(skipped, stage="manifest", reason="not UTF-8", detail=detail)
            )
            continue
        if not isinstance(audio, str):
            records.append(make_record(where, stage="manifest", reason="no path", detail=str(row)))
            continue
        audio = _resolve_audio(fs, base, audio)
        if audio in seen:
            records.append(make_record(where, stage="manifest", reason="duplicate", detail=audio))
            continue
        seen.add(audio)
        records.append(_record_from_fields(audio, _first(row, CAPTION_KEYS), row))
    return records


def list_sources(uri: str) -> list[dict]:
    """Records for a directory, a ``.jsonl``/``.csv`` manifest, or a single audio file."""
    fs, path = resolve(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        return list_directory(fs, path)
    if info.type != pafs.FileType.File:
        raise UsageError(f"input not found: {uri}")
    ext = posixpath.splitext(path)[1].lower()
    if ext in MANIFEST_EXTENSIONS:
        return list_manifest(fs, path)
    if ext in AUDIO_EXTENSIONS:
        sidecar = fs.get_file_info(posixpath.splitext(path)[0] + ".json")
        return [_file_record(fs, path, sidecar.type == pafs.FileType.File)]
    raise UsageError(
        f"input {uri} is neither a directory, a manifest ({', '.join(MANIFEST_EXTENSIONS)}) "
        "nor an audio file"
    )
