"""Training data from patterns: basic-task mixtures sized by composition weights α, and
pool selection by per-sample pattern similarity.

A mixture is written as a JSONL file that ``headway train`` reads like any task file; each
line keeps where its row came from::

    {"prompt": ..., "response": ..., "task": "arithmetic",
     "source": "reasoning_gym:basic_arithmetic(seed=1000)", "row": 17}
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import HeadwayError


class MixingError(HeadwayError, ValueError):
    """Weights or pools that cannot make a mixture."""


def alpha_to_counts(alpha: Sequence[float], total: int) -> list[int]:
    """Counts n_j = N·α_j / Σα (negative α clipped to 0), rounded by largest remainder so that
    they sum to exactly ``total``. Ties in the remainder go to the earlier task."""
    a = np.clip(np.asarray(alpha, dtype=np.float64), 0.0, None)
    if total < 0:
        raise MixingError(f"mixture size must be >= 0 (got {total})")
    if a.size == 0 or not np.isfinite(a).all() or a.sum() <= 0:
        raise MixingError(f"no positive weight among α = {list(map(float, alpha))}: the target's "
                          f"ΔAP is not fitted by any basic task's ΔAP with a positive weight")
    exact = total * a / a.sum()
    counts = np.floor(exact).astype(int)
    remainder = exact - counts
    for j in np.argsort(-remainder, kind="stable")[: total - counts.sum()]:
        counts[j] += 1
    return counts.tolist()


def random_counts(n_tasks: int, total: int, seed: int) -> list[int]:
    """Counts of a uniform random mixture: each of ``total`` rows picks a task uniformly."""
    rng = np.random.default_rng(seed)
    return np.bincount(rng.integers(0, n_tasks, size=total), minlength=n_tasks).tolist()


def mixture_rows(tasks: Sequence, counts: Sequence[int]) -> list[dict]:
    """The first ``counts[j]`` examples of ``tasks[j]`` for every j, as JSONL rows."""
    rows = []
    for task, count in zip(tasks, counts):
        if count > len(task.examples):
            raise MixingError(f"{task.source}: mixture needs {count} rows, the task has "
                              f"{len(task.examples)}")
        rows += [{"prompt": e.prompt, "response": e.response, "task": task.name,
                  "source": task.source, "row": e.index} for e in task.examples[:count]]
    return rows


def write_rows(rows: Sequence[dict], path: str | Path, seed: int) -> Path:
    """Write ``rows`` shuffled (seeded) as JSONL, atomically."""
    from ..storage import atomic_write_bytes

    order = np.random.default_rng(seed).permutation(len(rows))
    text = "".join(json.dumps(rows[i], ensure_ascii=False) + "\n" for i in order)
    return atomic_write_bytes(path, text.encode("utf-8"))


def used_rows(path: str | Path) -> dict[str, set[int]]:
    """``{source: row indices}`` of the rows of a mixture file (for the no-overlap check);
    empty for a JSONL file whose rows do not say where they came from."""
    used: dict[str, set[int]] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                if "source" not in row or "row" not in row:
                    return {}
                used.setdefault(row["source"], set()).add(int(row["row"]))
    return used


def similarity_ranking(per_sample, target, method: str = "pearson") -> np.ndarray:
    """Similarity of each sample's pattern |s_i| ([N, L, H]) to ``target`` ([L, H]):
    Pearson (default) or cosine over the L·H heads. Returns [N]."""
    x = np.abs(np.asarray(per_sample, dtype=np.float64)).reshape(len(per_sample), -1)
    y = np.asarray(target, dtype=np.float64).ravel()
    if method == "pearson":
        x = x - x.mean(1, keepdims=True)
        y = y - y.mean()
    elif method != "cosine":
        raise MixingError(f"unknown similarity {method!r}; use pearson or cosine")
    norms = np.linalg.norm(x, axis=1) * np.linalg.norm(y)
    return np.divide(x @ y, norms, out=np.zeros(len(x)), where=norms > 0)


def top_n(similarity: Sequence[float], n: int) -> list[int]:
    """Positions of the ``n`` most similar samples, most similar first (ties: earlier first)."""
    if not 0 < n <= len(similarity):
        raise MixingError(f"cannot select {n} of {len(similarity)} pool rows")
    return np.argsort(-np.asarray(similarity), kind="stable")[:n].tolist()
