"""The user's own data as a task: a ``datasets.Dataset``, a list of dicts, a pandas DataFrame,
a file path or a task name (:func:`as_task`), with prompt/response rows or conversational rows.

Conversational rows hold a ``messages`` column: a list of ``{"role", "content"}`` turns. The
last assistant turn is the response; the turns before it are the prompt, rendered by the
tokenizer's chat template (with the generation prompt), whatever ``template`` says. Turns after
the last assistant turn are ignored.
"""

from __future__ import annotations

from .tasks import (
    PROMPT_FIELDS,
    Example,
    Task,
    TaskError,
    TaskSpec,
    _from_table,
    load_task,
)

MESSAGE_FIELDS = ("messages", "conversations", "conversation")


def conversational_field(spec: TaskSpec, columns: list[str]) -> str | None:
    """The messages column, when the rows are conversational: no prompt/response column was
    asked for or found, and a ``messages`` (or ``conversations``) column exists."""
    if spec.prompt_field or spec.response_field or any(c in columns for c in PROMPT_FIELDS):
        return None
    return next((c for c in MESSAGE_FIELDS if c in columns), None)


def from_messages(rows: list, indices: list[int], field: str, where: str) -> list[Example]:
    """One :class:`Example` per conversation: its last assistant turn is the response."""
    examples = []
    for index, turns in zip(indices, rows):
        bad = f"{where}: row {index}: field {field!r}"
        if not isinstance(turns, list) or not all(
                isinstance(t, dict) and isinstance(t.get("role"), str)
                and isinstance(t.get("content"), str) for t in turns):
            raise TaskError(f"{bad} is not a list of {{'role': str, 'content': str}} turns")
        last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=None)
        if last is None or last == 0:
            raise TaskError(f"{bad} has no assistant turn after a prompt turn")
        if not turns[last]["content"].strip():
            raise TaskError(f"{bad}: the last assistant turn is empty")
        prior = [{"role": t["role"], "content": t["content"]} for t in turns[:last]]
        user = next((t["content"] for t in reversed(prior) if t["role"] == "user"),
                    prior[-1]["content"])
        examples.append(Example(prompt=user, response=turns[last]["content"], index=index,
                                messages=prior))
    return examples


def as_task(data, prompt_field: str | None = None, response_field: str | None = None,
            name: str | None = None) -> Task:
    """A :class:`~headway.tasks.Task` from whatever the user holds.

    ``data``: a ``Task``; a ``datasets.Dataset``; a list of dicts; a pandas ``DataFrame``; or a
    string: a built-in task name, ``rg:<name>``, a file, a folder or a hub dataset id (as for
    ``--task``). Columns are detected as on the command line (``prompt|question|...``,
    ``response|answer|...``, or ``messages``) unless ``prompt_field`` / ``response_field`` name
    them. Rows keep their 0-based position as their index.
    """
    import os

    if isinstance(data, Task):
        return data
    if isinstance(data, (str, os.PathLike)):
        return load_task(TaskSpec(source=str(data), prompt_field=prompt_field,
                                  response_field=response_field, name=name))
    dataset, kind = _as_dataset(data)
    fingerprint = getattr(dataset, "_fingerprint", None) or "unknown"
    spec = TaskSpec(source=f"<{kind} {fingerprint}>", prompt_field=prompt_field,
                    response_field=response_field, name=name)
    return _from_table(spec, dataset, f"{kind} ({len(dataset)} rows)", name or "data")


def _as_dataset(data):
    """``(datasets.Dataset, description)`` for a Dataset, a list of dicts or a DataFrame."""
    import datasets

    if isinstance(data, datasets.Dataset):
        return data, "datasets.Dataset"
    if isinstance(data, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        raise TaskError(f"a DatasetDict with splits {list(data)}: pick one, e.g. data['train']")
    if isinstance(data, datasets.IterableDataset):
        raise TaskError("an IterableDataset: take the rows you want first, e.g. "
                        "datasets.Dataset.from_list(list(data.take(64)))")
    if isinstance(data, list):
        if not data:
            raise TaskError("the list of rows is empty")
        if not all(isinstance(r, dict) for r in data):
            raise TaskError("a list of rows must hold dicts (one per row, column -> value)")
        return datasets.Dataset.from_list(data), "list of dicts"
    if type(data).__name__ == "DataFrame" and hasattr(data, "to_dict"):
        return datasets.Dataset.from_pandas(data, preserve_index=False), "pandas.DataFrame"
    raise TaskError(f"cannot read rows from a {type(data).__name__}; give a datasets.Dataset, "
                    f"a list of dicts, a pandas DataFrame, a file path or a task name")
