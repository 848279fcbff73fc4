"""Conversational rows: a ``messages`` column of ``{"role", "content"}`` turns. The last
assistant turn is the response; the turns before it are the prompt, rendered by the
tokenizer's chat template (with the generation prompt), whatever ``template`` says. Turns after
the last assistant turn are ignored.
"""

from __future__ import annotations

from .rows import PROMPT_FIELDS, Example, TaskError, TaskSpec

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
