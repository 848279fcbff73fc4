"""Held-out evaluation: batched greedy generation, answer checking, accuracy with a Wilson
confidence interval, and the mean response-token loss (a fast, low-noise signal).

Answer checking, in this order:
- reasoning-gym tasks (built-in names and ``rg:<name>``): the generator's own
  ``score_answer``; a row counts as correct when it scores 1.0.
- GSM8K-format data (the reference response contains ``#### N``): the number after ``####``
  in the generation, else its last number, compared with N as numbers.
- anything else: exact match after trimming and collapsing whitespace.
The model's answer is the generated text up to EOS; when the reference answer is one line,
only the first non-empty generated line is checked (so a base model's run-on text does not
count against it, and does not help it either).

A task's evaluation rows must never overlap its training rows: :func:`check_disjoint` raises
:class:`EvalError` naming the rows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from ..errors import HeadwayError

GSM_MARK = "####"
_NUMBER = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?|-?\d+(?:\.\d+)?")
_RG_SOURCE = re.compile(r"^reasoning_gym:(.+)\(seed=(-?\d+)\)$")


class EvalError(HeadwayError, ValueError):
    """Bad evaluation input, or evaluation rows that overlap training rows."""


# ---------------------------------------------------------------- answers


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def extract_answer(generated: str, reference: str) -> str:
    """The part of ``generated`` that is checked against ``reference`` (see module doc)."""
    if "\n" in reference.strip():
        return generated.strip()
    lines = [line.strip() for line in generated.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def gsm_answer(text: str) -> float | None:
    """The number after ``####``, else the last number in ``text``; None when there is none."""
    if GSM_MARK in text:
        found = _NUMBER.findall(text.split(GSM_MARK, 1)[1])
        if found:
            return _number(found[0])
    found = _NUMBER.findall(text)
    return _number(found[-1]) if found else None


def answer_checker(task) -> tuple[str, Callable[[int, str, str], float]]:
    """``(kind, check)`` for a :class:`headway.tasks.Task`; ``check(position, generated,
    reference)`` returns a score in [0, 1] for the task's ``position``-th example."""
    from ..data.tasks import generator_entries

    entries = generator_entries(task)
    if entries is not None:
        dataset, rows = entries

        def check_rg(position: int, generated: str, reference: str) -> float:
            answer = extract_answer(generated, reference)
            try:
                return float(dataset.score_answer(answer=answer, entry=rows[position]) or 0.0)
            except Exception:  # a checker that cannot parse the answer: the answer is wrong
                return 0.0

        return "reasoning_gym", check_rg
    if all(GSM_MARK in e.response for e in task.examples):
        def check_gsm(position: int, generated: str, reference: str) -> float:
            gold, got = gsm_answer(reference), gsm_answer(generated)
            return float(got is not None and gold is not None and abs(got - gold) < 1e-6)

        return "gsm8k", check_gsm

    def check_exact(position: int, generated: str, reference: str) -> float:
        return float(_normalise(extract_answer(generated, reference)) == _normalise(reference))

    return "exact_match", check_exact


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (scipy)."""
    from scipy.stats import binomtest

    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(correct, n).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


# ---------------------------------------------------------------- generation


@torch.no_grad()
def generate(lm, prompts: Sequence[str], max_new_tokens: int, batch_size: int = 16,
             progress: bool = True, add_special_tokens: bool = True) -> list[str]:
    """Greedy continuations of already-templated ``prompts`` (left-padded batches, longest
    first); each is cut at the first end-of-sequence token (the tokenizer's EOS or any of the
    generation config's) and decoded without special tokens. ``add_special_tokens`` as in
    :func:`headway.tasks.encode_examples` (False for chat-templated prompts)."""
    from tqdm.auto import tqdm

    from ..models.placement import input_device

    tok, model = lm.tokenizer, lm.model
    device = input_device(model)
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stops = {tok.eos_token_id, *(configured if isinstance(configured, list) else [configured])}
    stops = sorted(t for t in stops if t is not None)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        with tqdm(total=len(prompts), desc="generating", unit="row", disable=not progress,
                  dynamic_ncols=True) as bar:
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch = tok([prompts[i] for i in rows], return_tensors="pt", padding=True,
                            add_special_tokens=add_special_tokens).to(device)
                ids = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id, eos_token_id=stops)
                for i, seq in zip(rows, ids[:, batch["input_ids"].shape[1]:]):
                    seq = seq.tolist()
                    ends = [seq.index(t) for t in stops if t in seq]
                    seq = seq[:min(ends)] if ends else seq
                    out[i] = tok.decode(seq, skip_special_tokens=True)
                bar.update(len(rows))
    finally:
        tok.padding_side = side
    return out


# ---------------------------------------------------------------- evaluation


@dataclass
class EvalSettings:
    template: str | None = None  # None: from the columns (data.encoding.template_for)
    max_length: int = 1024
    overlong: str = "truncate"  # rows over max_length, for the response loss
    max_new_tokens: int | None = None  # None: 1.5 x the longest reference answer + 8 tokens
    batch_size: int = 16


def evaluate(lm, task, settings: EvalSettings | None = None, progress: bool = True) -> dict:
    """Accuracy (greedy), its 95 % Wilson interval, mean checker score and the response loss
    (each row's mean response-token loss in nats, averaged over rows; lower is better) of
    ``lm`` on ``task``; per-row records included."""
    import dataclasses

    from ..data.encoding import (
        encode_examples,
        render_example,
        template_for,
        uses_chat_template,
    )
    from ..data.rows import task_record
    from ..scoring.loss import mean_loss

    s = settings or EvalSettings()
    s = dataclasses.replace(s, template=template_for(task, s.template))  # None: the columns'
    examples = task.examples
    if not examples:
        raise EvalError(f"{task.source}: no rows to evaluate")
    kind, check = answer_checker(task)
    answer_tokens = lm.tokenizer([e.response for e in examples],
                                 add_special_tokens=False)["input_ids"]
    max_new = s.max_new_tokens or int(1.5 * max(len(a) for a in answer_tokens)) + 8
    prompts = [render_example(e, s.template, lm.tokenizer) for e in examples]
    generated = generate(lm, prompts, max_new, s.batch_size, progress,
                         add_special_tokens=not uses_chat_template(examples, s.template))
    scores = [check(i, g, e.response) for i, (g, e) in enumerate(zip(generated, examples))]
    correct = sum(score >= 1.0 for score in scores)
    encoded, _ = encode_examples(examples, lm.tokenizer, s.template, s.max_length, s.overlong,
                                 task.source, prompt_field=task.prompt_field)
    loss = mean_loss(lm.model, encoded, lm.pad_id, s.batch_size)
    low, high = wilson_interval(correct, len(examples))
    return {
        "task": task_record(task), "checker": kind, "n": len(examples), "correct": correct,
        "accuracy": correct / len(examples), "accuracy_ci95": [low, high],
        "mean_score": sum(scores) / len(scores), "response_loss": loss,
        "max_new_tokens": max_new, "template": s.template,
        "rows": [{"index": e.index, "reference": e.response, "generated": g, "score": sc}
                 for e, g, sc in zip(examples, generated, scores)],
    }


def row_keys(source: str, indices: Iterable[int]) -> set[tuple[str, int]]:
    """Keys that identify rows across seeds: reasoning-gym builds row i of seed S from
    ``Random(S + i)``, so its rows are keyed ``(generator, S + i)`` (row 4 of seed 1 is row 5
    of seed 0); other sources ``(source, i)``."""
    match = _RG_SOURCE.match(source)
    if match:
        name, seed = match.group(1), int(match.group(2))
        return {(f"reasoning_gym:{name}", seed + i) for i in indices}
    return {(source, i) for i in indices}


def check_disjoint(eval_task, used: Iterable[tuple[str, Iterable[int]]]) -> None:
    """Raise :class:`EvalError` if a row of ``eval_task`` was trained on.

    ``used`` holds ``(source, row indices)`` of every training set, ``source`` being
    ``Task.source`` (it names the file, the dataset split, or the generator and its seed).
    Rows are compared by :func:`row_keys`, so a reasoning-gym row reached through another
    seed counts as the same row.
    """
    mine = {key: e.index for e in eval_task.examples
            for key in row_keys(eval_task.source, [e.index])}
    for source, indices in used:
        overlap = sorted(mine[k] for k in row_keys(source, indices) if k in mine)
        if overlap:
            raise EvalError(f"{eval_task.source}: evaluation rows {overlap[:8]}"
                            f"{' ...' if len(overlap) > 8 else ''} ({len(overlap)} in all) were "
                            f"also training rows (of {source}); take evaluation rows after the "
                            f"training rows (a larger offset)")


def duplicate_prompts(eval_task, train_prompts: Iterable[str]) -> int:
    """How many evaluation prompts occur verbatim among ``train_prompts`` (generators can
    repeat a question by chance; reported, not an error)."""
    seen = {_normalise(p) for p in train_prompts}
    return sum(_normalise(e.prompt) in seen for e in eval_task.examples)
