"""Task datasets: reasoning-gym generators (the built-in tasks), local files and folders, hub
datasets.

A task is a list of (prompt, response) examples. ``load_task`` resolves a source in this order:
built-in name -> ``"rg:<reasoning_gym name>"`` -> local file (.jsonl .json .csv .parquet) ->
local folder -> Hugging Face dataset id (the file, folder and hub loaders are in
:mod:`.sources`; only a name that can be a hub dataset id is looked up there). Every bad
input raises ``TaskError`` naming the file or dataset and, for row problems, the 0-based row
index and the field.
"""

from __future__ import annotations

import difflib
import random
from dataclasses import fields, replace
from pathlib import Path
from typing import NamedTuple

from ..hub import reachable_or_offline
from .rows import (
    PROMPT_FIELDS,
    RESPONSE_FIELDS,
    Task,
    TaskError,
    TaskSpec,
    _build,
    _describe,
    _finish,
    _resolve_field,
)

GENERATOR_DEFAULT_N = 64
SPLIT_NAMES = ("train", "test", "validation", "valid", "val", "dev")


class BuiltinTask(NamedTuple):
    generator: str  # reasoning_gym dataset name
    description: str


BUILTIN_TASKS: dict[str, BuiltinTask] = {
    "arithmetic": BuiltinTask("basic_arithmetic", "basic arithmetic expressions (+ - * /) with integers"),
    "chain_sum": BuiltinTask("chain_sum", "chains of additions and subtractions"),
    "sorting": BuiltinTask("word_sorting", "sort a list of words by ASCII/Unicode order (non-arithmetic)"),
    "syllogism": BuiltinTask("syllogism", "does a conclusion follow from two premises (logic)"),
    "leg_counting": BuiltinTask("leg_counting", "count the legs of a list of animals"),
    "word_problems": BuiltinTask("gsm_symbolic", "GSM8K-style grade-school math word problems"),
}


def list_builtin_tasks() -> list[tuple[str, str]]:
    """Return (name, description) for every built-in task."""
    return [(name, task.description) for name, task in BUILTIN_TASKS.items()]


def load_task(spec: TaskSpec | str, **overrides) -> Task:
    """Load the rows ``spec`` selects and return them as a validated ``Task``."""
    if isinstance(spec, str):
        spec = TaskSpec(source=spec)
    unknown = set(overrides) - {f.name for f in fields(TaskSpec)}
    if unknown:
        raise TaskError(f"unknown TaskSpec field(s) {sorted(unknown)}")
    spec = replace(spec, **overrides)
    if spec.offset < 0 or (spec.n is not None and spec.n < 1):
        raise TaskError(f"{spec.source}: need offset >= 0 and n >= 1 (got offset={spec.offset}, n={spec.n})")

    from .sources import check_hub_source, load_file, load_folder, load_hub

    source = spec.source
    generator = generator_name(source)
    if generator:
        return _from_generator(spec, generator, source if source in BUILTIN_TASKS else generator)
    path = Path(source).expanduser()
    if path.is_file():
        where = str(path.resolve())
        stem = path.stem if path.stem not in SPLIT_NAMES else f"{path.resolve().parent.name}-{path.stem}"
        return _from_table(spec, load_file(path, where), where, stem)
    if path.is_dir():
        where = f"{path.resolve()} (split={spec.split})"
        return _from_table(spec, load_folder(path, spec.split, where), where, path.resolve().name)
    check_hub_source(source, list(BUILTIN_TASKS))  # fails fast for typos and missing paths
    reachable_or_offline()  # no network: offline at once, not after a minute of retries
    where = f"{source} (config={spec.config}, split={spec.split})"
    return _from_table(spec, load_hub(spec, list(BUILTIN_TASKS)), where, source.split("/")[-1])


def generator_name(source: str) -> str | None:
    """The reasoning-gym dataset behind a built-in name or ``rg:<name>``; None otherwise."""
    if source in BUILTIN_TASKS:
        return BUILTIN_TASKS[source].generator
    return source[3:] if source.startswith("rg:") else None


def generator_entries(task: Task):
    """``(dataset, entries)`` of a reasoning-gym task: the generator object (it has
    ``score_answer``) and the raw entry of each of ``task.examples``; None for other tasks."""
    generator = generator_name(task.spec.source)
    if generator is None:
        return None
    reasoning_gym = _reasoning_gym()
    dataset = reasoning_gym.create_dataset(generator, size=max(e.index for e in task.examples) + 1,
                                           seed=task.spec.seed)
    return dataset, [dataset[e.index] for e in task.examples]


def _reasoning_gym():
    """The ``reasoning_gym`` package, or a TaskError naming the extra that installs it."""
    try:
        import reasoning_gym
    except ImportError:
        raise TaskError("the built-in tasks and rg:<name> come from the package reasoning-gym, "
                        "which is not installed",
                        hint="pip install 'headway[demo]' (or pip install reasoning-gym); "
                             "your own files and datasets need neither") from None
    return reasoning_gym


def _from_generator(spec: TaskSpec, generator: str, default_name: str) -> Task:
    """Generate offset+n rows with reasoning_gym and keep the last n (disjoint for disjoint offsets)."""
    reasoning_gym = _reasoning_gym()
    from reasoning_gym.factory import DATASETS

    if generator not in DATASETS:
        close = difflib.get_close_matches(generator, list(DATASETS), n=5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise TaskError(f"rg:{generator}: reasoning_gym has no dataset named {generator!r}{hint} "
                        f"({len(DATASETS)} names, e.g. {', '.join(sorted(DATASETS)[:8])}, ...)")
    n = spec.n or GENERATOR_DEFAULT_N
    where = f"reasoning_gym:{generator}(seed={spec.seed})"
    try:
        dataset = reasoning_gym.create_dataset(generator, size=spec.offset + n, seed=spec.seed)
        entries = [dataset[i] for i in range(spec.offset, spec.offset + n)]
    except Exception as exc:
        raise TaskError(f"{where}: generation failed: {_describe(exc)}") from exc
    columns = list(entries[0])
    prompt_field = _resolve_field(spec.prompt_field, PROMPT_FIELDS, columns, "prompt", where)
    response_field = _resolve_field(spec.response_field, RESPONSE_FIELDS, columns, "response", where)
    indices = list(range(spec.offset, spec.offset + n))
    prompts = [e.get(prompt_field) for e in entries]
    responses = [e.get(response_field) for e in entries]
    return _build(spec, where, default_name, indices, prompts, responses, prompt_field, response_field)


def _from_table(spec: TaskSpec, dataset, where: str, default_name: str) -> Task:
    """Select rows of a ``datasets.Dataset`` (optionally shuffled), then offset and n.
    A ``messages`` column (and no prompt column) makes the rows conversational
    (:func:`headway.data.from_messages`)."""
    columns = list(dataset.column_names)
    from .messages import conversational_field

    messages_field = conversational_field(spec, columns)
    if messages_field is None:
        prompt_field = _resolve_field(spec.prompt_field, PROMPT_FIELDS, columns, "prompt", where)
        response_field = _resolve_field(spec.response_field, RESPONSE_FIELDS, columns, "response",
                                        where)
    total = len(dataset)
    if total == 0:
        raise TaskError(f"{where}: no rows")
    available = total - spec.offset
    n = spec.n if spec.n is not None else available
    if n < 1 or n > available:
        raise TaskError(f"{where}: asked for n={spec.n} rows after offset={spec.offset}, "
                        f"but it has {total} rows ({max(available, 0)} after the offset)")
    order = list(range(total))
    if spec.shuffle:
        random.Random(spec.seed).shuffle(order)
    indices = order[spec.offset:spec.offset + n]
    rows = dataset.select(indices)
    if messages_field is not None:
        from .messages import from_messages

        return _finish(spec, where, default_name,
                       from_messages(rows[messages_field], indices, messages_field, where),
                       messages_field, messages_field)
    return _build(spec, where, default_name, indices, rows[prompt_field], rows[response_field],
                  prompt_field, response_field)


# ---------------------------------------------------------------- templates and encoding


