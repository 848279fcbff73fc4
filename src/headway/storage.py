"""Atomic writes: a result file is either absent or complete, never half-written."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Make sure results can be written into ``folder`` (created if missing) before any work
    starts: a ``HeadwayError`` naming the folder otherwise (a read-only place, a parent that is
    a file, no space left...)."""
    from .errors import HeadwayError

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
    """Write ``data`` to a temporary file beside ``path``, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are for sharing
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


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
