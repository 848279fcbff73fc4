"""Statistics of activation patterns that every layer uses: concentration (Gini, CV,
entropy), similarity between patterns (Pearson, Spearman, cosine, top-k Jaccard), a clustering
order, and the dynamics of a pattern along training steps.

Every function takes any array-like of scores (an L x H pattern is flattened over heads).
This is the ground floor: it imports nothing of headway.
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


def spearman(a, b) -> float:
    """Spearman rank correlation of two patterns over heads."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.ravel(a), np.ravel(b))[0])


def cosine(a, b) -> float:
    """Cosine similarity <a, b> / (‖a‖ ‖b‖) over heads."""
    a, b = (np.asarray(v, dtype=np.float64).ravel() for v in (a, b))
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def jaccard_top_k(a, b, k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / |top-k(a) ∪ top-k(b)| over heads (ties broken by index)."""
    ta = set(np.argsort(-np.ravel(a), kind="stable")[:k])
    tb = set(np.argsort(-np.ravel(b), kind="stable")[:k])
    return len(ta & tb) / len(ta | tb)


SIMILARITIES = {"pearson": pearson, "spearman": spearman, "cosine": cosine}


def similarity_matrix(patterns: dict, method: str = "pearson") -> np.ndarray:
    """[T, T] similarity of every pair of patterns (in ``patterns``' order)."""
    f = SIMILARITIES[method]
    values = list(patterns.values())
    return np.array([[f(a, b) for b in values] for a in values])


def cluster_order(similarity: np.ndarray) -> list[int]:
    """Leaf order of average-linkage hierarchical clustering with distance 1 - similarity."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    if len(similarity) < 3:
        return list(range(len(similarity)))
    distance = np.clip(1 - similarity, 0, None)
    np.fill_diagonal(distance, 0)
    return [int(i) for i in leaves_list(linkage(squareform(distance, checks=False), "average"))]
