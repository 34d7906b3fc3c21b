"""The model deployment: replicas that load models, batch requests and generate.

A replica loads its default model in ``reconfigure(user_config)``: a redeploy with a new
``user_config`` or a reload (``POST /admin/reload``, ``serve.follow_alias_s``) loads the
new model beside the old one and swaps it in; requests already running keep the model
they started with, so none of them fails during the swap. Models named by a request
(``model``: ``NAME@ALIAS`` or ``NAME/VERSION``) come through Ray Serve's multiplexing.

Generation runs in a worker thread so the replica's event loop keeps accepting requests
(they queue into the next batch) and answering health checks meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from typing import cast

from ray import serve

from music_gen.config import ServeConfig
from music_gen.errors import MusicGenError
from music_gen.serve import batching
from music_gen.serve.board import get_board
from music_gen.serve.metrics import replica_metrics

logger = logging.getLogger("ray.serve")

_ALIAS = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)$")
_VERSION = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+|latest)$")
# Multiplexing's LRU bound is fixed where its decorator is written; the config's is set
# on Serve's wrapper object (stored under this attribute) once it exists.
_MULTIPLEX_ATTR = "__serve_multiplex_wrapper"
_DECORATOR_MAX_MODELS = 4


def describe_source(source: str) -> dict:
    """What ``source`` names: ``load`` (the exact version to load), name, version, alias.

    An alias is resolved here, once, so that the version reported is the one loaded.
    """
    if match := _ALIAS.match(source) or _VERSION.match(source):
        from music_gen.platform.registry import resolve

        exact, _, _ = resolve(source)
        name, _, version = exact[len("models:/") :].partition("/")
        alias = match.groupdict().get("alias")
        return {"source": source, "load": exact, "name": name, "version": version, "alias": alias}
    return {"source": source, "load": source, "name": None, "version": None, "alias": None}


def model_key(info: dict) -> str:
    """How responses name a model: ``NAME/VERSION`` for registered ones, else the source."""
    return f"{info['name']}/{info['version']}" if info["name"] else info["source"]


def load_model(source: str, device: str, dtype: str):
    """``(MusicGen, info)`` for ``source`` on ``device`` in ``dtype``: ``auto`` is bf16 on
    a GPU and fp32 on a CPU. A CPU replica stays fp32 even with native bf16, unlike
    ``generate``: the server batches unrelated requests, and in bf16 a seeded row batched
    with longer prompts may draw other codes than alone (``tests/unit/test_dtype.py``)."""
    import torch

    from music_gen import MusicGen
    from music_gen.models.generator import pick_dtype

    info = describe_source(source)
    model = MusicGen.from_pretrained(info["load"])
    cpu_auto = dtype == "auto" and not device.startswith("cuda")
    model.to(device, dtype=torch.float32 if cpu_auto else pick_dtype(dtype, device))
    return model, {**info, "key": model_key(info), "device": device, "loaded_at": time.time()}


@serve.deployment(name="Generator")
class Generator:
    def __init__(self, settings: dict):
        import torch

        self.cfg = ServeConfig(**settings)
        self.device = "cuda" if self.cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        self.model = None
        self.info: dict | None = None
        self.source: str | None = None
        self.generation = 0  # the board's reload generation this replica has done
        self.reloads = 0
        self.waiting = 0
        self.batches = 0
        self.context = serve.get_replica_context()
        self.replica = self.context.replica_id.unique_id
        self.board = get_board(self.context.app_name)
        self._loop_task: asyncio.Task | None = None
        self._lock = asyncio.Lock()
        self.generate_batched.set_max_batch_size(self.cfg.max_batch_size)
        self.generate_batched.set_batch_wait_timeout_s(self.cfg.batch_wait_timeout_s)

    # -- loading -----------------------------------------------------------------------

    async def reconfigure(self, user_config: dict) -> None:
        source = user_config.get("model")
        if not source:
            raise MusicGenError("serve.model is not set: no model to load")
        await self._load(source)
        # A fresh load is as new as any reload asked for so far.
        self.generation = max(self.generation, await self._report())
        if self._loop_task is None:
            self._loop_task = asyncio.get_running_loop().create_task(self._heartbeats())

    async def _load(self, source: str) -> None:
        async with self._lock:  # one load at a time; requests go on with the old model
            model, info = await asyncio.to_thread(load_model, source, self.device, self.cfg.dtype)
            if self.model is not None:
                self.reloads += 1
            self.model, self.info, self.source = model, info, source
            logger.info("serving %s on %s", info["key"], self.device)

    @serve.multiplexed(max_num_models_per_replica=_DECORATOR_MAX_MODELS)
    async def named_model(self, model_id: str):
        """A model a request names (``NAME@ALIAS``/``NAME/VERSION``), loaded on demand."""
        return await asyncio.to_thread(
            load_model, f"models:/{model_id}", self.device, self.cfg.dtype
        )

    def _multiplexed_ids(self) -> list[str]:
        wrapper = getattr(self, _MULTIPLEX_ATTR, None)
        if wrapper is None:
            return []
        wrapper.max_num_models_per_replica = self.cfg.max_models_per_replica
        return sorted(wrapper.models)

    async def _drop_multiplexed(self) -> None:
        """Unload the models requests named, so that the next one loads their current
        version (``NAME@ALIAS`` resolves again); requests running keep theirs."""
        wrapper = getattr(self, _MULTIPLEX_ATTR, None)
        if wrapper is not None:
            await wrapper.shutdown()

    # -- heartbeats: report to the board, reload when asked or when the alias moved --------

    def state(self) -> dict:
        info = self.info or {}
        return {
            "replica": self.replica,
            "pid": os.getpid(),
            "source": self.source or "",
            "name": info.get("name"),
            "version": info.get("version"),
            "alias": info.get("alias"),
            "device": self.device,
            "multiplexed": self._multiplexed_ids(),
            "loaded_at": info.get("loaded_at", 0.0),
            "reloads": self.reloads,
            "generation": self.generation,
        }

    async def _report(self) -> int:
        return await self.board.report.remote(self.state())

    async def _heartbeats(self) -> None:
        last_poll = time.monotonic()
        while True:
            await asyncio.sleep(self.cfg.heartbeat_s)
            try:
                wanted = await self._report()
                follow = self.cfg.follow_alias_s
                if self.source is None:
                    continue
                if wanted > self.generation:
                    await self._drop_multiplexed()
                    await self._load(self.source)
                    self.generation = wanted
                    await self._report()
                elif follow and time.monotonic() - last_poll >= follow:
                    last_poll = time.monotonic()
                    await self._follow_alias()
            except Exception:  # a registry or board hiccup must not end the heartbeats
                logger.exception("heartbeat failed; trying again")

    async def _follow_alias(self) -> None:
        if self.source is None or self.info is None or self.info["alias"] is None:
            return
        current = await asyncio.to_thread(describe_source, self.source)
        if current["version"] != self.info["version"]:
            logger.info("alias %s moved to version %s", self.source, current["version"])
            await self._load(self.source)

    # -- generation ----------------------------------------------------------------------

    async def _model_for_request(self):
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            return await self.named_model(model_id)
        return self.model, self.info

    async def generate(self, request: dict) -> dict:
        """One request -> ``{"status", "body" | "error", "headers"}`` (audio file bytes)."""
        try:
            model, info = await self._model_for_request()
        except MusicGenError as exc:
            return {"status": 404, "error": str(exc)}
        self.waiting += 1  # until its batch starts
        replica_metrics()["queue"].set(self.waiting)
        return await self.generate_batched((model, info, request))

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def generate_batched(self, items: list[tuple]) -> list[dict]:
        self.waiting = max(0, self.waiting - len(items))  # the batch has started
        replica_metrics()["queue"].set(self.waiting)
        self.batches += 1
        batch_id = f"{self.replica}-{self.batches}"
        replica_metrics()["batch_size"].observe(len(items))
        answers: list[dict | None] = [None] * len(items)
        now = time.time()
        groups: dict[str, list[int]] = {}
        for index, (_, info, request) in enumerate(items):
            if request.get("deadline") and now > request["deadline"]:
                answers[index] = {"status": 504, "error": "deadline passed before generation"}
            else:
                groups.setdefault(info["key"], []).append(index)
        for number, indices in enumerate(groups.values()):
            model, info, _ = items[indices[0]]
            requests = [items[i][2] for i in indices]
            results = await asyncio.to_thread(
                _generate_and_encode,
                model,
                info,
                requests,
                self.cfg.batch_mixed_durations,
                self.cfg.max_melody_seconds,
            )
            for i, result in zip(indices, results, strict=True):
                if "headers" in result:  # one id per generate_codes call of this batch
                    group = result["headers"]["X-Batch-Id"]
                    result["headers"]["X-Batch-Id"] = f"{batch_id}-{number}.{group}"
                answers[i] = result
        assert all(answer is not None for answer in answers)  # every item was answered
        return cast(list[dict], answers)

    async def stream(self, request: dict):
        """Chunks of one request: a header dict first, then PCM16 bytes as they are made."""
        try:
            model, info = await self._model_for_request()
        except MusicGenError as exc:
            yield {"status": 404, "error": str(exc)}
            return
        chunks = batching.stream_chunks(
            model, request, self.cfg.stream_chunk_seconds, self.cfg.stream_overlap_frames
        )
        first = True
        while True:
            try:
                item = await asyncio.to_thread(next, chunks, None)
            except MusicGenError as exc:
                if first:
                    yield {"status": 422, "error": str(exc)}
                return
            if item is None:
                return
            audio, seed = item
            if first:
                first = False
                yield {
                    "status": 200,
                    "sample_rate": model.sample_rate,
                    "channels": audio.shape[0],
                    "headers": {"X-Model-Version": info["key"], "X-Seed": str(seed)},
                }
            replica_metrics()["audio_seconds"].inc(
                audio.shape[-1] / model.sample_rate, tags={"model": info["key"]}
            )
            yield batching.pcm16(audio)

    async def describe(self) -> dict:
        return self.state()


def _generate_and_encode(
    model, info: dict, requests: list[dict], mixed: bool, max_melody_seconds: float
) -> list[dict]:
    """``generate_batch`` then each row encoded in its format, with its headers."""
    from music_gen.audio import encode_audio

    metrics = replica_metrics()
    answers = []
    for request, result in zip(
        requests, batching.generate_batch(model, requests, mixed, max_melody_seconds), strict=True
    ):
        if result.error is not None:
            answers.append({"status": 422, "error": result.error})
            continue
        assert result.audio is not None  # no error: there is audio
        try:
            body = encode_audio(result.audio, result.sample_rate, request["format"])
        except MusicGenError as exc:
            answers.append({"status": 422, "error": str(exc)})
            continue
        seconds = result.audio.shape[-1] / result.sample_rate
        metrics["audio_seconds"].inc(seconds, tags={"model": info["key"]})
        metrics["rtf"].observe(result.generation_s / seconds)
        answers.append(
            {
                "status": 200,
                "body": body,
                "format": request["format"],
                "headers": {
                    "X-Model-Version": info["key"],
                    "X-Seed": str(result.seed),
                    "X-Generation-Seconds": f"{result.generation_s:.3f}",
                    "X-Batch-Size": str(result.batch_size),
                    "X-Batch-Id": str(result.group),  # the replica's batch id is put before it
                },
            }
        )
    return answers
