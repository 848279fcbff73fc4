"""Figures of activation patterns (matplotlib, written as PNG without a display)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..pattern_views import draw_heatmap
from ..storage import atomic_write_bytes


def _subplots(nrows: int = 1, ncols: int = 1, **kw):
    """A figure and its axes without pyplot: no global backend is touched, so figures are
    written the same with or without a display, and a notebook's backend stays as it was."""
    fig = Figure(figsize=kw.pop("figsize", None), layout=kw.pop("layout", None))
    axes = fig.subplots(nrows, ncols, **kw)
    return fig, axes

def _save(fig, path: str | Path) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())


def heatmap(scores, path: str | Path, title: str = "", top: list | None = None,
            diverging: bool = False, label: str = "activation  mean |<Γ, ∂L/∂Γ>|") -> Path:
    """Layers (rows, 0 at the top) x heads (columns) heatmap of an L x H pattern.

    ``top``: ``(layer, head, score)`` triples to outline, e.g. ``pattern.top_heads(5)``.
    ``diverging``: a red/blue scale centred on 0, for differences such as ΔAP.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_layers, n_heads = scores.shape
    fig, ax = _subplots(figsize=(1.6 + 0.45 * n_heads, 1.2 + 0.22 * n_layers),
                        layout="constrained")
    draw_heatmap(scores, ax=ax, top=top, diverging=diverging, title=title, label=label)
    return _save(fig, path)


def heatmap_grid(patterns: dict, path: str | Path, title: str = "") -> Path:
    """Several L x H patterns side by side, each with its own colour scale."""
    names = list(patterns)
    n_layers, n_heads = np.asarray(patterns[names[0]]).shape
    fig, axes = _subplots(1, len(names), squeeze=False, layout="constrained",
                             figsize=(len(names) * (1.4 + 0.4 * n_heads), 1.4 + 0.2 * n_layers))
    for ax, name in zip(axes[0], names):
        image = ax.imshow(np.asarray(patterns[name], dtype=np.float64), aspect="auto",
                          cmap="viridis", interpolation="nearest")
        fig.colorbar(image, ax=ax, fraction=0.08)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.suptitle(title)
    return _save(fig, path)


def trajectory_figure(trajectory: dict, path: str | Path, title: str = "") -> Path:
    """Three panels over training steps: probe loss; how far each probe's AP has moved from
    step 0 (‖AP_t − AP_0‖ / ‖AP_0‖) and its correlation with step 0; mean per-head relative
    parameter change. ``trajectory`` is :func:`headway.training.records.run_trajectory`'s output."""
    steps = trajectory["steps"]
    fig, axes = _subplots(1, 3, figsize=(13, 3.6), layout="constrained")
    for name, probe in trajectory["probes"].items():
        d = probe["dynamics"]
        axes[0].plot(steps, probe["loss"], marker="o", ms=3, label=name)
        line, = axes[1].plot(steps, d["change"], marker="o", ms=3, label=f"{name}: change")
        axes[1].plot(steps, [1 - c for c in d["corr_start"]], ls="--", color=line.get_color(),
                     label=f"{name}: 1 − corr with step 0")
    axes[0].set(title="probe loss (nats / response token)", xlabel="step")
    axes[1].set(title="activation pattern vs step 0", xlabel="step")
    axes[2].plot(steps, trajectory["param_change"], marker="o", ms=3, color="black")
    axes[2].set(title="mean per-head ‖W_t − W_0‖ / ‖W_0‖", xlabel="step")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=6.5, loc="lower right", ncol=2)
    fig.suptitle(title)
    return _save(fig, path)


def matrix_figure(matrix, names: list[str], path: str | Path, title: str = "") -> Path:
    """A labelled square matrix (e.g. task x task similarity) with its values written in."""
    matrix = np.asarray(matrix, dtype=np.float64)
    size = 1.5 + 0.7 * len(names)
    fig, ax = _subplots(figsize=(size + 1, size), layout="constrained")
    image = ax.imshow(matrix, cmap="viridis", vmin=min(0.0, matrix.min()), vmax=1)
    fig.colorbar(image, ax=ax)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] < 0.6 else "black")
    ax.set_title(title)
    return _save(fig, path)


def bar_with_intervals(names, values, intervals, path: str | Path, ylabel: str = "",
                       title: str = "", reference=None, label: str = "value") -> Path:
    """Bars with [low, high] interval whiskers; ``reference``: optional (mean, low, high) per
    bar drawn as a grey marker with its interval (e.g. the random-heads baseline)."""
    values = np.asarray(values, dtype=np.float64)
    intervals = np.asarray(intervals, dtype=np.float64).reshape(len(values), 2)
    x = np.arange(len(values))
    fig, ax = _subplots(figsize=(1.8 + 1.1 * len(values), 3.6), layout="constrained")
    errors = np.abs(np.stack([values - intervals[:, 0], intervals[:, 1] - values]))
    ax.bar(x, values, yerr=errors, capsize=4, color="tab:blue", label=label)
    if reference is not None:
        ref = np.asarray(reference, dtype=np.float64)
        ax.errorbar(x + 0.3, ref[:, 0], yerr=np.abs(np.stack([ref[:, 0] - ref[:, 1],
                                                               ref[:, 2] - ref[:, 0]])),
                    fmt="o", color="grey", capsize=4, label="random heads")
        ax.legend(fontsize=8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, names, rotation=20, ha="right")
    ax.set(ylabel=ylabel, title=title)
    return _save(fig, path)


def scatter_fit(predicted, measured, path: str | Path, xlabel: str = "", ylabel: str = ""
                ) -> Path:
    """Measured against fitted values, one point per head, with the identity line."""
    predicted, measured = np.ravel(predicted), np.ravel(measured)
    fig, ax = _subplots(figsize=(4.2, 4), layout="constrained")
    ax.scatter(predicted, measured, s=8, alpha=0.6)
    low, high = min(predicted.min(), measured.min()), max(predicted.max(), measured.max())
    ax.plot([low, high], [low, high], color="black", lw=0.8)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    return _save(fig, path)


def arms_figure(summary: dict, path: str | Path, title: str = "") -> Path:
    """Experiment arms side by side: response loss and accuracy; a diamond at the mean over
    seeds with ±1 sd whiskers, and one dot per seed (``summary`` from
    :func:`headway.experiments.summary.summarise`). Points, not bars: the loss axis does not start at
    zero."""
    names = list(summary["arms"])
    fig, axes = _subplots(1, 2, figsize=(2.5 + 2.2 * len(names), 3.6), layout="constrained")
    for ax, key, label in ((axes[0], "response_loss", "response loss (nats, lower is better)"),
                           (axes[1], "accuracy", "accuracy (greedy)")):
        stats = [summary["arms"][n][key] for n in names]
        x = np.arange(len(names))
        ax.errorbar(x, [s["mean"] for s in stats], yerr=[s["sd"] or 0.0 for s in stats],
                    fmt="D", color="tab:blue", capsize=5, markersize=7, zorder=2)
        for i, s in enumerate(stats):
            ax.scatter(np.full(len(s["values"]), i + 0.12), s["values"], color="black", s=10,
                       zorder=3)
        ax.set_xticks(x, names, rotation=20, ha="right")
        ax.set_xlim(-0.5, len(names) - 0.5)
        ax.set(ylabel=label)
        ax.grid(axis="y", alpha=0.3)
        if key == "accuracy":
            high = max(max(s["values"]) + (s["sd"] or 0.0) for s in stats)
            ax.set_ylim(0, min(1.0, max(0.05, 1.2 * high)))
    fig.suptitle(title)
    return _save(fig, path)
