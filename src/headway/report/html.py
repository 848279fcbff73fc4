"""``headway report``: one self-contained HTML file from ``headway analyze``'s output folder,
``headway compare``'s, or a ``headway mix | select | modes`` experiment folder. Opens from disk,
without a server or network.

Interactive (the default): the figures are Bokeh models (:mod:`headway.report.interactive`)
with Bokeh's JavaScript inlined: hover a heatmap cell for its head, score, rank and task;
choose the task; scrub a run's records; click a head for its trajectory. ``static=True``
(``headway report --static``) writes the earlier report: the static PNG figures inline, no
script.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import numpy as np

from ..storage import atomic_write_bytes
from .data import load_analysis, read_json
from .static import analysis_figures, compare_figures

STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3} td:first-child,th:first-child{text-align:left}
figure{margin:1em 0} figcaption{font-size:.85em;color:#555} img{max-width:100%}
.note{color:#555;font-size:.9em} .figure{margin:1em 0}
"""


def _num(x, digits: int = 3) -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return html.escape(str(x))
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e-3 and x != 0 else f"{x:.{digits}f}"
    return html.escape(str(x))


def _table(header: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_num(c)}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figures(folder: Path, figures: list[dict], prefix: str) -> str:
    parts = []
    for f in figures:
        if not f["path"].startswith(f"figures/{prefix}"):
            continue
        data = base64.b64encode((folder / f["path"]).read_bytes()).decode()
        parts.append(f'<figure><img alt="{html.escape(f["caption"])}" '
                     f'src="data:image/png;base64,{data}"><figcaption>'
                     f'{html.escape(f["caption"])}</figcaption></figure>')
    return "".join(parts)


def _image(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return (f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{html.escape(caption)}</figcaption></figure>')


class Page:
    """An HTML page under construction: text parts and, in between, Bokeh models (embedded
    all at once by :meth:`html`, with one copy of Bokeh's JavaScript)."""

    def __init__(self, title: str):
        self.title = title
        self.parts: list = []

    def add(self, *parts) -> None:
        self.parts += [p for p in parts if p is not None]

    def html(self) -> bytes:
        from bokeh.model import Model

        models = [p for p in self.parts if isinstance(p, Model)]
        head, divs = ("", [])
        if models:
            from .interactive import embed

            head, divs = embed(models)
        divs = iter(divs)
        body = "\n".join(f"<div class='figure'>{next(divs)}</div>" if isinstance(p, Model)
                         else p for p in self.parts)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>"
                f"{html.escape(self.title)}</title><style>{STYLE}</style>{head}</head>"
                f"<body>{body}</body></html>").encode()


EXPERIMENT_TITLES = {
    "headway.MixResults": "Pattern-guided basic-task mixture",
    "headway.SelectResults": "Pattern-similarity data selection",
    "headway.ModesResults": "Head-selective SFT against LoRA and full SFT",
}


def write_experiment_report(folder: str | Path, path: str | Path | None = None,
                            static: bool = False) -> Path:
    """Write ``folder/report.html`` (or ``path``) from an experiment's ``results.json``."""
    folder = Path(folder)
    r = json.loads((folder / "results.json").read_text())
    e, summary = r["experiment"], r["summary"]
    title = EXPERIMENT_TITLES.get(r["kind"], r["kind"])
    page = Page(f"headway: {title}")
    page.add(f"<h1>{html.escape(title)}</h1>",
             f"<p class='note'>Model {html.escape(e['model'])}; target {html.escape(e['target'])}"
             f" ({e['target_rows']} training rows); evaluated on {e['eval_rows']} held-out rows "
             f"from row {e['eval_offset']}; seeds {e['seeds']}. Every number is in results.json "
             f"beside this file.</p>")
    if "alpha" in r:
        a = r["alpha"]
        page.add("<h2>Composition weights and mixture</h2>",
                 _table(["basic task", "α (NNLS)", "α (least squares)", "rows in the mixture"],
                        [[b, x, y, c] for b, x, y, c in zip(
                            a["basics"], a["alpha"], a["alpha_unconstrained"], a["counts"])]),
                 f"<p>R² of the fit: {_num(a['r2'])} (uncentred {_num(a['r2_uncentered'])})."
                 f"</p>")
    if "selected_by_task" in r:
        page.add("<h2>Selected rows by task</h2>",
                 _table(["task", "rows selected"], list(r["selected_by_task"].items())))
    if "heads" in r:
        page.add(f"<h2>Heads trained</h2><p>{html.escape(' '.join(r['heads']))}; learning "
                 f"rates {html.escape(json.dumps(r.get('learning_rates', {})))}</p>")
    page.add("<h2>Arms</h2>", _table(
        ["arm", "seeds", "accuracy mean", "accuracy sd", "response loss mean",
         "response loss sd", "steps", "trainable parameters", "train time (s)"],
        [[n, len(a["seeds"]), a["accuracy"]["mean"], a["accuracy"]["sd"],
          _num(a["response_loss"]["mean"], 4), _num(a["response_loss"]["sd"], 4), a["steps"],
          f"{a['n_trainable_parameters']:,}", round(a["train_seconds"]["mean"])]
         for n, a in summary["arms"].items()]))
    if summary["paired"]:
        page.add("<h3>Paired differences (same seed)</h3>", _table(
            ["method − baseline", "seeds", "Δ response loss mean", "sd", "Δ accuracy mean",
             "seeds with lower loss"],
            [[f"{p['method']} − {p['baseline']}", p["n_seeds"],
              _num(p["loss_difference"]["mean"], 4), _num(p["loss_difference"]["sd"], 4),
              p["accuracy_difference"]["mean"],
              p["method_lower_loss_seeds"]] for p in summary["paired"]]))
    caption = "Mean over seeds (diamonds), ±1 sd (whiskers), each seed (dots)."
    if static and (folder / "results.png").is_file():
        page.add(_image(folder / "results.png", caption))
    elif not static:
        from .interactive import arms_figure

        page.add(arms_figure(summary), "<p class='note'>Each seed (dots; hover for the "
                                       "seed) and the mean over seeds (diamonds).</p>")
    return atomic_write_bytes(path or folder / "report.html", page.html())


def write_compare_report(folder: str | Path, path: str | Path | None = None,
                         static: bool = False) -> Path:
    """Write ``folder/report.html`` (or ``path``) from ``headway compare``'s ``compare.json``."""
    folder = Path(folder)
    c = read_json(folder / "compare.json", "compare.json")
    a, b = c["names"]
    models = [m.get("name", "?") if m else "?" for m in c["models"]]
    page = Page("headway compare")
    page.add(f"<h1>{html.escape(a)} vs {html.escape(b)}</h1>",
             f"<p class='note'>{html.escape(a)} = {html.escape(models[0])}; {html.escape(b)} = "
             f"{html.escape(models[1])}; task {html.escape(str((c.get('task') or {}).get('name')))}"
             f". ΔAP = AP({html.escape(b)}) − AP({html.escape(a)}) on the same rows. Every "
             f"number is in compare.json beside this file.</p>",
             _table(["", "Gini", "CV", "entropy"],
                    [[name, s["gini"], s["cv"], s["entropy"]]
                     for name, s in ((a, c["a"]), (b, c["b"]), ("change", c["change"]))]),
             _table(["similarity of the two patterns", "value"],
                    [[m, v] for m, v in c["similarity"].items()] + [["‖ΔAP‖", c["delta_norm"]]]),
             _table([f"top-{c['k']} heads", "heads"],
                    [["kept", " ".join(c["kept"]) or "-"], ["gained", " ".join(c["gained"]) or "-"],
                     ["lost", " ".join(c["lost"]) or "-"],
                     ["largest |ΔAP|", " ".join(c["largest_delta"])]]))
    if static:
        page.add(*(_image(folder / f["path"], f["caption"]) for f in compare_figures(folder)))
    else:
        from ..patterns import ActivationPattern
        from .interactive import compare_heatmaps

        delta = f"ΔAP = {b} − {a}"
        page.add(compare_heatmaps({a: ActivationPattern.load(folder / a).scores.numpy(),
                                   b: ActivationPattern.load(folder / b).scores.numpy(),
                                   delta: ActivationPattern.load(folder / "delta")
                                   .scores.numpy()}, delta))
    return atomic_write_bytes(Path(path) if path else folder / "report.html", page.html())


def write_report(folder: str | Path, path: str | Path | None = None,
                 static: bool = False) -> Path:
    """Write ``folder/report.html`` (or ``path``) from ``folder/analysis.json``, or from
    ``folder/results.json`` of an experiment, or ``compare.json``; interactive unless
    ``static`` (see the module docstring)."""
    folder = Path(folder)
    if (folder / "results.json").is_file() and not (folder / "analysis.json").is_file():
        return write_experiment_report(folder, path, static)
    if (folder / "compare.json").is_file() and not (folder / "analysis.json").is_file():
        return write_compare_report(folder, path, static)
    analysis_file = folder / "analysis.json"
    if not analysis_file.is_file():
        raise FileNotFoundError(f"no analysis.json in {folder}; run `headway analyze` first")
    a = read_json(analysis_file, "analysis.json")
    if static:
        figs = analysis_figures(folder)
        figure = lambda prefix: _figures(folder, figs, prefix)  # noqa: E731
    else:
        shown = _interactive_figures(folder)
        figure = lambda prefix: shown.get(prefix)  # noqa: E731
    page = Page("headway report")
    page.add("<h1>Attention-head activation patterns</h1>",
             "<p class='note'>AP[l,h] = mean over samples of |&lt;Γ, ∂L/∂Γ&gt;|; ΔAP = AP(after "
             "SFT) − AP(before), on the same held-out probe rows. Every number below is in "
             "analysis.json beside this file."
             + ("" if static else " Hover a cell for its head, score and rank; click one for "
                                  "its trajectory.") + "</p>")

    if a.get("patterns"):
        page.add("<h2>1. Task-specific heads</h2>",
                 _table(["task", "N", "Gini", "CV", "entropy", "top heads"],
                        [[n, p["n"], p["gini"], p["cv"], p["entropy"],
                          ", ".join(p["top_heads"][:5])] for n, p in a["patterns"].items()]),
                 figure("patterns"))
    if a.get("similarity"):
        s = a["similarity"]
        page.add("<h3>Task x task similarity</h3>")
        for method in ("pearson", "spearman", "cosine"):
            page.add(f"<p>{method}</p>" + _table(
                ["", *s["names"]], [[n, *row] for n, row in zip(s["names"], s[method])]))
        page.add(figure("similarity"))
    if figure("tokens"):
        page.add("<h3>Which tokens carry the top heads</h3>",
                 "<p class='note'>Each token's signed share of a head's score in one row "
                 "(red adds to it, blue takes away); hover for the token.</p>",
                 figure("tokens"))
    if a.get("runs"):
        page.add("<h2>SFT runs: how patterns and weights move</h2>")
        rows = []
        for name, r in a["runs"].items():
            d = r["dynamics"]
            rows.append([name, r["mode"], r["steps"][-1], f"{r['loss'][0]:.3f} → "
                         f"{r['loss'][-1]:.3f}", f"{r['before']['gini']:.3f} → "
                         f"{r['after']['gini']:.3f}", d["change"][1] if len(d["change"]) > 1
                         else 0, d["change"][-1], d["corr_start"][-1],
                         *[(r["param_change"] or {}).get(key) for key in (
                             "share_50", "share_90", "spearman_with_abs_delta_ap")]])
        page.add(_table(["task", "mode", "steps", "probe loss", "Gini", "change at first "
                         "record", "change at end", "corr(AP_0, AP_end)", "share of heads "
                         "holding 50 % of Δweights", "share holding 90 %",
                         "Spearman(Δweights, |ΔAP|)"], rows),
                 "<p class='note'>change = ‖AP_t − AP_0‖ / ‖AP_0‖; Δweights = per-head "
                 "relative change of the q/k/v/o slices.</p>", figure("run_"))
    if a.get("composition"):
        page.add(*_composition_html(a["composition"]), figure("composition"))
    if a.get("faithfulness"):
        page.add(*_faithfulness_html(a["faithfulness"]), figure("faithfulness"))
    target = Path(path) if path else folder / "report.html"
    return atomic_write_bytes(target, page.html())


TOKEN_ROWS, TOKEN_HEADS = 8, 5  # rows and top heads of each pattern the token view holds


def _interactive_figures(folder: Path) -> dict:
    """The Bokeh models of an analysis folder, by the section that shows them."""
    from ..patterns import ActivationPattern
    from . import interactive

    data = load_analysis(folder)
    a, out = data.result, {}
    if data.patterns:
        out["patterns"] = interactive.pattern_explorer(data.patterns)
    s = a.get("similarity")
    if s:
        out["similarity"] = interactive.similarity_matrix(s["names"], s["pearson"])
    views = {}
    for name, p in (a.get("patterns") or {}).items():
        pattern = ActivationPattern.load(p["path"])
        if pattern.per_token is None or pattern.tokens is None:
            continue
        heads = pattern.top_heads(TOKEN_HEADS)
        rows = range(min(TOKEN_ROWS, len(pattern.per_token)))
        views[name] = {"tokens": [pattern.tokens[r] for r in rows],
                       "response": [(pattern.response or [[False] * len(pattern.tokens[r])
                                                          for r in rows])[r] for r in rows],
                       "heads": [f"{layer}.{h}" for layer, h, _ in heads],
                       "values": {f"{layer}.{h}": [pattern.per_token[r][:, layer, h].tolist()
                                                   for r in rows] for layer, h, _ in heads}}
    if views:
        out["tokens"] = interactive.token_explorer(views)
    runs = {}
    for name, run in data.runs.items():
        for probe, record in run.trajectory["probes"].items():
            runs[f"{name}: {probe}"] = {"steps": run.trajectory["steps"],
                                        "patterns": record["patterns"].numpy(),
                                        "loss": record["loss"]}
    if runs:
        out["run_"] = interactive.run_explorer(runs)
    c = a.get("composition")
    if c:
        fit = c["least_squares"]
        controls = c.get("controls") or []
        names = c["bases"] + controls
        alpha = fit["alpha"] + (fit["controls"]["alpha"] if controls else [])
        ci = fit.get("alpha_ci") and fit["alpha_ci"] + (fit["controls"]["alpha_ci"]
                                                        if controls else [])
        fitted = [data.runs.get(n) for n in names]
        target = data.runs.get(c["target"])
        extra = {}
        if target is not None and all(r is not None for r in fitted):
            X = np.stack([r.delta.ravel() for r in fitted], 1)
            extra = {"fitted": X @ np.asarray(alpha), "measured": target.delta.ravel(),
                     "n_layers": target.delta.shape[0], "n_heads": target.delta.shape[1]}
        gain = fit["shared_component"]["r2_gain"]
        out["composition"] = interactive.composition_figures(
            names, alpha, ci, controls,
            title=f"α (least squares): R² = {fit['r2']:.3f}, gain over the shared component "
                  f"{gain:+.3f}", **extra)
    f = {n: v for n, v in (a.get("faithfulness") or {}).items() if "skipped" not in v}
    if f:
        out["faithfulness"] = interactive.ablation_figure(
            [(f"{n} ({m})", r) for n in f for m, r in f[n].items()])
    return out


def _interval(ci) -> str:
    return f"[{_num(ci[0])}, {_num(ci[1])}]" if ci else "–"


def _composition_html(c: dict) -> list[str]:
    """Finding 2: each fit's α (controls apart), R², null, shared component and verdicts."""
    controls = c.get("controls") or []
    out = [f"<h2>2. {html.escape(c['target'])} as a combination of "
           f"{html.escape(', '.join(c['bases']))}"
           + (f" (controls: {html.escape(', '.join(controls))})" if controls else "") + "</h2>"]
    for key, label in (("least_squares", "least squares"), ("nonnegative", "α ≥ 0")):
        fit = c[key]
        ci = fit.get("alpha_ci") or [None] * len(fit["alpha"])
        rows = [[b, al, _interval(i)] for b, al, i in zip(c["bases"], fit["alpha"], ci)]
        ctl = fit.get("controls")
        if ctl:
            rows += [[f"{n} (control)", al, _interval(i)] for n, al, i in zip(
                ctl["names"], ctl["alpha"], ctl["alpha_ci"] or [None] * len(ctl["alpha"]))]
        null = fit["shuffled_null"]
        r2ci = fit.get("r2_ci")
        out.append(f"<h3>{label}</h3>" + _table(["basic task", "α", "95 % interval"], rows))
        out.append(f"<p>R² = {_num(fit['r2'])}" + (f" (95 % interval [{_num(r2ci[0])}, "
                                                    f"{_num(r2ci[1])}])" if r2ci else "") +
                   f", adjusted R² = {_num(fit['adj_r2'])}" +
                   (f", uncentered R² {_num(fit['r2_uncentered'])}"
                    if "r2_uncentered" in fit else "") + f", over {fit['n']} heads. "
                   f"Shuffled-heads null: mean R² {_num(null['null_mean'])}, 95th "
                   f"percentile {_num(null['null_p95'])}, p = {_num(null['p_value'])}.</p>")
        sc = fit.get("shared_component")
        if sc:
            verdict = {True: "the basic tasks explain more than the shared component",
                       False: "the interval includes 0: the fit shows no more than the change "
                              "every task shares",
                       None: "no interval (no per-sample scores)"}[sc.get("beyond_shared")]
            out.append(f"<p>Shared component: ΔAP ≈ β · mean ΔAP of the fitted runs, β = "
                       f"{_num(sc['beta'])}, R² = {_num(sc['r2'])}. Gain of the full fit "
                       f"(adjusted R²): {_num(sc['r2_gain'])} (95 % interval "
                       f"{_interval(sc.get('r2_gain_ci'))}): {verdict}.</p>")
        if ctl:
            word = {True: "specific", False: "not specific",
                    None: "not decided (no intervals)"}[ctl["specific"]]
            out.append(f"<p>Controls: the composition is <b>{word}</b> ({html.escape(ctl['rule'])}"
                       f").</p>")
        if fit["leave_one_out"]:
            out.append(_table(["left out", "R² without it"],
                              [[n, f["r2"]] for n, f in fit["leave_one_out"].items()]))
    return out


def _faithfulness_html(faithfulness: dict) -> list[str]:
    """Finding 1's ablation: top-k against random-k heads, with the interval's label."""
    rows, labels = [], set()
    for name, modes in faithfulness.items():
        if "skipped" in modes:
            rows.append([name, "–", "–", "–", "–", "–", modes["skipped"]])
            continue
        for mode, f in modes.items():
            interval = f.get("random_interval") or {"low": f["random_increase_ci95"][0],
                                                    "high": f["random_increase_ci95"][1],
                                                    "label": "95 % percentile interval"}
            labels.add(interval["label"])
            rows.append([f"{name} ({mode})", f["base_loss"], f["top_increase"],
                         f["random_increase_mean"], _interval([interval["low"],
                                                               interval["high"]]),
                         f.get("p_value"), "yes" if f["top_beats_random"] else "no"])
    return ["<h2>3. Faithfulness: ablating the top heads</h2>",
            _table(["pattern (ablation)", "loss", "Δloss top-k", "Δloss random k (mean)",
                    "random interval", "p (permutation)", "top above random (p ≤ 0.05)"], rows),
            f"<p class='note'>Random sets are drawn from the heads outside the top k. Interval: "
            f"{html.escape('; '.join(sorted(labels)))}. p = (1 + #draws hurting at least as "
            f"much as the top-k) / (1 + #draws).</p>"]
