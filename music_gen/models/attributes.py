"""The attribute conditions: one list of names, and how a data row or request carries them.

Configs (``model.attributes``), the conditioner's tables, training and evaluation batches
and HTTP requests all use the names in ``ATTRIBUTES``. Shard rows and sidecar files keep
moods as a list under ``moods`` (a clip can have several; the first one names it), so
``SHARD_COLUMNS`` says where each attribute lives in a row, and ``row_attributes`` is the
one translation from a row to what the conditioner takes.

No torch here: ``config.py`` imports it, and the command line must start fast.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from typing import Any, Literal, get_args

AttributeName = Literal["genre", "mood", "key", "bpm", "instrument"]
ATTRIBUTES: tuple[str, ...] = get_args(AttributeName)
SHARD_COLUMNS: dict[str, str] = {
    "genre": "genre",
    "mood": "moods",
    "key": "key",
    "bpm": "bpm",
    "instrument": "instrument",
}
"""Attribute name -> the column (or sidecar field) of a data row that holds it."""

BUCKETS = 256
BPM_RANGE = (40.0, 240.0)


def _plain(value: Any) -> Any:
    """A cell as plain Python: numpy scalars and arrays unwrapped, NaN and empties missing."""
    if value is None:
        return None
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, float) and math.isnan(value):
        return None
    if value == "" or value == [] or value == ():
        return None
    return value


def row_attributes(row: Mapping[str, Any]) -> dict[str, Any]:
    """A data row (shard row, sidecar, batch row) -> ``{attribute: value}`` for every
    attribute in ``ATTRIBUTES`` (``None`` where the row has none)."""
    return {name: _plain(row.get(column)) for name, column in SHARD_COLUMNS.items()}


def attribute_bucket(name: str, value: Any) -> int:
    """Map one attribute value to a bucket in ``[0, BUCKETS)``; 0 is "missing".

    Strings are hashed (crc32, stable across processes) so that no vocabulary file is
    needed; tempo is bucketed by BPM; of several moods the first one names the row.
    """
    value = _plain(value)
    if value is None:
        return 0
    if name == "bpm":
        lo, hi = BPM_RANGE
        bpm = min(max(float(value), lo), hi)
        return 1 + int((bpm - lo) / (hi - lo) * (BUCKETS - 2))
    if isinstance(value, list | tuple):
        value = value[0]
    text = str(value).strip().lower()
    return 1 + zlib.crc32(text.encode()) % (BUCKETS - 1)
