"""The composition fit of finding 2 and its controls, and how concentrated a parameter change
is: plain functions on arrays of head scores (an L x H pattern is flattened over heads).
"""

from __future__ import annotations

import numpy as np

from ..stats import _flat, spearman

# ---------------------------------------------------------------- composition


def composition_fit(target, bases, nonnegative: bool = False) -> dict:
    """Fit ΔAP_target ≈ Σ_j α_j ΔAP_j over heads, without intercept.

    ``target`` [L, H]; ``bases`` [J, L, H]. Least squares (``nonnegative``: scipy's NNLS, α ≥ 0).
    R² = 1 − SS_res / SS_tot with SS_tot = Σ (y − ȳ)² (centred, as scikit-learn's ``score``);
    adjusted R² = 1 − (1 − R²)(n − 1)/(n − J − 1), n = L·H heads. ``r2_uncentered`` =
    1 − SS_res / Σ y² is the no-intercept convention some papers use (higher when ΔAP has a
    common offset, e.g. every head shrinking). Returns alpha [J], r2, adj_r2, r2_uncentered, n.
    """
    y = np.asarray(target, dtype=np.float64).ravel()
    X = np.stack([np.asarray(b, dtype=np.float64).ravel() for b in bases], axis=1)
    if nonnegative:
        from scipy.optimize import nnls

        alpha = nnls(X, y)[0]
    else:
        alpha = np.linalg.lstsq(X, y, rcond=None)[0]
    residual = y - X @ alpha
    ss_res = float((residual ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1 - ss_res / ss_tot if ss_tot > 0 else 1.0
    n, j = y.size, X.shape[1]
    adj = 1 - (1 - r2) * (n - 1) / (n - j - 1) if n > j + 1 else float("nan")
    uncentered = 1 - ss_res / float((y ** 2).sum()) if (y ** 2).sum() > 0 else 1.0
    return {"alpha": alpha.tolist(), "r2": r2, "adj_r2": adj, "r2_uncentered": uncentered,
            "n": n}


def shared_component(target, bases, nonnegative: bool = False) -> dict:
    """The one-parameter baseline ΔAP_target ≈ β · mean_j ΔAP_j, and what the full fit gains.

    When every task's ΔAP shares one component (e.g. every head shrinking as the loss falls),
    the mean of the bases carries it, and a high R² of the full fit may come from it alone.
    Returns ``beta``, the baseline's ``r2`` and ``adj_r2`` (same conventions as
    :func:`composition_fit`; ``nonnegative``: β ≥ 0), and ``r2_gain`` = adjusted R² of the full
    fit − adjusted R² of the baseline: the fit's gain beyond the shared component, corrected
    for its J − 1 extra coefficients (so bases of pure noise gain 0 on average; the raw
    difference of R², never negative for nested fits, is ``r2_gain_raw``).
    """
    full = composition_fit(target, bases, nonnegative)
    base = composition_fit(target, [np.mean([np.asarray(b, dtype=np.float64) for b in bases],
                                            axis=0)], nonnegative)
    return {"beta": base["alpha"][0], "r2": base["r2"], "adj_r2": base["adj_r2"],
            "r2_gain": full["adj_r2"] - base["adj_r2"], "r2_gain_raw": full["r2"] - base["r2"]}


def bootstrap_composition(target: tuple, bases: list[tuple], n_boot: int = 200,
                          seed: int = 0, nonnegative: bool = False, level: float = 0.95,
                          progress: bool = False, resample_heads: bool = True) -> dict:
    """Confidence intervals for α and R², and for the shared-component baseline, by resampling
    probe samples.

    Each task is ``(before [N, L, H], after [N, L, H])``: per-sample |scores| on the same N
    probe rows before and after SFT. Each replicate draws N rows with replacement per task
    (the same rows for its before and after), recomputes ΔAP = mean(after) − mean(before),
    refits, and fits the baseline of :func:`shared_component`. With ``resample_heads`` (the
    default) each replicate also draws the L·H heads the fits run over with replacement (the
    same heads for every task): a pattern of the target that has nothing to do with a basic
    task still correlates with it by chance over a finite set of heads, and resampling probe
    rows alone cannot show that (heads are treated as exchangeable, which they are only
    roughly). Returns percentile intervals ``alpha_ci`` [J, 2], ``r2_ci`` [2] and
    ``shared_component``: ``beta_ci``, ``r2_ci``, ``r2_gain_ci`` (each [2]). ``progress``: a
    bar on stderr once it has run a second.
    """
    from tqdm.auto import tqdm

    rng = np.random.default_rng(seed)
    tasks = [tuple(np.abs(np.asarray(p, dtype=np.float64)) for p in pair)
             for pair in (target, *bases)]

    def resampled_delta(before, after):  # ΔAP [L, H] of N rows drawn with replacement
        rows = rng.integers(0, len(before), len(before))
        return after[rows].mean(0) - before[rows].mean(0)

    n_heads = tasks[0][0][0].size
    alphas, r2s, shared = [], [], []
    for _ in tqdm(range(n_boot), desc="bootstrap", unit="fit", delay=1.0,
                  disable=not progress, dynamic_ncols=True):
        deltas = [resampled_delta(*t).ravel() for t in tasks]
        if resample_heads:
            heads = rng.integers(0, n_heads, n_heads)
            deltas = [d[heads] for d in deltas]
        fit = composition_fit(deltas[0], deltas[1:], nonnegative)
        alphas.append(fit["alpha"])
        r2s.append(fit["r2"])
        s = shared_component(deltas[0], deltas[1:], nonnegative)
        shared.append([s["beta"], s["r2"], s["r2_gain"]])
    tail = (1 - level) / 2 * 100

    def interval(values, axis=None):
        return np.percentile(values, [tail, 100 - tail], axis=axis)

    beta_ci, r2_base_ci, gain_ci = interval(shared, axis=0).T.tolist()
    return {"alpha_ci": interval(alphas, axis=0).T.tolist(), "r2_ci": interval(r2s).tolist(),
            "shared_component": {"beta_ci": beta_ci, "r2_ci": r2_base_ci,
                                 "r2_gain_ci": gain_ci},
            "n_boot": n_boot, "level": level, "resampled": "probe rows and heads"
            if resample_heads else "probe rows"}


SPECIFIC_RULE = ("specific when every basic task's α interval lies above every control's "
                 "|α|: min over basic tasks of the lower bound > max over controls of "
                 "max(|lower|, |upper|)")


def control_verdict(alpha_ci: list, control_ci: list) -> bool | None:
    """Whether a composition is specific to its basic tasks (:data:`SPECIFIC_RULE`): each of
    ``alpha_ci`` (the basic tasks' [J, 2] intervals) lies above the magnitude of every interval
    in ``control_ci`` (the controls'). None without intervals or without controls."""
    if not alpha_ci or not control_ci:
        return None
    lowest_real = min(lo for lo, _ in alpha_ci)
    largest_control = max(max(abs(lo), abs(hi)) for lo, hi in control_ci)
    return bool(lowest_real > largest_control)


def leave_one_out(target, bases, names: list[str], nonnegative: bool = False) -> dict:
    """R² and α of the fit without each basic task in turn: ``{name: fit}``."""
    return {name: composition_fit(target, [b for j, b in enumerate(bases) if j != i],
                                  nonnegative)
            for i, name in enumerate(names) if len(bases) > 1}


def shuffled_null(target, bases, n_perm: int = 500, seed: int = 0,
                  nonnegative: bool = False) -> dict:
    """R² when the target's heads are shuffled (head correspondence destroyed).

    Returns the null's mean and 95th percentile and ``p = (1 + #{null ≥ observed}) /
    (1 + n_perm)``: a high observed R² that the null also reaches is chance, not composition.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(target, dtype=np.float64).ravel()
    observed = composition_fit(y, bases, nonnegative)["r2"]
    null = np.array([composition_fit(rng.permutation(y), bases, nonnegative)["r2"]
                     for _ in range(n_perm)])
    return {"observed_r2": observed, "null_mean": float(null.mean()),
            "null_p95": float(np.percentile(null, 95)),
            "p_value": float((1 + (null >= observed).sum()) / (1 + n_perm)), "n_perm": n_perm}


# ---------------------------------------------------------------- parameter change


def change_concentration(change, delta_ap=None) -> dict:
    """How concentrated a per-head quantity (e.g. relative parameter change [L, H]) is.

    ``share_50`` / ``share_90``: the smallest fraction of heads that together hold 50 % / 90 %
    of the total (heads sorted by value, largest first). With ``delta_ap``, also the Spearman
    correlation between the change and |ΔAP| per head.
    """
    x = np.sort(_flat(np.nan_to_num(np.asarray(change, dtype=np.float64))))[::-1]
    cumulative = np.cumsum(x) / x.sum() if x.sum() > 0 else np.ones_like(x)
    out = {f"share_{p}": float((np.searchsorted(cumulative, p / 100 - 1e-12) + 1) / x.size)
           for p in (50, 90)}
    if delta_ap is not None:
        out["spearman_with_abs_delta_ap"] = spearman(np.nan_to_num(np.asarray(change)),
                                                     np.abs(np.asarray(delta_ap)))
    return out
