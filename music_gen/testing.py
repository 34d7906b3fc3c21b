"""Tiny models and datasets for tests and benchmarks: built in code, nothing downloaded.

- ``tiny_model_config`` / ``tiny_codec_config`` / ``tiny_musicgen``: our model at toy size;
- ``transformers_musicgen``: a random transformers ``MusicgenForConditionalGeneration``
  (saved with its tokenizer when given a directory), sized by config overrides;
- ``synth_codes`` / ``synth_chroma`` / ``write_dataset`` / ``make_synth_dataset``: a tokenized dataset of
  one shard written straight with the shard helpers (much faster than the Ray Data
  pipeline on two cores, and the same format);
- ``sine``: a test tone; ``random_melody`` / ``render_notes``: known notes and their audio
  (for transcription tests and benchmarks).

Heavy imports (torch, transformers) happen inside the functions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from music_gen.config import CodecConfig, ModelConfig, TextEncoderConfig


def tiny_model_config(**overrides) -> ModelConfig:
    fields = {
        "preset": "debug",
        "dim": 32,
        "num_layers": 2,
        "num_heads": 2,
        "num_codebooks": 4,
        "cardinality": 64,
        "max_frames": 64,
        "text": TextEncoderConfig(dim=16, num_layers=1, num_heads=2),
        **overrides,
    }
    return ModelConfig(**fields)


def tiny_codec_config(**overrides) -> CodecConfig:
    return CodecConfig(**{"num_codebooks": 4, "cardinality": 64, **overrides})


def tiny_musicgen(seed: int = 0, **model_overrides):
    import torch

    from music_gen import MusicGen
    from music_gen.models.codec import build_codec

    torch.manual_seed(seed)
    return MusicGen.from_config(
        tiny_model_config(**model_overrides), build_codec(tiny_codec_config())
    )


def sine(freq: float, seconds: float, rate: int, channels: int = 1):
    import torch

    t = torch.arange(int(seconds * rate)) / rate
    wave = 0.5 * torch.sin(2 * math.pi * freq * t)
    return wave.expand(channels, -1).clone()  # [C, S]


# Partials (harmonic number, amplitude) of the tones ``render_notes`` plays.
TIMBRES = {
    "sine": ((1, 1.0),),
    "organ": tuple((k, 1.0 / k) for k in range(1, 7)),
    "clarinet": tuple((k, 1.0 / k) for k in range(1, 12, 2)),  # odd harmonics only
    "bright": tuple((k, k**-0.5) for k in range(1, 13)),
}


def random_melody(seed: int = 0, count: int = 8, low: int = 40, high: int = 84):
    """``count`` known notes (``music_gen.audio.midi.Note``), one at a time, from 0.1 s.

    Lengths 0.15-0.45 s, gaps 0-0.1 s; about one note in five repeats the last pitch
    (with no gap when the draw says so: a re-attack that only an onset reveals).
    """
    import numpy as np

    from music_gen.audio.midi import Note

    rng = np.random.default_rng(seed)
    notes, start, pitch = [], 0.1, int(rng.integers(low, high + 1))
    for i in range(count):
        if i and rng.random() > 0.2:
            pitch = int(rng.integers(low, high + 1))
        length = float(rng.uniform(0.15, 0.45))
        notes.append(Note(round(start, 3), round(start + length, 3), pitch, 100))
        start += length + float(rng.choice([0.0, rng.uniform(0.02, 0.1)]))
    return notes


def render_notes(notes, rate: int, timbre: str = "organ", tail: float = 0.2):
    """Audio ``[1, S]`` of ``notes``: additive tones, 5 ms attack and release, a gentle decay."""
    import numpy as np
    import torch

    from music_gen.pipelines.synth import midi_hz

    end = max((n.offset for n in notes), default=0.0) + tail
    out = np.zeros(int(end * rate))
    for note in notes:
        first, last = int(note.onset * rate), int(note.offset * rate)
        t = np.arange(last - first) / rate
        freq = midi_hz(note.pitch)
        tone = sum(
            amp * np.sin(2 * math.pi * freq * k * t)
            for k, amp in TIMBRES[timbre]
            if freq * k < 0.45 * rate
        )
        ramp = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.005)  # attack and release
        out[first:last] += tone * ramp * np.exp(-t / 1.5) * note.velocity / 127
    peak = float(np.abs(out).max()) or 1.0
    return torch.from_numpy(0.5 * out / peak).float().unsqueeze(0)  # [1, S]


# -- transformers MusicGen ----------------------------------------------------------------

TEXT = {"vocab_size": 384, "d_model": 16, "d_kv": 8, "d_ff": 32, "num_layers": 1, "num_heads": 2}
"""T5 text encoder fields (``T5Config``) of the default tiny model."""
CODEC = {
    "sampling_rate": 16000, "audio_channels": 1, "num_filters": 4, "hidden_size": 16,
    "upsampling_ratios": [8, 5, 4, 2], "codebook_size": 64, "codebook_dim": 16,
    "target_bandwidths": [1.2], "num_lstm_layers": 1,
}  # fmt: skip
"""EnCodec fields (``EncodecConfig``): 16 kHz, hop 320 -> 50 Hz, 4 codebooks of 64 at 1.2 kbps."""
DECODER = {
    "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
    "ffn_dim": 64, "num_codebooks": 4, "max_position_embeddings": 128,
}  # fmt: skip
"""Decoder fields (``MusicgenDecoderConfig``); pad and start tokens are ``vocab_size``."""


def transformers_musicgen(
    directory: str | Path | None = None,
    *,
    text: dict | None = None,
    codec: dict | None = None,
    decoder: dict | None = None,
    seed: int = 0,
):
    """A random transformers MusicGen: ``TEXT``, ``CODEC``, ``DECODER`` updated with the
    given fields; saved with a ByT5 tokenizer to ``directory`` when given (the
    ``save_pretrained`` layout ``MusicGen.from_pretrained`` imports).
    Returns ``(model in eval mode, tokenizer)``."""
    import torch
    from transformers import (
        ByT5Tokenizer,
        EncodecConfig,
        MusicgenConfig,
        MusicgenDecoderConfig,
        MusicgenForConditionalGeneration,
        T5Config,
    )

    torch.manual_seed(seed)
    decoder_fields = {**DECODER, **(decoder or {})}
    special = decoder_fields["vocab_size"]
    config = MusicgenConfig(
        text_encoder=T5Config(**{**TEXT, **(text or {})}),
        audio_encoder=EncodecConfig(**{**CODEC, **(codec or {})}),
        decoder=MusicgenDecoderConfig(
            **{"pad_token_id": special, "bos_token_id": special, **decoder_fields}
        ),
    )
    model = MusicgenForConditionalGeneration(config).eval()
    tokenizer = ByT5Tokenizer()
    if directory is not None:
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    return model, tokenizer


# -- tokenized datasets -------------------------------------------------------------------


def synth_audio(sample_rate: int, num_clips: int, seconds: float, seed: int = 0, classes=None):
    """Audio ``[N, 1, S]`` and sidecar metadata of synth clips ``0 .. num_clips - 1``
    (classes cycle; ``classes`` picks a subset)."""
    import numpy as np
    import torch

    from music_gen.pipelines import synth

    extra = {"classes": classes} if classes else {}
    clips = [
        synth.make_clip(i, seconds, seed=seed, sample_rate=sample_rate, **extra)
        for i in range(num_clips)
    ]
    return torch.from_numpy(np.stack([a for a, _ in clips])), [meta for _, meta in clips]


def synth_codes(codec, num_clips: int, seconds: float, seed: int = 0, classes=None):
    """Codes ``[K, T]`` and sidecar metadata of synth clips ``0 .. num_clips - 1`` encoded
    by ``codec`` (classes cycle; ``classes`` picks a subset)."""
    import torch

    audio, metas = synth_audio(codec.sample_rate, num_clips, seconds, seed, classes)
    codes = torch.cat([codec.encode(batch) for batch in audio.split(8)])  # [N, K, T]
    return list(codes.numpy()), metas


def synth_chroma(codec, num_clips: int, seconds: float, seed: int = 0, classes=None):
    """Pitch classes ``uint8 [T]`` per code frame of the clips ``synth_codes`` encodes, as
    ``data tokenize`` stores them."""
    from music_gen.models.melody import pitch_classes

    audio, _ = synth_audio(codec.sample_rate, num_clips, seconds, seed, classes)
    frames = codec.encode(audio[:1]).shape[-1]
    return [
        pitch_classes(clip, codec.sample_rate, codec.hop_length, frames).numpy() for clip in audio
    ]


def write_dataset(
    root, codes: list, metas: list[dict], codec, save_codec: bool = True, chroma=None
) -> str:
    """A tokenized dataset at ``root``: one shard of rows (codes ``[K, T]`` with their sidecar
    metadata, and ``chroma`` pitch classes ``[T]`` when given: else the shard has no
    chroma column), ``dataset.json``, the shard's progress marker and, with ``save_codec``,
    the codec in ``<root>/codec`` as a tokenized dataset keeps it."""
    from music_gen.pipelines import shards, sources
    from music_gen.pipelines.tokenize import codec_metadata

    root = Path(root)
    if save_codec:
        codec.save(root / "codec")
        codec_config = CodecConfig(source=str(root / "codec"))
    else:
        codec_config = CodecConfig(num_codebooks=codec.num_codebooks, cardinality=codec.cardinality)
    meta = codec_metadata(codec, codec_config)
    rows = []
    for index, (row_codes, info) in enumerate(zip(codes, metas, strict=True)):
        name, frames = info.get("name", index), row_codes.shape[-1]
        rows.append(
            {
                "id": f"{name}-00000",
                "source": f"/data/{name}.wav",
                "segment": 0,
                "start": 0.0,
                "duration": frames / meta["frame_rate"],
                "caption": info["description"],
                "genre": info.get("genre"),
                "moods": info.get("moods"),
                "key": info.get("key"),
                "bpm": info.get("bpm"),
                "instrument": info.get("instrument"),
                "attributes": json.dumps(info, sort_keys=True),
                "codes": shards.codes_to_bytes(row_codes),
                "num_codebooks": row_codes.shape[0],
                "frames": frames,
                "chroma": None if chroma is None else shards.chroma_to_bytes(chroma[index]),
            }
        )
    fs, path = sources.resolve(str(root))
    part = shards.part_name(0)
    table = shards.shard_table(rows, meta, chroma=chroma is not None)
    shard_file = shards.join(shards.SHARDS, part + ".parquet")
    record = shards.write_table(fs, shards.join(path, shard_file), table)
    info = {"format_version": shards.FORMAT_VERSION, "codec": meta, "num_shards": 1}
    shards.write_json(fs, shards.join(path, shards.DATASET_FILE), {**info, "settings": {}})
    counts = {"files": len(rows), "files_failed": 0, "segments": len(rows), "reasons": {}}
    shards.write_marker(fs, path, part, counts, {shard_file: record})
    return str(root)


def make_synth_dataset(
    root, codec, num_clips: int = 24, seconds: float = 1.0, seed: int = 0, **options
) -> str:
    """``write_dataset`` of ``synth_codes``; ``options``: ``classes``, ``save_codec`` and
    ``chroma`` (True: with the clips' chroma column, ``synth_chroma``)."""
    classes = options.pop("classes", None)
    codes, metas = synth_codes(codec, num_clips, seconds, seed, classes)
    if options.pop("chroma", False):
        options["chroma"] = synth_chroma(codec, num_clips, seconds, seed, classes)
    return write_dataset(root, codes, metas, codec, **options)
