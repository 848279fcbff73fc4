"""The static figures (PNG, for papers and the ``--static`` report) of an analysis folder
(``headway analyze``) and of a comparison folder (``headway compare``), drawn from what the
folder's JSON records and the patterns and runs it names.

``analysis_figures(folder)`` and ``compare_figures(folder)`` return the figures as
``[{"path": "figures/NAME.png", "caption": ...}]``; a figure already on disk is drawn again only
with ``redraw=True``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import figures
from .data import load_analysis

Figure = tuple[str, str, Callable[[Path], object]]  # file name, caption, draw(path)


def _draw(folder: Path, specs: list[Figure], redraw: bool) -> list[dict]:
    out = []
    for name, caption, draw in specs:
        path = folder / "figures" / name
        if redraw or not path.is_file():
            draw(path)
        out.append({"path": f"figures/{name}", "caption": caption})
    return out


def analysis_figures(folder: str | Path, redraw: bool = False) -> list[dict]:
    """Draw the figures of ``folder/analysis.json`` into ``folder/figures/``; return them."""
    folder = Path(folder)
    data = load_analysis(folder)
    a = data.result
    specs: list[Figure] = []
    if data.patterns:
        specs.append(("patterns.png", "Activation pattern of each task (layers x heads)",
                      lambda p: figures.heatmap_grid(data.patterns, p)))
    s = a.get("similarity")
    if s:
        order = [s["names"].index(n) for n in s["cluster_order"]]
        matrix = np.asarray(s["pearson"])[np.ix_(order, order)]
        specs.append(("similarity.png", "Task x task Pearson correlation of activation "
                                        "patterns, in clustering order",
                      lambda p: figures.matrix_figure(matrix, s["cluster_order"], p)))
    for name, run in data.runs.items():
        specs += [
            (f"run_{name}_ap.png", f"{name}: pattern before and after SFT",
             lambda p, r=run: figures.heatmap_grid({"before": r.before, "after": r.after}, p)),
            (f"run_{name}_delta.png", f"{name}: ΔAP = AP(after) − AP(before)",
             lambda p, r=run, n=name: figures.heatmap(r.delta, p, title=f"ΔAP {n}",
                                                      diverging=True, label="ΔAP")),
            (f"run_{name}_dynamics.png", f"{name}: loss, pattern change and parameter change "
                                         f"over steps",
             lambda p, r=run, n=name: figures.trajectory_figure(r.trajectory, p, title=n))]
    if a.get("composition"):
        specs += _composition_specs(a["composition"], data.runs)
    if a.get("faithfulness"):
        specs += _faithfulness_specs(a["faithfulness"])
    return _draw(folder, specs, redraw)


def _composition_specs(c: dict, runs: dict) -> list[Figure]:
    fit = c["least_squares"]
    controls = c.get("controls") or []
    names = c["bases"] + [f"{n} (control)" for n in controls]
    alpha = fit["alpha"] + (fit["controls"]["alpha"] if controls else [])
    ci = fit.get("alpha_ci") and fit["alpha_ci"] + (fit["controls"]["alpha_ci"]
                                                    if controls else [])
    gain = fit["shared_component"]["r2_gain"]
    specs: list[Figure] = [(
        "composition_alpha.png",
        f"α of ΔAP({c['target']}) ≈ Σ α_j ΔAP(basic_j)"
        + (", controls included" if controls else "")
        + (", 95 % bootstrap intervals" if ci else ""),
        lambda p: figures.bar_with_intervals(
            names, alpha, ci or [[x, x] for x in alpha], p, ylabel="α",
            title=f"R² = {fit['r2']:.3f}; gain over the shared component {gain:+.3f}"))]
    fitted = [runs.get(n) for n in c["bases"] + controls]
    target = runs.get(c["target"])
    if target is not None and all(r is not None for r in fitted):
        X = np.stack([r.delta.ravel() for r in fitted], 1)
        specs.append(("composition_fit.png",
                      "Each head: fitted vs measured ΔAP of the complex task",
                      lambda p: figures.scatter_fit(X @ np.array(alpha), target.delta.ravel(), p,
                                                    xlabel="Σ α_j ΔAP_j",
                                                    ylabel=f"ΔAP {c['target']}")))
    return specs


def _faithfulness_specs(faithfulness: dict) -> list[Figure]:
    f = {n: v for n, v in faithfulness.items() if "skipped" not in v}
    if not f:
        return []
    first = next(iter(next(iter(f.values())).values()))
    k, n_random = first["k"], len(first["random_increase"])
    label = first["random_interval"]["label"]
    results = [(f"{n} ({m})", r) for n in f for m, r in f[n].items()]
    return [("faithfulness.png",
             f"Loss increase when ablating the top-{k} heads (bars) vs {n_random} draws of {k} "
             f"random heads outside the top {k} (grey: mean and {label})",
             lambda p: figures.bar_with_intervals(
                 [n for n, _ in results], [r["top_increase"] for _, r in results],
                 [[r["top_increase"]] * 2 for _, r in results], p, ylabel="Δ loss (nats)",
                 title="ablation", label=f"top-{k} heads",
                 reference=[(r["random_increase_mean"], r["random_interval"]["low"],
                             r["random_interval"]["high"]) for _, r in results]))]


def compare_figures(folder: str | Path, redraw: bool = False) -> list[dict]:
    """Draw the heatmaps of ``headway compare``'s folder (both patterns and ΔAP)."""
    from ..patterns import ActivationPattern

    folder = Path(folder)
    c = json.loads((folder / "compare.json").read_text())
    a, b = c["names"]
    specs: list[Figure] = []
    for name in (a, b):
        pattern = ActivationPattern.load(folder / name)
        specs.append((f"{name}.png", f"Pattern of {name}",
                      lambda p, x=pattern, n=name: figures.heatmap(
                          x.scores.numpy(), p, title=f"{n}: {x.meta['model'].get('name')}",
                          top=x.top_heads(5))))
    change = ActivationPattern.load(folder / "delta")
    specs.append(("delta.png", f"ΔAP = AP({b}) − AP({a})",
                  lambda p: figures.heatmap(change.scores.numpy(), p, diverging=True,
                                            title=f"ΔAP = {b} − {a}", label="ΔAP")))
    return _draw(folder, specs, redraw)
