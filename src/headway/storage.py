"""Atomic writes: a result file is either absent or complete, never half-written; and a full
disk is one line (``no space left on ...``) instead of a traceback, before the work where the
size is known, and wherever it happens otherwise."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save

from .errors import HeadwayError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Make sure results can be written into ``folder`` (created if missing) before any work
    starts: a ``HeadwayError`` naming the folder otherwise (a read-only place, a parent that is
    a file, no space left...)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".headway-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        reason = err.strerror or str(err)
        if isinstance(err, (FileExistsError, NotADirectoryError)):
            reason = "a file is in the way (a part of the path is not a folder)"
        raise HeadwayError(f"cannot write the {what} {folder}: {reason}",
                           hint="choose another output path") from None
    return folder


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it into place.
    A full disk raises :class:`DiskFull` naming the file and its size; ``path`` is left as it
    was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if is_no_space(err):
            raise no_space(path, len(data)) from err
        raise
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are for sharing
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if is_no_space(err):
            raise no_space(path, len(data)) from err
        raise
    return path


class DiskFull(HeadwayError):
    """The disk of an output is full: one line, exit 2."""


def _megabytes(n: int) -> str:
    return f"{n / 2 ** 20:,.0f} MB" if n >= 2 ** 20 else f"{n / 2 ** 20:.2f} MB"


def free_bytes(path: str | Path) -> int:
    """Free bytes on the disk that holds ``path`` (or its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def is_no_space(err: BaseException | None) -> bool:
    """True for a full disk: ``ENOSPC`` (or ``EDQUOT``), also as the cause of another error, and
    torch's writer failing on a full disk (``unexpected pos``, ``failed writing``)."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        text = str(err)
        if isinstance(err, RuntimeError) and ("unexpected pos" in text
                                              or "failed writing" in text
                                              or "No space left" in text):
            return True
        err, seen = err.__cause__ or err.__context__, seen + 1
    return False


def no_space(where: str | Path, needed: int | None = None, doing: str = "writing"):
    """The one-line error of a full disk while ``doing`` ``where``."""
    need = f", {_megabytes(needed)} needed" if needed else ""
    return DiskFull(
        f"no space left on the disk of {where} while {doing} it{need} "
        f"({_megabytes(free_bytes(where))} free); finished work is kept",
        hint="free some space (or choose an output on another disk) and run the same command "
             "again: it resumes")


def check_free_space(folder: str | Path, needed: int, what: str) -> None:
    """Refuse, before the work, to start what needs ``needed`` bytes in ``folder`` when the
    disk has fewer free."""
    free = free_bytes(folder)
    if free < needed:
        raise DiskFull(
            f"no space left on the disk of {folder}: {what} needs about {_megabytes(needed)}, "
            f"{_megabytes(free)} free", hint="free some space or choose another output folder")


def atomic_write_json(path: str | Path, obj) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def atomic_save_tensors(path: str | Path, tensors: dict[str, torch.Tensor],
                        metadata: dict[str, str] | None = None) -> Path:
    """Write tensors as a safetensors file atomically (see :func:`atomic_write_bytes`)."""
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()},
                 metadata=metadata)
    return atomic_write_bytes(path, data)


def safetensors_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a complete safetensors file, or None when it looks whole.

    Cheap: reads only the header (8-byte little-endian length, then that many bytes of JSON) and
    checks that the data offsets it records end exactly at the end of the file.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"only {size} bytes, too short for a header"
            n = int.from_bytes(head, "little")
            if n > size - 8:
                return f"its header claims {n} bytes but the file has {size}"
            header = json.loads(f.read(n))
    except OSError as err:
        return f"cannot read it: {err.strerror or err}"
    except ValueError:  # also UnicodeDecodeError
        return "its header is not valid JSON"
    try:
        end = max((int(t["data_offsets"][1]) for name, t in header.items()
                   if name != "__metadata__"), default=0)
    except (AttributeError, TypeError, KeyError, IndexError, ValueError):
        return "its header records no valid data offsets"
    if 8 + n + end != size:
        return f"{size} bytes, but its header describes {8 + n + end}"
    return None
