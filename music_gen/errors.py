"""Errors a user can cause and fix.

Anything raised as a ``MusicGenError`` is printed by the CLI as one line (no
traceback) and turned into a 4xx by the HTTP server. Bugs stay ordinary
exceptions so that they keep their tracebacks.
"""


class MusicGenError(Exception):
    """A user-facing problem: bad input, missing file, wrong setting."""

    exit_code = 1


class UsageError(MusicGenError):
    """The command was called wrongly (bad flag value, unknown key, empty prompt)."""

    exit_code = 2


class ConfigError(UsageError):
    """A config file or dotted override names an unknown key or holds a wrong type."""


class AudioError(MusicGenError):
    """An audio file could not be read, decoded or written."""


class CheckpointError(MusicGenError):
    """A model or codec checkpoint is missing, corrupt or inconsistent."""
