"""Audio I/O and transforms: files and bytes to float tensors ``[C, S]`` and back.

Pure PyTorch and soundfile; this layer never imports Ray or MLflow.
"""

from music_gen.audio.io import (
    MP3_SAMPLE_RATES,
    READ_FORMATS,
    SUBTYPES,
    WRITE_FORMATS,
    AudioInfo,
    audio_info,
    encode_audio,
    read_audio,
    write_audio,
)
from music_gen.audio.transforms import (
    is_silent,
    loudness_normalize,
    peak_normalize,
    resample,
    to_channels,
)

__all__ = [
    "MP3_SAMPLE_RATES",
    "READ_FORMATS",
    "SUBTYPES",
    "WRITE_FORMATS",
    "AudioInfo",
    "audio_info",
    "encode_audio",
    "is_silent",
    "loudness_normalize",
    "peak_normalize",
    "read_audio",
    "resample",
    "to_channels",
    "write_audio",
]
