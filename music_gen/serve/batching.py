"""Generation for the server, without Ray: a batch of requests in, one result per request out.

``generate_batch(model, requests)`` is the one call a replica makes for a batch. The
generation engine (continuous batching) can take its place later with the same
signature, and nothing above it (schemas, HTTP) changes.

Each row keeps its own prompt, attributes, temperature, top-k, top-p, guidance scale,
seed and length: the rows of a batch decode together in the slot engine, each to its
own length, and a row's seed gives it the audio it gives alone (see ``generate_batch``
for the ``generate_codes`` fallback).

``stream_chunks`` yields the audio of one request while it is generated: the codes
grow a chunk at a time (each chunk continues the codes so far) and every window is
decoded with a few frames of context on both sides, whose audio is dropped, so that
the decoder sees nearly the context of one long decode and the joins are clean.
"""

from __future__ import annotations

import secrets
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import torch

from music_gen.errors import MusicGenError

SEED_RANGE = 2**31  # seeds drawn for requests that give none, so that any clip can be remade
PCM16_MAX = 32767


@dataclass
class Result:
    """One request's answer: audio ``[C, S]`` at ``sample_rate``, or the error it caused."""

    audio: torch.Tensor | None
    sample_rate: int
    seed: int
    generation_s: float
    batch_size: int  # rows generated together with this one (itself included)
    error: str | None = None
    group: int = 0  # which generate_codes call of the batch made it


def sampling_args(request: dict) -> dict:
    """The per-row settings of a request, with the seed it will use (drawn if none)."""
    seed = request.get("seed")
    return {
        "prompt": request["prompt"],
        "duration": float(request["duration"]),
        "temperature": float(request["temperature"]),
        "top_k": int(request["top_k"]),
        "top_p": float(request["top_p"]),
        "guidance_scale": float(request["guidance_scale"]),
        "seed": secrets.randbelow(SEED_RANGE) if seed is None else int(seed),
        "attributes": request_attributes(request),
    }


def request_attributes(request: dict) -> dict:
    from music_gen.models.attributes import ATTRIBUTES

    return {name: request.get(name) for name in ATTRIBUTES if request.get(name) is not None}


def melody_audio(model, request: dict, max_seconds: float) -> torch.Tensor | None:
    """A request's melody upload (base64 audio file) as ``[C, S]`` at the model's rate."""
    import base64

    from music_gen.audio import read_audio
    from music_gen.errors import AudioError, UsageError

    if request.get("melody") is None:
        return None
    if not model.has_melody:
        raise UsageError("melody: this model has no melody conditioner (a MusicGen-Melody model)")
    try:
        audio, _ = read_audio(base64.b64decode(request["melody"]), sample_rate=model.sample_rate)
    except AudioError as exc:
        raise AudioError(f"melody: {exc}") from None
    seconds = audio.shape[-1] / model.sample_rate
    if seconds > max_seconds:
        raise UsageError(f"melody: at most {max_seconds:g} s here, got {seconds:.1f} s")
    return audio


def generate_batch(
    model, requests: list[dict], mixed_durations: bool = True, max_melody_seconds: float = 60.0
) -> list[Result]:
    """Generate every request; each row's seed gives the audio it gives alone.

    Rows run together in the slot engine (``models/engine.py``): each row keeps its own
    length and delay pattern, so a row in a batch gets exactly the codes it gets alone.
    Models the engine does not drive (melody prefix conditioning) and rows longer than
    the model's context go through ``generate_codes``, which takes one duration per
    call: rows of any length share a call (generated to the longest and cut) unless
    ``mixed_durations`` is False. There the delay pattern lets the last K - 1 frames of
    the higher codebooks see later frames of the lower ones, so a row cut from a longer
    batch can differ from a run alone in those tail frames; ``mixed_durations=False``
    groups by length and keeps seeds exact.

    A ``MusicGenError`` of a call (one bad row) reruns its rows one by one, so that the
    other rows are still answered and only the bad one reports the error.
    """
    rows = [sampling_args(request) for request in requests]
    results: list[Result | None] = [None] * len(rows)
    for index, (row, request) in enumerate(zip(rows, requests, strict=True)):
        try:
            row["melody"] = melody_audio(model, request, max_melody_seconds)
        except MusicGenError as exc:
            results[index] = _failed(model, row, exc)
    todo = [i for i, result in enumerate(results) if result is None]
    if todo and _engine_fits(model, [rows[i] for i in todo]):
        for index, result in zip(
            todo, _generate_group(model, [rows[i] for i in todo], _engine_rows), strict=True
        ):
            results[index] = result
        return cast(list[Result], results)
    groups: dict[tuple, list[int]] = {}
    for index in todo:
        row = rows[index]
        key: tuple = (row["melody"] is not None,)  # a call takes a melody for all rows or none
        key += () if mixed_durations else (row["duration"],)
        groups.setdefault(key, []).append(index)
    for number, indices in enumerate(groups.values()):
        group = _generate_group(model, [rows[i] for i in indices], _generate_rows)
        for index, result in zip(indices, group, strict=True):
            result.group = number
            results[index] = result
    assert all(result is not None for result in results)  # every row was answered
    return cast(list[Result], results)


def _engine_fits(model, rows: list[dict]) -> bool:
    if not model.lm.cfg.cross_attention or any(row.get("melody") is not None for row in rows):
        return False
    try:
        return all(model.frames_for(row["duration"]) <= model.max_frames for row in rows)
    except MusicGenError:
        return False  # a bad duration: the fallback reports it on its row


def _generate_group(model, rows: list[dict], generate) -> list[Result]:
    try:
        return generate(model, rows)
    except MusicGenError as exc:
        if len(rows) == 1:
            return [_failed(model, rows[0], exc)]
    results = []
    for row in rows:
        try:
            results.extend(generate(model, [row]))
        except MusicGenError as exc:
            results.append(_failed(model, row, exc))
    return results


def _engine_rows(model, rows: list[dict]) -> list[Result]:
    from music_gen.models.engine import Engine, Request

    start = time.perf_counter()
    requests = [
        Request(
            row["prompt"],
            frames=model.frames_for(row["duration"]),
            temperature=row["temperature"],
            top_k=row["top_k"],
            top_p=row["top_p"],
            guidance_scale=row["guidance_scale"],
            seed=row["seed"],
            attributes=row["attributes"],
        )
        for row in rows
    ]
    codes = Engine(model, slots=len(rows)).run(requests)  # each [K, T_row]
    results = []
    for row, row_codes in zip(rows, codes, strict=True):
        audio = model.decode(row_codes[None])[0]  # [C, S]
        seconds = time.perf_counter() - start
        results.append(Result(audio.cpu(), model.sample_rate, row["seed"], seconds, len(rows)))
    return results


def _failed(model, row: dict, exc: MusicGenError) -> Result:
    return Result(None, model.sample_rate, row["seed"], 0.0, 1, error=str(exc))


def _generate_rows(model, rows: list[dict]) -> list[Result]:
    start = time.perf_counter()
    frames = [model.frames_for(row["duration"]) for row in rows]
    longest = max(rows, key=lambda row: row["duration"])["duration"]
    codes = model.generate_codes(
        [row["prompt"] for row in rows],
        duration=longest,
        temperature=[row["temperature"] for row in rows],
        top_k=[row["top_k"] for row in rows],
        top_p=[row["top_p"] for row in rows],
        guidance_scale=[row["guidance_scale"] for row in rows],
        seed=[row["seed"] for row in rows],
        attributes=[row["attributes"] for row in rows],
        **_melody_args(model, rows),
    )  # [B, K, T_max]
    results = []
    for index, row in enumerate(rows):
        # Each row is decoded from its own frames only: the same audio as a run alone.
        audio = model.decode(codes[index : index + 1, :, : frames[index]])[0]  # [C, S]
        seconds = time.perf_counter() - start
        results.append(Result(audio.cpu(), model.sample_rate, row["seed"], seconds, len(rows)))
    return results


def _melody_args(model, rows: list[dict]) -> dict:
    melodies = [row.get("melody") for row in rows]
    if all(melody is None for melody in melodies):
        return {}
    return {"melody": melodies, "melody_sample_rate": model.sample_rate}


def stream_chunks(
    model, request: dict, chunk_seconds: float, overlap_frames: int
) -> Iterator[tuple[torch.Tensor, int]]:
    """Audio ``[C, S]`` chunks of one request as they are generated, and the seed used.

    Step ``i`` generates ``chunk_seconds`` more codes (continuing the codes so far,
    seeded with ``seed + i``). The decoder looks both ways, so the newest
    ``overlap_frames`` wait for the next step, and each window is decoded with
    ``overlap_frames`` of context on both sides whose audio is dropped.
    """
    row = sampling_args(request)
    total = model.frames_for(row["duration"])
    step = max(1, round(chunk_seconds * model.frame_rate))
    codes = None  # [1, K, T] so far
    emitted = 0  # frames whose audio has been sent
    index = 0
    while emitted < total:
        done = 0 if codes is None else codes.shape[-1]
        target = min(total, done + step)
        codes = model.generate_codes(
            [row["prompt"]],
            duration=target / model.frame_rate,
            temperature=row["temperature"],
            top_k=row["top_k"],
            top_p=row["top_p"],
            guidance_scale=row["guidance_scale"],
            seed=[row["seed"] + index],
            attributes=[row["attributes"]],
            prompt_codes=codes,
        )[..., :target]  # [1, K, target]
        index += 1
        end = target if target == total else target - overlap_frames
        if end > emitted:
            yield decode_frames(model, codes, emitted, end, overlap_frames), row["seed"]
            emitted = end


def decode_frames(
    model, codes: torch.Tensor, start: int, end: int, overlap_frames: int
) -> torch.Tensor:
    """Audio ``[C, S]`` of frames ``start:end`` of ``codes [1, K, T]``, decoded with up to
    ``overlap_frames`` of context on each side (their audio is dropped)."""
    begin = max(0, start - overlap_frames)
    stop = min(codes.shape[-1], end + overlap_frames)
    hop = model.codec.hop_length
    audio = model.decode(codes[..., begin:stop])[0]  # [C, (stop - begin) * hop]
    return audio[:, (start - begin) * hop : (end - begin) * hop].cpu()


def wav_stream_header(sample_rate: int, channels: int) -> bytes:
    """A 16-bit PCM WAV header for a stream of unknown length (sizes 0xFFFFFFFF).

    Readers (libsndfile, browsers) take the samples up to the end of the stream.
    """
    unknown = 0xFFFFFFFF
    block = channels * 2
    return (
        b"RIFF"
        + struct.pack("<I", unknown)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, sample_rate, sample_rate * block, block, 16)
        + b"data"
        + struct.pack("<I", unknown)
    )


def pcm16(audio: torch.Tensor) -> bytes:
    """Audio ``[C, S]`` in [-1, 1] -> interleaved little-endian 16-bit samples."""
    clipped = torch.nan_to_num(audio.float(), nan=0.0).clamp(-1.0, 1.0)
    samples = (clipped.T * PCM16_MAX).round().to(torch.int16)  # [S, C]
    return samples.contiguous().numpy().astype("<i2").tobytes()
