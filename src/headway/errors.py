"""The one error type a user can cause and fix.

Every ``HeadwayError`` ends a command with one line, ``headway: error: <message>``, an optional
``hint: ...`` line, and exit status 2. Anything else is a bug in headway (or the environment)
and shows its traceback. The per-layer errors (``TaskError``, ``ModelError``, ...) subclass it;
they also subclass ``ValueError`` for callers that catch that.
"""

from __future__ import annotations


class HeadwayError(Exception):
    """A bad input or setting, described in one line; ``hint`` says what to do about it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


class ModelError(HeadwayError, ValueError):
    """A model could not be loaded or is not supported."""
