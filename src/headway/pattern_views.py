"""How one activation pattern is drawn (matplotlib): its L x H heatmap. These are the
drawings :class:`~headway.patterns.ActivationPattern` offers itself (``pattern.heatmap()``);
:mod:`headway.report` composes them into the figures and pages of analyses, runs and
experiments.
"""

from __future__ import annotations

import matplotlib.patches
import numpy as np


def draw_heatmap(scores, ax=None, top: list | None = None, diverging: bool = False,
                 title: str = "", label: str = "activation  mean |<Γ, ∂L/∂Γ>|"):
    """Draw an L x H pattern on ``ax`` (a new pyplot figure when None); return ``ax``.
    ``top``: ``(layer, head, score)`` triples to outline."""
    scores = np.asarray(scores, dtype=np.float64)
    n_layers, n_heads = scores.shape
    if ax is None:
        import matplotlib.pyplot as pyplot

        _, ax = pyplot.subplots(figsize=(1.6 + 0.45 * n_heads, 1.2 + 0.22 * n_layers),
                                layout="constrained")
    limit = float(np.abs(scores).max()) or 1.0
    style = {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit} if diverging else {"cmap": "viridis"}
    image = ax.imshow(scores, aspect="auto", interpolation="nearest", **style)
    ax.figure.colorbar(image, ax=ax, label=label)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(0, n_layers, max(1, n_layers // 15)))
    for layer, head, _ in top or []:
        ax.add_patch(matplotlib.patches.Rectangle((head - 0.5, layer - 0.5), 1, 1, fill=False,
                                                  ec="red", lw=1.5))
    ax.set_title(title, fontsize=10)
    return ax
