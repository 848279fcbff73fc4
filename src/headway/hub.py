"""The Hugging Face hub, asked once: is it there, and are the caches writable.

Without a network, the hub libraries retry for most of a minute before they give up. Before
the first hub lookup of a process (a model or dataset id that is not a local path),
:func:`reachable_or_offline` tries a TCP connection to the endpoint with a short timeout;
when nothing answers it turns on the hub's offline mode for the rest of the process (what
``HF_HUB_OFFLINE=1`` does: cached models and datasets still load) and says so in one line.
``HF_HUB_OFFLINE`` set by the user is honoured as it is.
"""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse

from .errors import HeadwayError

TIMEOUT_S = 3.0
_checked: dict[str, bool] = {}


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def _answers(url: str, timeout: float = TIMEOUT_S) -> bool:
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def set_offline() -> None:
    """Turn on offline mode in huggingface_hub, transformers and datasets for this process."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    try:
        import datasets.config

        datasets.config.HF_HUB_OFFLINE = True
        datasets.config.HF_DATASETS_OFFLINE = True
    except ImportError:  # pragma: no cover - datasets is a dependency
        pass


def reachable_or_offline() -> bool:
    """True when the hub can be asked; otherwise offline mode is on (set by the user, or now,
    because the endpoint did not answer within :data:`TIMEOUT_S` seconds)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = _endpoint()
    if url not in _checked:
        _checked[url] = _answers(url)
        if not _checked[url]:
            set_offline()
            print(f"headway: note: {url} did not answer within {TIMEOUT_S:.0f} s: working "
                  f"offline (models and datasets already in the Hugging Face cache still load)",
                  file=sys.stderr)
    return _checked[url]


def cache_problem(err: BaseException | None) -> HeadwayError | None:
    """The one-line error for a Hugging Face cache that cannot be written (a permission
    error anywhere in ``err``'s chain), naming the cache and the variable that moves it."""
    seen = 0
    while err is not None and seen < 8:
        if isinstance(err, PermissionError):
            from huggingface_hub import constants

            where = err.filename or constants.HF_HOME
            return HeadwayError(f"cannot write the Hugging Face cache ({where}): permission "
                                f"denied", hint="set HF_HOME (or HF_DATASETS_CACHE / HF_HUB_CACHE)"
                                                " to a folder you can write")
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def cached_snapshot(repo_id: str, revision: str | None = None):
    """The local folder of a hub model already in the Hugging Face cache (its weights and
    configs), found without a network; None when it is not there."""
    from pathlib import Path

    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, revision=revision, local_files_only=True,
                                      allow_patterns=["*.safetensors", "*.json"]))
    except Exception:  # not cached, not a hub id, a revision not in the cache
        return None
