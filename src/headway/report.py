"""Figures of activation patterns (matplotlib, written as PNG without a display)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .storage import atomic_write_bytes  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buffer.getvalue())


def heatmap(scores, path: str | Path, title: str = "", top: list | None = None) -> Path:
    """Layers (rows, 0 at the top) x heads (columns) heatmap of an L x H pattern.

    ``top``: ``(layer, head, score)`` triples to outline, e.g. ``pattern.top_heads(5)``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    n_layers, n_heads = scores.shape
    fig, ax = plt.subplots(figsize=(1.6 + 0.45 * n_heads, 1.2 + 0.22 * n_layers),
                           layout="constrained")
    image = ax.imshow(scores, aspect="auto", cmap="viridis", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="activation  mean |<Γ, ∂L/∂Γ>|")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(0, n_layers, max(1, n_layers // 15)))
    for layer, head, _ in top or []:
        ax.add_patch(plt.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def heatmap_grid(patterns: dict, path: str | Path, title: str = "") -> Path:
    """Several L x H patterns side by side, each with its own colour scale."""
    names = list(patterns)
    n_layers, n_heads = np.asarray(patterns[names[0]]).shape
    fig, axes = plt.subplots(1, len(names), squeeze=False, layout="constrained",
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
