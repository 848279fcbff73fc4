"""One owner per output: an exclusive OS file lock held for as long as a command writes a run
folder (or a pattern's files), released by the kernel when the process ends however it ends,
so a killed run never leaves a stale lock.

The lock is the file ``.NAME.headway-lock`` beside the folder (inside it where the parent
cannot be written), removed when the lock is released (a killed process leaves it behind,
unlocked and harmless); it records who holds it (PID, host, start time, command) so that a
second process gets one line naming the holder. Under a launcher (torchrun, accelerate) the
processes of one launch share the lock: the main process takes it and every process learns
the outcome, so all of them stop together.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from .distributed import broadcast_from_main, rank_world
from .errors import HeadwayError
from .storage import check_writable

_HELD: dict[str, int] = {}  # lock path -> depth, so that one process may nest its own locks


class FolderBusy(HeadwayError):
    """Another process owns the output."""


def lock_path(target: str | Path) -> Path:
    """Where the lock of ``target`` (a folder, or a file stem) lives."""
    target = Path(target).absolute()
    beside = target.parent / f".{target.name}.headway-lock"
    if os.access(target.parent, os.W_OK) or not target.is_dir():
        return beside
    return target / ".headway-lock"


def _holder(path: Path) -> str:
    """Who holds the lock at ``path``, as its file records it."""
    for _ in range(5):  # the holder may be writing its record right now
        try:
            record = json.loads(path.read_text())
            return (f"PID {record['pid']} on {record['host']} (since {record['started']}: "
                    f"{record['command']})")
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    return "another process"


def _acquire(path: Path, what: str):
    """The open lock file, locked; FolderBusy when another process holds it. A file its
    previous holder removed while this process was opening it is opened again."""
    check_writable(path.parent)  # one line for an output under a file or a read-only place
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise FolderBusy(f"{what} is in use by {_holder(path)}",
                             hint="wait for it to finish (or stop it), or choose another "
                                  "output") from None
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()  # locked a file that was removed as it was released: try again
    handle.seek(0)
    handle.truncate()
    handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                             "command": " ".join(["headway", *sys.argv[1:]])[:300]}))
    handle.flush()
    return handle


@contextlib.contextmanager
def owning(target: str | Path, what: str | None = None) -> Iterator[None]:
    """Hold the exclusive lock of ``target`` (a run folder, or a file stem) for the block.

    Raises :class:`FolderBusy` (one line naming the holder) when another process holds it.
    Nested calls for the same target in one process share the lock. Under several processes
    every process must call it: the main one locks, all learn whether it could."""
    path = lock_path(target)
    key = str(path)
    what = what or f"{target}"
    rank, world = rank_world()
    handle, error = None, None
    if key in _HELD:
        _HELD[key] += 1
    elif rank == 0:
        try:
            handle = _acquire(path, what)
            _HELD[key] = 1
        except FolderBusy as err:
            error = err
    if world > 1:
        shared = broadcast_from_main(str(error) if error else None)
        if shared is not None and error is None:
            error = FolderBusy(shared)
    if error is not None:
        raise error
    try:
        yield
    finally:
        if key in _HELD:
            _HELD[key] -= 1
            if _HELD[key] == 0:
                del _HELD[key]
                if handle is not None:
                    Path(path).unlink(missing_ok=True)  # while still locked, then release
                    handle.close()
