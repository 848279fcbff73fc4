"""Faithfulness: does removing a pattern's top heads hurt the task more than removing random
heads? A head is ablated at the input of its layer's output projection (its slice of
``[B, T, H*d]``), set to zero or to its mean output over the probe data. Random head sets are
drawn from the heads outside the top k, and the top-k increase gets a permutation p-value
against them; their passes share the unablated prefix (:mod:`headway.analysis.head_sets`).

:func:`run_ablations` runs several (pattern, mode) ablations under one progress bar and keeps
each finished result in a file, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.batching import by_length, collate
from ..models.architectures import head_geometry
from ..models.placement import input_device
from ..scoring.hooks import on_head_slices, split_heads
from ..scoring.loss import Tick, response_token_losses
from .head_sets import head_set_losses, top_and_random_sets

MODES = ("zero", "mean")


def forward_batches(encoded: Sequence, n_random: int, mode: str, batch_size: int = 8) -> int:
    """The progress units :func:`faithfulness` counts: per row batch, the unablated pass, the
    top-k and ``n_random`` random sets (each counts one, however passes share work), plus the
    head-means pass in ``mean`` mode."""
    passes = 2 + n_random + (mode == "mean")
    return passes * len(by_length(encoded, batch_size))


@torch.no_grad()
def head_means(model: nn.Module, encoded: Sequence, pad_id: int, batch_size: int = 8,
               tick: Tick | None = None) -> torch.Tensor:
    """Mean output of every head over all real (non-padding) tokens: [L, H, d]."""
    n_layers, n_heads, head_dim = head_geometry(model)
    device = input_device(model)
    sums = torch.zeros(n_layers, n_heads, head_dim, dtype=torch.float64)
    count = 0
    current = {}

    def accumulate(layer: int, x: torch.Tensor) -> None:
        x = split_heads(x, n_heads)  # [B, T, H, d]
        mask = current["mask"][..., None, None].to(device=x.device, dtype=x.dtype)
        sums[layer] += (x * mask).sum((0, 1)).double().cpu()

    with on_head_slices(model, accumulate):
        for rows in by_length(encoded, batch_size):
            batch = collate([encoded[i] for i in rows], pad_id, device=device)
            current["mask"] = batch["attention_mask"]
            count += int(batch["attention_mask"].sum())
            response_token_losses(model, batch)
            if tick:
                tick(1)
    return (sums / count).float()


PERCENTILE_MIN_DRAWS = 20  # fewer random draws: the interval is their range
SIGNIFICANCE = 0.05


def random_interval(values) -> dict:
    """The interval reported for the random draws' loss increases: their 2.5th–97.5th
    percentile with at least :data:`PERCENTILE_MIN_DRAWS` draws, else their range (min–max,
    as a percentile interval of a handful of draws would pretend a precision it lacks).
    ``{"low", "high", "kind": "percentile" | "range", "n", "label"}``."""
    n = len(values)
    if n >= PERCENTILE_MIN_DRAWS:
        low, high = np.percentile(values, [2.5, 97.5])
        kind, label = "percentile", f"2.5–97.5th percentile of {n} random draws"
    else:
        low, high = min(values), max(values)
        kind, label = "range", f"range (min–max) of {n} random draws"
    return {"low": float(low), "high": float(high), "kind": kind, "n": n, "label": label}


def permutation_p(top_increase: float, random_increase) -> float:
    """Share of random draws that hurt at least as much as the top-k, +1 corrected:
    ``(1 + #{random ≥ top}) / (1 + n)``; never below 1 / (n + 1)."""
    r = np.asarray(random_increase, dtype=np.float64)
    return float((1 + (r >= top_increase).sum()) / (1 + r.size))


def faithfulness(model: nn.Module, encoded: Sequence, pad_id: int, scores, k: int = 10,
                 n_random: int = 20, mode: str = "zero", seed: int = 0,
                 batch_size: int = 8, tick: Tick | None = None, sets_per_pass: int = 4,
                 reuse: bool = True) -> dict:
    """Loss increase when ablating the ``k`` top heads of ``scores`` [L, H] versus ``k``
    random heads (``n_random`` draws, each from the heads outside the top k). ``tick(n)`` is
    called as work finishes (:func:`forward_batches` units in all); ``reuse`` and
    ``sets_per_pass``: see :func:`headway.analysis.head_sets.head_set_losses` (the same
    losses either way, up to float rounding).

    Returns base loss, top-k loss and increase, each random draw's heads and increase, their
    mean, the interval of :func:`random_interval` (``random_interval``; ``random_increase_ci95``
    is their 2.5–97.5th percentile whatever their number), the permutation ``p_value``
    (:func:`permutation_p`) and ``top_beats_random``: p ≤ 0.05, which needs at least 19 draws.
    """
    if mode not in MODES:
        raise ValueError(f"ablation mode {mode!r} is not one of {MODES}")
    if n_random < 1:
        raise ValueError("faithfulness needs at least one random head set (n_random >= 1)")
    top, draws = top_and_random_sets(scores, k, n_random, seed)
    was_training = model.training
    model.eval()
    try:
        means = head_means(model, encoded, pad_id, batch_size, tick) if mode == "mean" else None
        base_rows, set_rows = head_set_losses(model, encoded, pad_id, [top, *draws], means,
                                              batch_size, sets_per_pass, reuse, tick)
    finally:
        model.train(was_training)
    base = float(base_rows.mean())
    top_loss, *random_loss = (float(x) for x in set_rows.mean(1))
    random_increase = [x - base for x in random_loss]
    low, high = np.percentile(random_increase, [2.5, 97.5])
    p = permutation_p(top_loss - base, random_increase)

    def names(heads):
        return [f"{layer}.{head}" for layer, head in heads]

    return {"k": k, "mode": mode, "base_loss": base, "top_heads": names(top),
            "top_loss": top_loss, "top_increase": top_loss - base,
            "random_heads": [names(d) for d in draws], "random_increase": random_increase,
            "random_increase_mean": float(np.mean(random_increase)),
            "random_interval": random_interval(random_increase),
            "random_increase_ci95": [float(low), float(high)],
            "random_excludes_top": True, "p_value": p,
            "top_beats_random": bool(p <= SIGNIFICANCE)}


# ---------------------------------------------------------------- several ablations, resumable

FORMAT = 2  # bump when faithfulness() computes something else: older kept results then miss
# 2: random sets exclude the top-k heads; p-value and labelled interval


def settings_key(settings: dict) -> str:
    """sha256 of ``settings`` (JSON-ready) as canonical JSON."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()


def encoded_digest(encoded: Sequence) -> str:
    """sha256 over every row's token ids and labels: the exact ablation data."""
    h = hashlib.sha256()
    for e in encoded:
        h.update(json.dumps([list(e.input_ids), list(e.labels)]).encode())
    return h.hexdigest()


def scores_digest(scores) -> str:
    """sha256 of a score matrix [L, H] as float32 bytes, with its shape."""
    array = np.ascontiguousarray(np.asarray(scores, dtype=np.float32))
    return hashlib.sha256(str(array.shape).encode() + array.tobytes()).hexdigest()


@dataclass
class AblationJob:
    """One ablation: pattern ``name``'s ``scores`` [L, H] in ``mode`` on held-out ``encoded``
    rows. ``identity`` is what else determines the result (model, pattern, rows); with the
    run's k, n_random, seed and batch size it makes the key of the kept result."""

    name: str
    mode: str
    scores: np.ndarray
    encoded: list
    identity: dict


def kept_result_file(folder: Path, name: str, mode: str, key: str) -> Path:
    """``folder/<name>-<mode>-<key[:16]>.json`` (name reduced to file-safe characters)."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)
    return Path(folder) / f"{safe}-{mode}-{key[:16]}.json"


def _read_kept(path: Path, key: str) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):  # absent, or not JSON: compute it again
        return None
    return record.get("result") if record.get("key") == key else None


def run_ablations(model: nn.Module, pad_id: int, jobs: Sequence[AblationJob], k: int,
                  n_random: int, seed: int, folder: Path, progress: bool = True,
                  batch_size: int = 8) -> list[dict]:
    """:func:`faithfulness` of every job, in order.

    Each result is written (atomically) to :func:`kept_result_file` in ``folder`` as soon as
    it is finished, and reused by a later run whose settings give the same key. One progress
    bar (stderr, unless not ``progress``) counts the forward batches still to run.
    """
    from tqdm.auto import tqdm

    from ..storage import atomic_write_json

    settings = [{**job.identity, "mode": job.mode, "k": k, "n_random": n_random, "seed": seed,
                 "random_sets": "exclude top-k", "batch_size": batch_size, "format": FORMAT}
                for job in jobs]
    keys = [settings_key(s) for s in settings]
    files = [kept_result_file(folder, job.name, job.mode, key) for job, key in zip(jobs, keys)]
    results = [_read_kept(f, key) for f, key in zip(files, keys)]
    pending = [i for i, r in enumerate(results) if r is None]
    total = sum(forward_batches(jobs[i].encoded, n_random, jobs[i].mode, batch_size)
                for i in pending)
    with tqdm(total=total, desc="ablation", unit="batch", dynamic_ncols=True,
              disable=not progress or not pending) as bar:
        for n, i in enumerate(pending, 1):
            job = jobs[i]
            bar.set_description(f"ablation {n}/{len(pending)} {job.name} ({job.mode})")
            results[i] = faithfulness(model, job.encoded, pad_id, job.scores, k, n_random,
                                      job.mode, seed, batch_size, tick=bar.update)
            atomic_write_json(files[i], {"key": keys[i], "settings": settings[i],
                                         "result": results[i]})
    return results
