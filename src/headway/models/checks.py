"""What ``load_model`` checks before and after asking transformers, so that a bad model name
or a damaged model folder ends in one clear ``ModelError`` instead of a traceback or a hub
lookup: a name that can only be a path, truncated safetensors weights, load failures.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

from ..errors import ModelError
from ..storage import safetensors_problem
from .builtin import BUILTIN_MODELS

HUB_ID = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*")


def looks_like_hub_id(name: str) -> bool:
    """True for ``name`` or ``owner/name`` spelled as the hub allows ([A-Za-z0-9._-], no
    leading or trailing '.' or '-', no '..' or '--')."""
    return (bool(HUB_ID.fullmatch(name)) and ".." not in name and "--" not in name
            and not name.endswith((".", "-")))


def check_hub_id(name: str) -> None:
    """Raise ModelError for a name that is not an existing folder (the caller checked) and
    cannot be a hub id either, so that it is never looked up on the hub."""
    if looks_like_hub_id(name):
        return
    aliases = ", ".join(BUILTIN_MODELS)
    if name.startswith((".", "/", "~")) or "/" in name or os.sep in name:
        raise ModelError(f"no such model folder {name}",
                         hint=f"give a folder that holds config.json and the weights, a "
                              f"built-in alias ({aliases}) or a hub id (owner/name)")
    raise ModelError(f"no such model folder or built-in alias {name!r} (built-in aliases: "
                     f"{aliases})", hint="a model folder holds config.json and the weights; "
                                         "a hub id is name or owner/name")


def check_weight_files(folder: Path) -> None:
    """Raise ModelError naming the first safetensors weight file of ``folder`` that is
    truncated or corrupt (reads only the file headers)."""
    names = {"model.safetensors"}
    with contextlib.suppress(OSError, ValueError, KeyError, AttributeError, TypeError):
        index = json.loads((folder / "model.safetensors.index.json").read_text())
        names |= set(index["weight_map"].values())  # a broken index: transformers says so
    for name in sorted(names):
        file = folder / name
        if file.is_file() and (problem := safetensors_problem(file)):
            raise ModelError(f"{file}: not a readable safetensors file (truncated or corrupt): "
                             f"{problem}", hint="copy or save the model into this folder again "
                                                "(e.g. model.save_pretrained(folder))")


def first_line(err: BaseException) -> str:
    """The first non-blank line of an exception's message, without its trailing period."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return (lines[0] if lines else type(err).__name__).rstrip(".")


def load_error(name: str, path, local: bool, err: BaseException) -> ModelError:
    """The one-line ModelError for a failed ``from_pretrained`` of a folder or a hub id."""
    if local:
        return ModelError(f"{path}: could not load the model folder: {first_line(err)}",
                          hint="check that config.json, the tokenizer files and the weights are "
                               "complete (a folder written by save_pretrained)")
    from huggingface_hub import constants

    offline = " (offline mode is on: HF_HUB_OFFLINE=1)" if constants.HF_HUB_OFFLINE else ""
    either = f"; there is no local folder {name} either" if "/" in name else ""
    return ModelError(f"could not load model {name!r}{offline}: {first_line(err)}",
                      hint=f"use a built-in alias ({', '.join(BUILTIN_MODELS)}), a local model "
                           f"folder, or a hub id (needs network access or a cached copy){either}")
