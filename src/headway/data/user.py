"""The user's own data as a task: a ``datasets.Dataset``, a list of dicts, a pandas DataFrame,
a file path or a task name (:func:`as_task`), with prompt/response rows or conversational rows.

Conversational rows hold a ``messages`` column: a list of ``{"role", "content"}`` turns. The
last assistant turn is the response; the turns before it are the prompt, rendered by the
tokenizer's chat template (with the generation prompt), whatever ``template`` says. Turns after
the last assistant turn are ignored.
"""

from __future__ import annotations

from .rows import Task, TaskError, TaskSpec
from .tasks import _from_table, load_task


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
