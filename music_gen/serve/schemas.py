"""The HTTP contract: request and response bodies, and how invalid input is reported.

Strict types (no "5" for 5, no list for a string), no NaN or infinities, unknown
fields refused: every mistake is a 422 that names its field.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

FORMATS: dict[str, str] = {
    "wav": "audio/wav",
    "flac": "audio/flac",
    "mp3": "audio/mpeg",
    "ogg": "audio/ogg",
}
"""Audio format -> its Content-Type."""

Format = Literal["wav", "flac", "mp3", "ogg"]
MAX_SEED = 2**31 - 1
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]*(@[A-Za-z0-9_.\-]+|/\d+)$"


class GenerateRequest(BaseModel):
    """Body of ``POST /generate`` and ``POST /generate/stream``. Defaults are the CLI's."""

    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, protected_namespaces=()
    )

    prompt: str = Field(min_length=1, max_length=1000, description="what the music should be")
    duration: float = Field(10.0, gt=0, description="seconds, at most the server's max_duration")
    temperature: float = Field(1.0, ge=0, le=10)
    top_k: int = Field(250, ge=0, le=1_000_000, description="1 is greedy, 0 disables")
    top_p: float = Field(0.0, ge=0, le=1, description="0 disables")
    guidance_scale: float = Field(3.0, ge=0, le=100, description="1 is no guidance")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="none: drawn, and returned")
    format: Format = "wav"
    genre: str | None = Field(None, min_length=1, max_length=100)
    mood: str | None = Field(None, min_length=1, max_length=100)
    key: str | None = Field(None, min_length=1, max_length=100)
    bpm: float | None = Field(None, gt=0, le=1000)
    instrument: str | None = Field(None, min_length=1, max_length=100)
    model: str | None = Field(
        None,
        max_length=200,
        pattern=MODEL_ID_PATTERN,
        description="a registered model of the server's allow-list: NAME@ALIAS or NAME/VERSION",
    )
    timeout_s: float | None = Field(
        None, gt=0, description="deadline in seconds (at most the server's); past it: 504"
    )
    melody: str | None = Field(
        None,
        min_length=1,
        description="melody models: an audio file (wav, flac, mp3, ogg) as base64, the tune "
        "the music follows; cut to the duration, a shorter one repeats",
    )

    @field_validator("melody")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        import base64
        import binascii

        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError(
                    "melody is not base64 (send the audio file's bytes as base64)"
                ) from None
        return value

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt is blank")
        return value


class ReplicaModel(BaseModel):
    """What one model replica serves."""

    replica: str
    pid: int
    source: str
    name: str | None = None
    version: str | None = None
    alias: str | None = None
    device: str
    multiplexed: list[str] = []
    loaded_at: float
    reloads: int = 0


class ModelsResponse(BaseModel):
    default: str | None
    allowed: list[str]
    replicas: list[ReplicaModel]


class ReloadResponse(BaseModel):
    generation: int
    replicas: list[ReplicaModel]


def field_errors(errors: Sequence[Any]) -> dict:
    """Pydantic/FastAPI errors -> ``{"error": one line, "detail": [{field, message}]}``."""
    detail = []
    for err in errors:
        loc = [str(part) for part in err.get("loc", ()) if part != "body"]
        field = ".".join(loc) or "body"
        detail.append({"field": field, "message": err.get("msg", "invalid"), "type": err["type"]})
    first = detail[0] if detail else {"field": "body", "message": "invalid"}
    return {"error": f"{first['field']}: {first['message']}", "detail": detail}
