"""Where a task's rows come from when no generator makes them: a local file (.jsonl .json .csv
.parquet), a local dataset folder, or a Hugging Face hub dataset. Each loader returns a
``datasets.Dataset`` or raises ``TaskError`` naming the source.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from .progress import quiet_hf_progress
from .tasks import BUILTIN_TASKS, FILE_BUILDERS, TaskError, _describe


def load_file(path: Path, where: str):
    """Return the file's rows as a ``datasets.Dataset``; CSV cells are read as verbatim text."""
    import datasets

    builder = FILE_BUILDERS.get(path.suffix.lower())
    if builder is None:
        raise TaskError(f"{where}: unsupported file type {path.suffix!r}; use one of {sorted(FILE_BUILDERS)}")
    kwargs = {}
    try:
        if builder == "csv":
            with open(path, newline="", encoding="utf-8") as f:
                header = next(csv.reader(f), [])
            kwargs = {"features": datasets.Features({c: datasets.Value("string") for c in header}),
                      "keep_default_na": False}
        with quiet_hf_progress():
            return datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    except Exception as exc:
        bad = _first_bad_json_line(path) if path.suffix.lower() == ".jsonl" else ""
        raise TaskError(f"{where}: cannot read as {builder}{bad}: {_describe(exc)}") from exc


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
        raise TaskError(f"{where}: cannot load the folder as a dataset: {_describe(exc)}") from exc


def load_hub(spec: TaskSpec, where: str):
    """Return ``datasets.load_dataset(source, config, split=split)`` from the hub or its cache."""
    import datasets

    try:
        return datasets.load_dataset(spec.source, spec.config, split=spec.split)
    except Exception as exc:
        raise TaskError(
            f"{where}: not a built-in task ({', '.join(BUILTIN_TASKS)}), not 'rg:<name>', and could not be "
            f"found locally or on the Hugging Face hub: {_describe(exc)}. Offline (no network, or "
            f"HF_DATASETS_OFFLINE=1 / HF_HUB_OFFLINE=1) only cached hub datasets load.") from exc
