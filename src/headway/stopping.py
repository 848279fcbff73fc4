"""Stopping on request: SIGTERM (what Slurm, Kubernetes and most schedulers send before
SIGKILL) is handled like Ctrl-C: the command stops, keeps what it finished and says so in one
line, exit status 143.

Long training stops gracefully: while a run trains (:func:`graceful`), the first SIGTERM only
asks it to stop, and the Trainer saves a checkpoint at the end of the current step and ends
(:class:`StopOnRequest`); a second SIGTERM stops at once.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

_state = {"graceful": 0, "requested": False}


class Terminated(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM)."""


def _on_sigterm(signum, frame) -> None:
    if _state["graceful"] and not _state["requested"]:
        _state["requested"] = True  # the training loop stops after this step, saved
        return
    raise Terminated()


@contextlib.contextmanager
def handling_sigterm() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` (or asks a graceful block to
    stop); the previous handler is put back after."""
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _state["requested"] = False


@contextlib.contextmanager
def graceful() -> Iterator[None]:
    """Within the block, the first SIGTERM only sets :func:`stop_requested`."""
    _state["graceful"] += 1
    try:
        yield
    finally:
        _state["graceful"] -= 1


def stop_requested() -> bool:
    """True once a SIGTERM asked a graceful block to stop."""
    return _state["requested"]
