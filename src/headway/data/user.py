"""The user's own data as a task: a ``datasets.Dataset``, a list of dicts, a pandas DataFrame,
a file path or a task name (:func:`as_task`), with prompt/response rows or conversational rows.

Conversational rows hold a ``messages`` column: a list of ``{"role", "content"}`` turns. The
last assistant turn is the response; the turns before it are the prompt, rendered by the
tokenizer's chat template (with the generation prompt), whatever ``template`` says. Turns after
the last assistant turn are ignored.
"""

from __future__ import annotations

import random
from dataclasses import replace

from .rows import Task, TaskError, TaskSpec, _finish
from .tasks import _from_table, load_task


def as_task(data, prompt_field: str | None = None, response_field: str | None = None,
            name: str | None = None, *, rows: int | None = None, offset: int = 0,
            seed: int | None = None, shuffle: bool = False) -> Task:
    """A :class:`~headway.data.rows.Task` from whatever the user holds.

    ``data``: a ``Task``; a ``datasets.Dataset``; a list of dicts; a pandas ``DataFrame``; or a
    string: a built-in task name, ``rg:<name>``, a file, a folder or a hub dataset id (as for
    ``--task``). Columns are detected as on the command line (``prompt|question|...``,
    ``response|answer|...``, or ``messages``) unless ``prompt_field`` / ``response_field`` name
    them. Rows keep their 0-based position as their index.

    Which rows, as the command line's ``--rows``, ``--offset``, ``--seed``, ``--shuffle``:
    ``rows`` (default: all; 64 generated rows for a built-in task), after skipping ``offset``,
    of the data in order, or shuffled with ``seed`` (also a generator's seed; default 0).
    """
    import os

    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 1):
        raise TaskError(f"rows is {rows!r}: give a number of rows >= 1, or None for all")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise TaskError(f"offset is {offset!r}: give a number of rows to skip, >= 0")
    selection = dict(n=rows, offset=offset, seed=0 if seed is None else seed, shuffle=shuffle)
    if isinstance(data, Task):
        if rows is None and offset == 0 and not shuffle:
            return data
        if not data.source.startswith("<"):  # a source that loads again: select there
            return load_task(replace(data.spec, **selection))
        order = list(range(len(data.examples)))  # rows held in memory: select among them
        if shuffle:
            random.Random(selection["seed"]).shuffle(order)
        picked = order[offset:offset + rows if rows is not None else None]
        if not picked or (rows is not None and len(picked) < rows):
            raise TaskError(f"{data.source}: asked for rows={rows} after offset={offset}, but "
                            f"it has {len(data.examples)} rows")
        return _finish(replace(data.spec, **selection), data.source, data.name,
                       [data.examples[i] for i in picked], data.prompt_field,
                       data.response_field)
    if isinstance(data, (str, os.PathLike)):
        return load_task(TaskSpec(source=str(data), prompt_field=prompt_field,
                                  response_field=response_field, name=name, **selection))
    dataset, kind = _as_dataset(data)
    fingerprint = getattr(dataset, "_fingerprint", None) or "unknown"
    spec = TaskSpec(source=f"<{kind} {fingerprint}>", prompt_field=prompt_field,
                    response_field=response_field, name=name, **selection)
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
