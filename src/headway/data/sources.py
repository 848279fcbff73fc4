"""Where a task's rows come from when no generator makes them: a local file (.jsonl .json .csv
.parquet), a local dataset folder, or a Hugging Face hub dataset. Each loader returns a
``datasets.Dataset`` or raises ``TaskError`` naming the source.

:func:`check_hub_source` runs before any hub access: a mistyped built-in task name, a missing
path or a name that cannot be a hub dataset id fails at once, with a suggestion, instead of
waiting on the hub.
"""

from __future__ import annotations

import codecs
import csv
import difflib
import json
import re
from itertools import islice
from pathlib import Path
from typing import Sequence

from ..hub import cache_problem
from ..progress import quiet_hf_progress
from .rows import TaskError, _describe

FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
# bare (owner-less) names that are hub datasets; every other hub dataset is owner/name
WELL_KNOWN_HUB_DATASETS = ("gsm8k", "squad", "imdb", "glue", "super_glue", "wikitext", "ag_news")
HUB_DATASET_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")
EMPTY_HINT = ("a .jsonl file holds one JSON object per line, a .csv file a header line and one "
              "line per row, a .json file a list of objects")


def looks_like_hub_dataset(source: str) -> bool:
    """True for ``owner/name`` ([A-Za-z0-9._-], no '..') or a well-known bare hub name."""
    return source in WELL_KNOWN_HUB_DATASETS or (
        bool(HUB_DATASET_ID.fullmatch(source)) and ".." not in source
        and not source.endswith((".", "-")))


def check_hub_source(source: str, builtins: Sequence[str]) -> None:
    """Raise TaskError unless ``source`` (neither built-in nor an existing file or folder) may
    be a hub dataset id. Suggests the closest built-in task for a mistyped name."""
    if (Path(source).suffix.lower() in FILE_BUILDERS or source.startswith(("/", ".", "~"))
            or source.count("/") > 1):
        raise TaskError(f"{source}: no such file or folder")
    if looks_like_hub_dataset(source):
        return
    close = difflib.get_close_matches(source.lower(), list(builtins), n=1)
    if close and "/" not in source:
        raise TaskError(f"unknown task {source!r}", hint=f"did you mean {close[0]!r}? "
                                                         f"(`headway tasks` lists the built-in tasks)")
    raise TaskError(f"{source}: no such task, file or folder (built-in tasks: "
                    f"{', '.join(builtins)})",
                    hint="files end in .jsonl, .json, .csv or .parquet; reasoning-gym datasets "
                         "are rg:<name>; hub datasets are owner/name")


def load_file(path: Path, where: str):
    """Return the file's rows as a ``datasets.Dataset``; CSV cells are read as verbatim text."""
    import datasets

    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise TaskError(f"{where}: unsupported file type {path.suffix!r}; use one of {sorted(FILE_BUILDERS)}")
    check_utf8(path, where)
    kwargs = {}
    try:
        if builder == "csv":  # utf-8-sig: Excel starts its UTF-8 CSV files with a BOM
            with open(path, newline="", encoding="utf-8-sig") as f:
                header = next(csv.reader(f), [])
            kwargs = {"features": datasets.Features({c: datasets.Value("string") for c in header}),
                      "keep_default_na": False, "encoding": "utf-8-sig"}
        with quiet_hf_progress():
            return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as exc:
        if (cache := cache_problem(exc)) is not None:
            raise cache from exc
        if has_no_rows(path, builder):
            raise TaskError(f"{where}: no rows", hint=EMPTY_HINT) from exc
        bad = _first_bad_json_line(path) if path.suffix.lower() == ".jsonl" else ""
        raise TaskError(f"{where}: cannot read as {builder}{bad}: {_describe(exc)}") from exc


def check_utf8(path: Path, where: str) -> None:
    """Raise TaskError naming the line and byte when a text file (.jsonl .json .csv) is not
    UTF-8 (Parquet is binary and checked by its reader)."""
    if path.suffix.lower() == ".parquet":
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    line, offset = 1, 0
    try:
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                try:
                    decoder.decode(block)
                except UnicodeDecodeError as err:
                    at = offset + err.start
                    line += block[:err.start].count(b"\n")
                    raise TaskError(f"{where}: line {line} is not UTF-8 text (byte "
                                    f"0x{block[err.start]:02x} at offset {at})",
                                    hint="save the file as UTF-8 (most editors and pandas' "
                                         "to_csv / to_json do by default)") from None
                line += block.count(b"\n")
                offset += len(block)
            decoder.decode(b"", final=True)
    except OSError as err:
        raise TaskError(f"{where}: cannot read it: {err.strerror or err}") from err
    except UnicodeDecodeError:
        raise TaskError(f"{where}: ends inside a UTF-8 character (the file was cut?)") from None


def has_no_rows(path: Path, builder: str) -> bool:
    """True when a file that could not be read simply holds no rows: empty or blank, a CSV
    header alone, a JSON ``[]`` or ``{}``."""
    try:
        with open(path, "rb") as f:
            if not f.read(1 << 16).strip() and not f.read(1):
                return True
        if builder == "csv":
            with open(path, newline="", encoding="utf-8-sig") as f:
                rows = (row for row in csv.reader(f) if any(cell.strip() for cell in row))
                return len(list(islice(rows, 2))) <= 1
        if path.suffix.lower() == ".json" and path.stat().st_size < 1 << 24:
            return json.loads(path.read_text(encoding="utf-8")) in ([], {}, None)
    except (OSError, ValueError):
        pass
    return False


def _first_bad_json_line(path: Path) -> str:
    """Return ", row i (line j) is not valid JSON" for the first bad JSONL line, else ""."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = [(j, line) for j, line in enumerate(f, 1) if line.strip()]
        for row, (j, line) in enumerate(lines):
            try:
                json.loads(line)
            except json.JSONDecodeError:
                return f", row {row} (line {j}) is not valid JSON"
    except (OSError, UnicodeDecodeError):
        pass
    return ""


def load_folder(path: Path, split: str, where: str):
    """Return ``datasets.load_dataset(folder, split=split)``."""
    import datasets

    try:
        with quiet_hf_progress():
            return datasets.load_dataset(str(path), split=split)
    except Exception as exc:
        if (cache := cache_problem(exc)) is not None:
            raise cache from exc
        raise TaskError(f"{where}: cannot load the folder as a dataset: {_describe(exc)}") from exc


def load_hub(spec, builtins: Sequence[str]):
    """Return ``datasets.load_dataset(source, config, split=split)`` from the hub or its cache;
    a failure is one TaskError line that says whether offline mode is on."""
    import datasets

    try:
        return datasets.load_dataset(spec.source, spec.config, split=spec.split)
    except Exception as exc:
        raise cache_problem(exc) or _hub_error(spec, builtins, exc) from exc


def offline_flags() -> list[str]:
    """The offline switches that are on: HF_HUB_OFFLINE, HF_DATASETS_OFFLINE."""
    from datasets import config
    from huggingface_hub import constants

    return [name for name, on in (("HF_HUB_OFFLINE", constants.HF_HUB_OFFLINE),
                                  ("HF_DATASETS_OFFLINE", config.HF_DATASETS_OFFLINE)) if on]


def _hub_error(spec, builtins: Sequence[str], exc: BaseException) -> TaskError:
    """One-line TaskError for a hub dataset that did not load."""
    config = f"config={spec.config}, " if spec.config else ""
    name = f"hub dataset {spec.source!r} ({config}split={spec.split})"
    hint = (f"there is no local file or folder {spec.source} either, and it is no built-in "
            f"task ({', '.join(builtins)}); offline, only hub datasets already in the cache load")
    chain, cause = [], exc
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    flags = offline_flags()
    if flags and any(isinstance(c, (ConnectionError, FileNotFoundError)) for c in chain):
        return TaskError(f"could not load {name}: offline mode is on ({', '.join(flags)} set) and it "
                         f"is not in the local cache", hint=hint)
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    reason = f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")
    return TaskError(f"could not load {name} (offline? misspelled?): {reason}", hint=hint)
