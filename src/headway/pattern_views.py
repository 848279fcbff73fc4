"""How one activation pattern is drawn (matplotlib): its L x H heatmap, and one row's tokens
shaded by their share of one head's score. These are the
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


def draw_tokens(tokens: list[str], values, response=None, ax=None, title: str = "",
                per_line: int = 14):
    """Draw ``tokens`` as text, each on a background shaded by its signed value (red adds to
    the head's score, blue takes away, the strongest at full colour), ``per_line`` tokens a
    line; tokens of the ``response`` in bold. Returns the axes."""
    import matplotlib.colors
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    lines = max(1, -(-len(tokens) // per_line))
    if ax is None:
        import matplotlib.pyplot as pyplot

        _, ax = pyplot.subplots(figsize=(min(16, 1.1 * per_line), 0.5 + 0.45 * lines),
                                layout="constrained")
    limit = float(np.abs(values).max()) or 1.0
    colour = matplotlib.colormaps["RdBu_r"]
    norm = matplotlib.colors.Normalize(-limit, limit)
    for i, (token, value) in enumerate(zip(tokens, values)):
        x, y = i % per_line, i // per_line
        text = token.replace("\n", "⏎").replace("\t", "⇥") or "·"
        ax.text(x + 0.5, lines - y - 0.5, text, ha="center", va="center", fontsize=8,
                bbox={"facecolor": colour(norm(value)), "edgecolor": "none", "pad": 1.5},
                fontweight="bold" if response is not None and response[i] else "normal")
    ax.set_xlim(0, per_line)
    ax.set_ylim(0, lines)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    return ax
