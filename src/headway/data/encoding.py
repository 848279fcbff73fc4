"""Prompt templates and the one prompt/response encoding that scoring, training and evaluation
share: prompt and response are tokenised separately and concatenated, the loss falls on the
response tokens (and EOS) only.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .rows import Example, TaskError

TEMPLATES = {"qa": "Question: {prompt}\nAnswer: ", "raw": "{prompt}"}


OVERLONG_POLICIES = ("truncate", "drop")


def template_for(task, template: str | None = None) -> str:
    """The template ``task``'s prompts are rendered with: ``template`` when given, else the
    one its columns call for: conversational ``messages`` rows -> ``"chat"``; TRL's
    prompt/completion rows (``prompt`` and ``completion`` columns) -> ``"raw"``, the prompt as
    it is; anything else (question/answer, ...) -> ``"qa"``, the released script's
    ``"Question: {prompt}\nAnswer: "``."""
    if template is not None:
        return template
    if any(e.messages is not None for e in task.examples):
        return "chat"
    if task.prompt_field == "prompt" and task.response_field == "completion":
        return "raw"
    return "qa"


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
