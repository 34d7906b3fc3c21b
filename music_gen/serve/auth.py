"""Optional API keys: from an environment variable and/or a file, checked in constant time.

Keys are never logged or echoed; errors about the key file name the file only.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from music_gen.errors import ConfigError


def load_api_keys(env_var: str | None, key_file: str | None) -> list[str]:
    """Comma-separated keys of ``$env_var`` plus one key per line of ``key_file``."""
    keys = []
    if env_var:
        keys += [key.strip() for key in os.environ.get(env_var, "").split(",")]
    if key_file:
        path = Path(key_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise ConfigError(f"cannot read the API key file {path}: {exc.strerror}") from None
        keys += [line.strip() for line in lines if not line.lstrip().startswith("#")]
    return [key for key in keys if key]


def authorized(header: str | None, keys: list[str]) -> bool:
    """Whether ``Authorization: Bearer KEY`` holds one of ``keys`` (all pass when none set).

    Every key is compared (``hmac.compare_digest``), so the time taken does not say
    which key or how much of one matched.
    """
    if not keys:
        return True
    scheme, _, token = (header or "").partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False
    given = token.strip().encode()
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(given, key.encode())
    return matched
