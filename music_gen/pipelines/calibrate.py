"""Codec calibration: fit a codec's codebooks by k-means on sample audio, then save it.

A codec with random weights has all-zero codebooks and encodes every sound to code 0;
``music-gen codec calibrate`` makes one that tells sounds apart (its decoder stays
random until the project trains its own codec).
"""

from __future__ import annotations

import os

from music_gen.errors import UsageError
from music_gen.pipelines import sources
from music_gen.pipelines.tokenize import codec_metadata


def calibrate(
    input: str, output: str, codec_config, max_seconds: float = 600.0, seed: int = 0
) -> dict:
    """Fit the codebooks of ``codec_config``'s codec on audio listed from ``input``; save it.

    ``output`` is checked first (a folder, or one that can be made) and written through a
    temporary folder beside it. Files are visited in a seeded random order so that the ``max_seconds`` sample spreads
    over the whole input; remote files are fetched to a temporary directory first.
    """
    import random
    import tempfile

    from music_gen import outputs
    from music_gen.models.codebooks import calibrate_from_files
    from music_gen.models.codec import build_codec as build

    outputs.check_dir(output, "--output")  # before the k-means, not after it
    records = [r for r in sources.list_sources(input) if not r["stage"]]
    if not records:
        raise UsageError(f"no usable audio files in {input}")
    random.Random(seed).shuffle(records)
    codec = build(codec_config)
    # Enough files to fill the budget even if some are short or unreadable.
    sample = records[: max(8, int(max_seconds // 2))]
    with tempfile.TemporaryDirectory() as tmp:
        paths = [fetch(r["path"], tmp, i) for i, r in enumerate(sample)]
        calibrate_from_files(paths, codec, max_seconds=max_seconds, seed=seed)
    with outputs.replace_dir(output) as staging:  # a failed save leaves no half codec
        codec.save(staging)
    return {"files": len(sample), **codec_metadata(codec, codec_config)}


def fetch(uri: str, directory: str, index: int) -> str:
    """A local path for ``uri``: itself when local, else a copy in ``directory``."""
    if "://" not in uri:
        return uri
    local = os.path.join(directory, f"{index:06d}{os.path.splitext(uri)[1]}")
    try:
        data = sources.read_bytes(uri)
    except OSError:
        return local  # missing: calibrate_from_files skips it with a warning
    with open(local, "wb") as handle:
        handle.write(data)
    return local
