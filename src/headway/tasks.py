"""Task datasets (reasoning-gym generators, local files and folders, hub datasets), prompt
templates, and the one prompt/response encoding that scoring and training share.

A task is a list of (prompt, response) examples. ``load_task`` resolves a source in this order:
built-in name -> ``"rg:<reasoning_gym name>"`` -> local file (.jsonl .json .csv .parquet) ->
local folder -> Hugging Face dataset id (the file, folder and hub loaders are in
:mod:`headway.sources`; only a name that can be a hub dataset id is looked up there). Every bad
input raises ``TaskError`` naming the file or dataset and, for row problems, the 0-based row
index and the field.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import random
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Iterable, NamedTuple

from .errors import HeadwayError

PROMPT_FIELDS = ("prompt", "question", "instruction", "input", "problem", "query")
RESPONSE_FIELDS = ("response", "answer", "completion", "output", "solution")
FILE_BUILDERS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
GENERATOR_DEFAULT_N = 64
SPLIT_NAMES = ("train", "test", "validation", "valid", "val", "dev")
TEMPLATES = {"qa": "Question: {prompt}\nAnswer: ", "raw": "{prompt}"}
OVERLONG_POLICIES = ("truncate", "drop")


class TaskError(HeadwayError, ValueError):
    """A bad task input: the message names the file or dataset, the row index and the field."""


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
            "spec": asdict(task.spec)}


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
    from .data import conversational_field

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
        from .data import from_messages

        return _finish(spec, where, default_name,
                       from_messages(rows[messages_field], indices, messages_field, where),
                       messages_field, messages_field)
    return _build(spec, where, default_name, indices, rows[prompt_field], rows[response_field],
                  prompt_field, response_field)


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
    for name in candidates:
        if name in columns:
            return name
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


# ---------------------------------------------------------------- templates and encoding


def render_example(example: Example, template: str, tokenizer=None) -> str:
    """The prompt text the model sees for ``example``: conversational rows through the
    tokenizer's chat template (whatever ``template`` says), others by :func:`render_prompt`."""
    if example.messages is None:
        return render_prompt(example.prompt, template, tokenizer)
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise TaskError(f"conversational rows ('messages') need a chat template; tokenizer "
                        f"{name!r} has none", hint="give prompt/response columns instead")
    return tokenizer.apply_chat_template(example.messages, tokenize=False,
                                         add_generation_prompt=True)


def uses_chat_template(examples: list[Example], template: str) -> bool:
    """True when the prompts are rendered by a chat template (which adds its own special
    tokens, so the tokenizer must not add BOS again)."""
    return template == "chat" or any(e.messages is not None for e in examples)


def render_prompt(prompt: str, template: str, tokenizer=None) -> str:
    """Return the prompt text the model sees: "qa", "raw", "chat" or a custom "{prompt}" string."""
    if template == "chat":
        if not getattr(tokenizer, "chat_template", None):
            name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
            raise TaskError(f"template 'chat': tokenizer {name!r} has no chat template; use 'qa' or 'raw'")
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    text = TEMPLATES.get(template, template if "{prompt}" in template else None)
    if text is None:
        raise TaskError(f"unknown template {template!r}; use one of {[*TEMPLATES, 'chat']} "
                        f"or a string containing '{{prompt}}'")
    return text.replace("{prompt}", prompt)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]  # -100 on prompt tokens; response tokens + EOS carry their ids
    index: int  # Example.index
    truncated: bool


@dataclass
class EncodeStats:
    n_in: int  # examples given
    n_out: int  # examples encoded
    n_truncated: int  # encoded examples cut to max_length
    n_dropped: int  # examples left out by overlong="drop"
    n_tokens: int  # total tokens of the encoded examples
    n_response_tokens: int  # total tokens with a label (response + EOS)


def encode_examples(examples: Iterable[Example], tokenizer, template: str = "qa", max_length: int = 1024,
                    overlong: str = "truncate", source: str = "",
                    prompt_field: str | None = None) -> tuple[list[Encoded], EncodeStats]:
    """Tokenise prompt and response separately and concatenate; return the encodings and counts.

    input_ids = prompt_ids + response_ids + [eos]; labels = [-100] * len(prompt_ids) + the rest.
    Rows longer than ``max_length`` are cut from the right ("truncate") or left out ("drop").
    ``source`` and ``prompt_field`` (``Task.source``, ``Task.prompt_field``) name the file and
    column in errors.
    """
    if overlong not in OVERLONG_POLICIES:
        raise TaskError(f"unknown overlong policy {overlong!r}; use one of {list(OVERLONG_POLICIES)}")
    if max_length < 1:
        raise TaskError(f"max_length must be >= 1 (got {max_length})")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise TaskError(f"tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no eos_token_id")
    examples = list(examples)
    if not examples:
        return [], EncodeStats(0, 0, 0, 0, 0, 0)
    prompts = [render_example(e, template, tokenizer) for e in examples]
    prompt_ids = tokenizer(prompts, add_special_tokens=not uses_chat_template(examples, template)
                           )["input_ids"]
    response_ids = tokenizer([e.response for e in examples], add_special_tokens=False)["input_ids"]

    encoded, n_dropped = [], 0
    for example, p_ids, r_ids in zip(examples, prompt_ids, response_ids):
        r_ids = list(r_ids) + [eos]
        input_ids, labels = list(p_ids) + r_ids, [-100] * len(p_ids) + r_ids
        truncated = len(input_ids) > max_length
        if truncated and overlong == "drop":
            n_dropped += 1
            continue
        if truncated:
            if len(p_ids) >= max_length:
                raise _prompt_too_long(source, example.index, prompt_field, len(p_ids), max_length)
            input_ids, labels = input_ids[:max_length], labels[:max_length]
        encoded.append(Encoded(input_ids=input_ids, labels=labels, index=example.index, truncated=truncated))
    stats = EncodeStats(n_in=len(examples), n_out=len(encoded), n_truncated=sum(e.truncated for e in encoded),
                        n_dropped=n_dropped, n_tokens=sum(len(e.input_ids) for e in encoded),
                        n_response_tokens=sum(sum(l != -100 for l in e.labels) for e in encoded))
    return encoded, stats


def _prompt_too_long(source: str, index: int, prompt_field: str | None, n: int,
                     max_length: int) -> TaskError:
    """The error for a row whose rendered prompt leaves no token for the response."""
    column = f" (field {prompt_field!r})" if prompt_field else ""
    return TaskError(f"{source or 'examples'}: row {index}: the prompt{column} alone has {n} tokens "
                     f">= max_length={max_length}, leaving none for the response",
                     hint=f"raise --max-length (max_length=...) above {n} or use --overlong drop "
                          f"(overlong='drop')")
