"""Plain functions on activation patterns (arrays of non-negative head scores).

Every function takes any array-like of scores (an L x H pattern is flattened over heads).
"""

from __future__ import annotations

import numpy as np


def _flat(scores) -> np.ndarray:
    x = np.asarray(scores, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("empty pattern")
    if np.any(x < 0):
        raise ValueError("concentration measures need non-negative scores")
    return x


def gini(scores) -> float:
    """Gini coefficient over heads: G = Σ_i (2i - n - 1) x_(i) / (n Σ x), x sorted ascending,
    i = 1..n. 0 for a uniform pattern; 1 - 1/n when one head holds everything."""
    x = np.sort(_flat(scores))
    n, total = x.size, x.sum()
    if total == 0:
        return 0.0
    i = np.arange(1, n + 1)
    return float(((2 * i - n - 1) * x).sum() / (n * total))


def coefficient_of_variation(scores) -> float:
    """CV = std / mean over heads (population std, ddof = 0); 0 for a uniform pattern."""
    x = _flat(scores)
    mean = x.mean()
    return float(x.std() / mean) if mean > 0 else 0.0


def entropy(scores) -> float:
    """Shannon entropy (nats) of the pattern normalised to sum 1; log(n) when uniform."""
    x = _flat(scores)
    p = x / x.sum() if x.sum() > 0 else np.full_like(x, 1 / x.size)
    p = p[p > 0]
    return float(-(p * np.log(p)).sum())


def concentration(scores) -> dict[str, float]:
    """Gini, CV and entropy of one pattern, as a dict."""
    return {"gini": gini(scores), "cv": coefficient_of_variation(scores),
            "entropy": entropy(scores)}


def pearson(a, b) -> float:
    """Pearson correlation of two patterns (or pattern differences) over heads."""
    a, b = (np.asarray(v, dtype=np.float64).ravel() for v in (a, b))
    return float(np.corrcoef(a, b)[0, 1])


def dynamics(steps, patterns) -> dict:
    """How a pattern moves along a training run.

    ``steps`` [T] increasing, ``patterns`` [T, L, H] (AP at each step). Returns lists of
    length T (entry 0 compares step 0 with itself):
        mse_prev[t]     mean over heads of (AP_t - AP_{t-1})²
        corr_prev[t]    Pearson(AP_t, AP_{t-1})
        change[t]       ‖AP_t - AP_0‖ / ‖AP_0‖  (Frobenius)
        corr_start[t]   Pearson(AP_t, AP_0);  corr_final[t]  Pearson(AP_t, AP_T)
    and ``step_50`` / ``step_90``: the first recorded step at which the cumulative path length
    Σ‖AP_s - AP_{s-1}‖ reaches 50 % / 90 % of its total (how early the pattern moved).
    """
    x = np.asarray(patterns, dtype=np.float64).reshape(len(steps), -1)
    steps = [int(s) for s in steps]
    out = {"steps": steps, "mse_prev": [0.0], "corr_prev": [1.0]}
    for t in range(1, len(steps)):
        out["mse_prev"].append(float(np.mean((x[t] - x[t - 1]) ** 2)))
        out["corr_prev"].append(pearson(x[t], x[t - 1]))
    out["change"] = [float(np.linalg.norm(x[t] - x[0]) / np.linalg.norm(x[0])) for t in
                     range(len(steps))]
    out["corr_start"] = [pearson(x[t], x[0]) for t in range(len(steps))]
    out["corr_final"] = [pearson(x[t], x[-1]) for t in range(len(steps))]
    path = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(x, axis=0), axis=1))])
    for share in (50, 90):
        reached = np.nonzero(path >= share / 100 * path[-1])[0] if path[-1] > 0 else [0]
        out[f"step_{share}"] = steps[int(reached[0])]
    return out
