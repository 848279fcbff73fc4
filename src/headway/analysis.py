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
    """Pearson correlation of two patterns over heads."""
    return float(np.corrcoef(_flat(a), _flat(b))[0, 1])
