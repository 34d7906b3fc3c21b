"""Where commands write: output locations checked before any work, results written atomically.

Every command that writes a file or a folder (``data synth``, ``data tokenize``,
``codec calibrate``, ``evaluate -o``, ``generate -o`` / ``--output-dir``) checks its
output first, so that a bad path costs a second, not the compute before it::

    path = check_file(args.output, "--output")      # a file: not a folder, parent writable
    folder = check_dir(args.output_dir, "--output-dir")   # a folder: not a file, writable
    ... the work ...
    write_text(path, json_text)                      # temp file beside it + os.replace

Nothing is created by the checks: a folder that does not exist yet is made when the
results are written. Writes go to a temporary name in the same folder and are renamed
into place (``os.replace``), so a failure never leaves a half-written file under the
final name, and the temporary file is removed. Local paths only (bucket URIs are
checked by the pipeline that writes them, through pyarrow's filesystem).

Pure standard library: the inner layer (``audio/``) may use it too.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from music_gen.errors import UsageError


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists."""
    for candidate in (path, *path.parents):
        if candidate.exists() or candidate.is_symlink():
            return candidate
    return Path(path.anchor or ".")


def _check_creatable(path: Path, flag: str) -> None:
    """The folders up to ``path`` exist or can be made, and the deepest one is writable."""
    existing = _nearest_existing(path.parent if path.parent != path else path)
    if not existing.is_dir():
        raise UsageError(f"cannot write {flag} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"cannot write {flag} {path}: folder {existing} is not writable")


def check_file(path: str | os.PathLike[str], flag: str = "--output") -> Path:
    """Raise ``UsageError`` unless a file can be written (or replaced) at ``path``."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a folder; give a file path")
    if path.exists() and not os.access(path, os.W_OK):
        raise UsageError(f"cannot write {flag} {path}: the file is not writable")
    _check_creatable(path, flag)
    return path


def check_dir(path: str | os.PathLike[str], flag: str = "--output") -> Path:
    """Raise ``UsageError`` unless ``path`` is a writable folder or one that can be made."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UsageError(f"{flag} {path} is a file, not a folder; give a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"cannot write {flag} {path}: folder is not writable")
        return path
    _check_creatable(path, flag)
    return path


def temp_name(path: Path) -> Path:
    """A hidden temporary name beside ``path`` (same folder: ``os.replace`` stays a rename)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_name(path)
    try:
        with open(temp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def replace_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary folder beside ``path`` to fill; moved into place when the block ends.

    When ``path`` does not exist (or is empty) the temporary folder is renamed to it;
    otherwise each file written is moved in with ``os.replace`` and whatever else the
    folder holds is kept. On failure the temporary folder is removed and ``path`` is
    left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_name(path)
    temp.mkdir()
    try:
        yield temp
        if path.is_dir() and any(path.iterdir()):
            for item in sorted(temp.rglob("*")):
                target = path / item.relative_to(temp)
                if item.is_dir():
                    target.mkdir(exist_ok=True)
                else:
                    os.replace(item, target)
        else:
            if path.is_dir():
                path.rmdir()
            os.replace(temp, path)
    finally:
        if temp.exists():
            shutil.rmtree(temp, ignore_errors=True)
