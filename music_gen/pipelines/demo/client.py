"""The HTTP calls the demo makes: a request to the server, and whether a port answers."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

from music_gen.errors import MusicGenError


def post(url: str, body: dict, timeout: float = 600.0) -> dict:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            headers = {key.lower(): value for key, value in response.headers.items()}
            return {"status": response.status, "headers": headers, "body": response.read()}
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:200].decode(errors="replace")
        raise MusicGenError(f"the server answered {url} with HTTP {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise MusicGenError(f"cannot reach {url}: {getattr(exc, 'reason', exc)}") from None


def answers(url: str) -> bool:
    """Whether an HTTP server answers at ``url`` (Serve's proxy says 503 until it has routes)."""
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError:
        return True
    except (urllib.error.URLError, OSError):
        return False


def in_use(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0
