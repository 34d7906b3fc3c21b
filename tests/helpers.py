"""Tiny models and audio made in the tests (no downloads): see ``music_gen.testing``."""

from music_gen.testing import (  # noqa: F401
    make_synth_dataset,
    sine,
    synth_codes,
    tiny_codec_config,
    tiny_model_config,
    tiny_musicgen,
    transformers_musicgen,
    write_dataset,
)
