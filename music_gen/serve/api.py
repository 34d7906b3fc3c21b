"""The HTTP ingress (FastAPI inside a Ray Serve deployment): checks, then forwards.

Everything a user can get wrong is answered here with a 4xx before any model work:
body size (413), JSON and fields (422 naming the field), API key (401), a model not on
the allow-list (404). Overload and deadlines come back as 503 (with ``Retry-After``)
and 504. The model replicas only ever see valid requests.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations at runtime.
import asyncio
import json
import time

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from ray.exceptions import RayActorError
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from music_gen.config import ServeConfig
from music_gen.serve import page
from music_gen.serve.auth import authorized, load_api_keys
from music_gen.serve.batching import wav_stream_header
from music_gen.serve.board import get_board
from music_gen.serve.metrics import ingress_metrics
from music_gen.serve.schemas import (
    FORMATS,
    GenerateRequest,
    ModelsResponse,
    ReloadResponse,
    field_errors,
)

EXPOSED_HEADERS = [
    "X-Model-Version",
    "X-Seed",
    "X-Generation-Seconds",
    "X-Batch-Size",
    "X-Batch-Id",
    "Retry-After",
]
RELOAD_WAIT_S = 300.0


class HTTPError(Exception):
    """An answer other than 200, raised anywhere in a route."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


class Guard:
    """ASGI middleware: CORS and the body size limit, set up from the replica's config.

    Serve builds the FastAPI app at import time, before the config is known, so the
    settings arrive later through ``Guard.configure``.
    """

    limit = ServeConfig().max_body_bytes
    origins: list[str] = []

    def __init__(self, app):
        self.app = app
        self.cors = None

    @classmethod
    def configure(cls, cfg: ServeConfig) -> None:
        cls.limit, cls.origins = cfg.max_body_bytes, list(cfg.cors_origins)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.origins and self.cors is None:
            self.cors = CORSMiddleware(
                self.app,
                allow_origins=self.origins,
                allow_methods=["GET", "POST", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type"],
                expose_headers=EXPOSED_HEADERS,
            )
        inner = self.cors or self.app
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _too_large(send, self.limit)
        received = 0
        started = False

        async def counted_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyTooLarge
            return message

        async def tracked_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await inner(scope, counted_receive, tracked_send)
        except _BodyTooLarge:
            if not started:
                await _too_large(send, self.limit)


class _BodyTooLarge(Exception):
    pass


async def _too_large(send, limit: int) -> None:
    body = json.dumps({"error": f"request body over {limit} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [(b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


app = FastAPI(
    title="music-gen",
    description="Text to music. POST /generate returns an audio file; /generate/stream a WAV "
    "stream while it is generated.",
    version="1",
)
app.add_middleware(Guard)


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError):
    errors = exc.errors()
    if any(err["type"] == "json_invalid" for err in errors):
        return _count(request, JSONResponse({"error": "body: malformed JSON"}, status_code=400))
    return _count(request, JSONResponse(field_errors(errors), status_code=422))


@app.exception_handler(HTTPError)
async def _http_error(request: Request, exc: HTTPError):
    response = JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)
    return _count(request, response)


@app.exception_handler(StarletteHTTPException)
async def _starlette_error(request: Request, exc: StarletteHTTPException):
    return _count(request, JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code))


def _count(request: Request, response: Response) -> Response:
    route = request.url.path
    ingress_metrics()["requests"].inc(tags={"route": route, "status": str(response.status_code)})
    started = getattr(request.state, "started", None)
    if started is not None:
        ingress_metrics()["latency"].observe(time.perf_counter() - started, tags={"route": route})
    return response


async def _start_clock(request: Request) -> None:
    request.state.started = time.perf_counter()


def _require_key(request: Request) -> None:
    keys = request.app.state.api_keys
    if not authorized(request.headers.get("authorization"), keys):
        raise HTTPError(401, "missing or wrong API key", {"WWW-Authenticate": "Bearer"})


@serve.deployment(name="Api")
@serve.ingress(app)
class Api:
    def __init__(self, generator: DeploymentHandle, settings: dict):
        self.cfg = ServeConfig(**settings)
        Guard.configure(self.cfg)
        app.state.api_keys = load_api_keys(self.cfg.api_keys_env, self.cfg.api_keys_file)
        self.generator = generator
        self.board = get_board(serve.get_replica_context().app_name)
        self.allowed = set(self.cfg.models)

    # -- open routes -----------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(self) -> HTMLResponse:
        return HTMLResponse(page.HTML)

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/models", response_model=ModelsResponse)
    async def models(self) -> dict:
        replicas = await self.board.live.remote(3 * self.cfg.heartbeat_s + 5)
        return {"default": self.cfg.model, "allowed": self.cfg.models, "replicas": replicas}

    # -- generation --------------------------------------------------------------------------

    @app.post(
        "/generate",
        dependencies=[Depends(_start_clock), Depends(_require_key)],
        responses={200: {"content": {t: {} for t in FORMATS.values()}}},
        response_class=Response,
    )
    async def generate(self, body: GenerateRequest, request: Request) -> Response:
        payload, handle, timeout = self._prepare(body)
        call = handle.generate.remote(payload)
        result = await self._within(call, timeout, call.cancel)
        if result["status"] != 200:
            raise HTTPError(result["status"], result["error"])
        media = FORMATS[result["format"]]
        return _count(
            request, Response(result["body"], media_type=media, headers=result["headers"])
        )

    @app.post(
        "/generate/stream",
        dependencies=[Depends(_start_clock), Depends(_require_key)],
        responses={200: {"content": {"audio/wav": {}}}},
        response_class=StreamingResponse,
    )
    async def generate_stream(self, body: GenerateRequest, request: Request) -> Response:
        if body.format != "wav":
            raise HTTPError(422, "format: the stream is sent as wav")
        if body.melody is not None:
            raise HTTPError(422, "melody: not on /generate/stream yet (use /generate)")
        payload, handle, timeout = self._prepare(body)
        chunks = handle.options(stream=True).stream.remote(payload)
        head = await self._within(chunks.__anext__(), timeout, chunks.cancel)
        if head["status"] != 200:
            raise HTTPError(head["status"], head["error"])

        async def audio():
            yield wav_stream_header(head["sample_rate"], head["channels"])
            async for pcm in chunks:
                yield pcm

        response = StreamingResponse(audio(), media_type="audio/wav", headers=head["headers"])
        return _count(request, response)

    # -- admin -------------------------------------------------------------------------------

    @app.post("/admin/reload", response_model=ReloadResponse, dependencies=[Depends(_require_key)])
    async def reload(self) -> dict:
        """Every replica reloads its model (an alias is resolved again) and reports back."""
        generation = await self.board.reload.remote()
        deadline = time.monotonic() + RELOAD_WAIT_S
        while time.monotonic() < deadline:
            replicas = await self.board.live.remote(3 * self.cfg.heartbeat_s + 5)
            if replicas and all(r["generation"] >= generation for r in replicas):
                return {"generation": generation, "replicas": replicas}
            await asyncio.sleep(0.2)
        raise HTTPError(504, f"replicas did not reload within {RELOAD_WAIT_S:g} s")

    # -- helpers -----------------------------------------------------------------------------

    def _prepare(self, body: GenerateRequest):
        if "duration" not in body.model_fields_set:  # the default, but never above the limit
            body.duration = min(body.duration, self.cfg.max_duration)
        if body.duration > self.cfg.max_duration:
            raise HTTPError(
                422, f"duration: at most {self.cfg.max_duration:g} s here, got {body.duration:g}"
            )
        handle = self.generator
        if body.model is not None:
            if body.model not in self.allowed:
                raise HTTPError(404, f"model '{body.model}' is not served here")
            handle = handle.options(multiplexed_model_id=body.model)
        timeout = min(body.timeout_s or self.cfg.request_timeout_s, self.cfg.request_timeout_s)
        payload = body.model_dump()
        payload["deadline"] = time.time() + timeout
        return payload, handle, timeout

    async def _within(self, awaitable, timeout: float, cancel):
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except TimeoutError:
            cancel()
            raise HTTPError(504, f"no answer within the deadline of {timeout:g} s") from None
        except RayActorError:  # the replica died under the request; Serve starts another
            raise HTTPError(
                503, "model replica lost; try again", {"Retry-After": str(self.cfg.retry_after_s)}
            ) from None
        except BackPressureError:
            raise HTTPError(
                503,
                "server busy: too many queued requests",
                {"Retry-After": str(self.cfg.retry_after_s)},
            ) from None
