"""The request schema and the API key checks (no Ray)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from music_gen.errors import ConfigError
from music_gen.serve.auth import authorized, load_api_keys
from music_gen.serve.schemas import GenerateRequest, field_errors

pytestmark = pytest.mark.unit


def errors_of(text: str) -> dict:
    with pytest.raises(ValidationError) as info:
        GenerateRequest.model_validate_json(text)
    return field_errors(info.value.errors())


def test_defaults_are_the_clis():
    request = GenerateRequest(prompt="jazz")
    assert (request.duration, request.temperature, request.top_k) == (10.0, 1.0, 250)
    assert (request.top_p, request.guidance_scale, request.format) == (0.0, 3.0, "wav")
    assert request.seed is None and request.model is None


@pytest.mark.parametrize(
    "body,field",
    [
        ({"prompt": "x", "duration": float("nan")}, "duration"),
        ({"prompt": "x", "guidance_scale": float("inf")}, "guidance_scale"),
        ({"prompt": "x", "top_k": "5"}, "top_k"),
        ({"prompt": "x", "top_k": True}, "top_k"),
        ({"prompt": ["x"]}, "prompt"),
        ({"prompt": "x" * 1001}, "prompt"),
        ({"prompt": "\n\t "}, "prompt"),
        ({"prompt": "x", "format": "WAV"}, "format"),
        ({"prompt": "x", "seed": -1}, "seed"),
        ({"prompt": "x", "seed": 2**31}, "seed"),
        ({"prompt": "x", "temperature": -0.1}, "temperature"),
        ({"prompt": "x", "model": "a/b/c"}, "model"),
        ({"prompt": "x", "model": "name"}, "model"),
        ({"prompt": "x", "extra": 1}, "extra"),
    ],
)
def test_bad_fields_are_named(body, field):
    # Python's json writes NaN/Infinity literals, as a careless client would.
    report = errors_of(json.dumps(body))
    assert report["detail"][0]["field"] == field
    assert report["error"].startswith(f"{field}: ")


def test_good_model_ids_and_attributes():
    request = GenerateRequest.model_validate_json(
        '{"prompt": "x", "model": "lofi-v2@production", "bpm": 120, "genre": "jazz"}'
    )
    assert request.model == "lofi-v2@production" and request.bpm == 120.0
    assert GenerateRequest(prompt="x", model="lofi/3").model == "lofi/3"


def test_api_keys_from_env_and_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KEYS_FOR_TEST", " a1 , ,b2")
    path = tmp_path / "keys"
    path.write_text("# comment\nc3\n\n")
    assert load_api_keys("KEYS_FOR_TEST", str(path)) == ["a1", "b2", "c3"]
    monkeypatch.delenv("KEYS_FOR_TEST")
    assert load_api_keys("KEYS_FOR_TEST", None) == []
    with pytest.raises(ConfigError, match="cannot read the API key file"):
        load_api_keys(None, str(tmp_path / "missing"))


def test_authorized_needs_bearer_and_a_known_key():
    assert authorized(None, [])  # no keys configured: open
    assert authorized("Bearer b2", ["a1", "b2"])
    assert authorized("bearer a1", ["a1"])
    assert not authorized(None, ["a1"])
    assert not authorized("a1", ["a1"])
    assert not authorized("Bearer a", ["a1"])
    assert not authorized("Basic a1", ["a1"])
    assert not authorized("Bearer ", ["a1"])
