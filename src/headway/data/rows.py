"""Rows of a task: ``Example`` (one prompt/response pair), ``Task`` (validated examples and
their data hash), ``TaskSpec`` (where rows come from and which to take) and the checks every
row passes. Every bad row raises ``TaskError`` naming the source, the 0-based row index and
the field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace

from ..errors import HeadwayError

PROMPT_FIELDS = ("prompt", "question", "instruction", "input", "problem", "query")


RESPONSE_FIELDS = ("response", "answer", "completion", "output", "solution")


class TaskError(HeadwayError, ValueError):
    """A bad task input: the message names the file or dataset, the row index and the field."""


@dataclass
class Example:
    prompt: str  # the raw question/prompt text (before the template)
    response: str  # the raw answer text (before EOS)
    index: int  # 0-based row index in the source file / dataset / generator
    # conversational rows: the turns before the response (rendered by the chat template);
    # ``prompt`` is then the last user turn, for display
    messages: list[dict] | None = None


@dataclass
class TaskSpec:
    """Where a task's examples come from and which rows to take."""

    source: str = field(metadata={"help": "Built-in task name, 'rg:<reasoning_gym dataset>', a local "
                                          ".jsonl/.json/.csv/.parquet file, a local folder or a hub dataset id."})
    n: int | None = field(default=None, metadata={"help": "Rows to take (None = all; generators: 64)."})
    offset: int = field(default=0, metadata={"help": "Skip this many rows first (for held-out splits)."})
    seed: int = field(default=0, metadata={"help": "Generator seed (reasoning-gym) and shuffle seed."})
    shuffle: bool = field(default=False, metadata={"help": "Files/hub: seeded shuffle before offset and n."})
    split: str = field(default="train", metadata={"help": "Split of a hub or folder dataset."})
    config: str | None = field(default=None, metadata={"help": "Hub dataset config name (e.g. 'main')."})
    prompt_field: str | None = field(default=None, metadata={"help": "Prompt column (None = auto-detect)."})
    response_field: str | None = field(default=None, metadata={"help": "Response column (None = auto-detect)."})
    name: str | None = field(default=None, metadata={"help": "Display name (default: derived from source)."})


@dataclass
class Task:
    name: str
    source: str  # resolved description: "reasoning_gym:<name>(seed=S)", an absolute path or a hub id
    examples: list[Example]
    data_hash: str  # sha256 of the canonical JSON of [[prompt, response], ...]
    spec: TaskSpec  # the spec used, with n and name filled in
    prompt_field: str | None = None  # the column the prompts came from
    response_field: str | None = None  # the column the responses came from


def task_record(task: Task) -> dict:
    """What results store about their task: name, source, data hash and the spec that loads
    the same rows again (``load_task(TaskSpec(**record["spec"]))``)."""
    from dataclasses import asdict

    return {"name": task.name, "source": task.source, "data_hash": task.data_hash,
            "spec": asdict(task.spec), "prompt_field": task.prompt_field,
            "response_field": task.response_field}


def _build(spec, where, default_name, indices, prompts, responses, prompt_field, response_field) -> Task:
    """Validate every selected row and return the Task with its data hash."""
    examples = []
    for index, prompt, response in zip(indices, prompts, responses):
        _check_value(where, index, prompt_field, prompt)
        _check_value(where, index, response_field, response)
        examples.append(Example(prompt=prompt, response=response, index=index))
    return _finish(spec, where, default_name, examples, prompt_field, response_field)


def _finish(spec, where, default_name, examples, prompt_field, response_field) -> Task:
    """The Task of validated ``examples``, with its data hash (of prompts, or of the turns
    before the response for conversational rows, and responses)."""
    canonical = json.dumps([[e.messages if e.messages is not None else e.prompt, e.response]
                            for e in examples], ensure_ascii=False, separators=(",", ":"))
    name = spec.name or default_name
    return Task(name=name, source=where, examples=examples,
                data_hash=hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
                spec=replace(spec, n=len(examples), name=name),
                prompt_field=prompt_field, response_field=response_field)


def _resolve_field(explicit, candidates, columns, role, where) -> str:
    """Return the column to use for ``role`` ("prompt" or "response")."""
    if explicit is not None:
        if explicit not in columns:
            raise TaskError(f"{where}: {role}_field {explicit!r} is not a column; columns are {columns}")
        return explicit
    found = [name for name in candidates if name in columns]
    if len(found) > 1:
        import sys

        print(f"headway: note: {where}: columns {', '.join(map(repr, found))} could each be the "
              f"{role}; using {found[0]!r} (--{role}-field, {role}_field=, chooses another)",
              file=sys.stderr)
    if found:
        return found[0]
    raise TaskError(f"{where}: no {role} column found; columns are {columns}, tried {list(candidates)}; "
                    f"pass {role}_field=<column> (command line: --{role}-field <column>)")


def _check_value(where: str, index: int, field_name: str, value) -> None:
    """Raise TaskError unless ``value`` is a non-blank string."""
    if value is None:
        problem = "missing or null"
    elif not isinstance(value, str):
        problem = f"not a string ({type(value).__name__}: {str(value)[:40]!r})"
    elif not value.strip():
        problem = "empty"
    else:
        return
    raise TaskError(f"{where}: row {index}: field {field_name!r} is {problem}")


def _describe(exc: BaseException) -> str:
    """Return the exception and its causes as one line."""
    parts = []
    while exc is not None and len(parts) < 4:
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(parts)
