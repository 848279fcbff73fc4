"""The interactive figures of ``headway report``: Bokeh models that the report embeds with
Bokeh's JavaScript inlined, so the HTML file works offline and makes no request.

Why Bokeh: a well-kept plotting library (NumFOCUS) whose linked widgets (a selector, a
slider, a click on a heatmap cell) run in the page through small ``CustomJS`` callbacks, with
no server; and whose JavaScript is about 1.7 MB inlined (``bokeh`` and ``bokeh-widgets``),
where Plotly's alone is 4.8 MB (the report must stay under 5 MB).

Every heatmap is ``[L, H]``: heads across, layers down (layer 0 at the top, as the static
figures), with a tooltip naming the cell ``layer.head``, its score, its rank (1: the largest;
ΔAP: the largest |ΔAP|) and the task. Models carry ``name``s (``patterns-heatmap``,
``run-ap``, ``run-delta``, ``run-step``, ``run-head``, ...) that the browser tests look up.
"""

from __future__ import annotations

import numpy as np

HOVER = [("head", "@cell"), ("score", "@score{%.4g}"), ("rank", "@rank"), ("task", "@task")]
# JavaScript shared by the callbacks: the cells of a flat [L*H] score array
CELLS_JS = """
function cells(values, L, H, task, by_abs) {
  const order = [...values.keys()].sort((a, b) => by_abs
      ? Math.abs(values[b]) - Math.abs(values[a]) : values[b] - values[a]);
  const rank = new Array(values.length);
  order.forEach((i, k) => { rank[i] = k + 1; });
  const x = [], y = [], cell = [];
  for (let l = 0; l < L; l++) for (let h = 0; h < H; h++) {
    x.push(h); y.push(l); cell.push(l + "." + h);
  }
  return {x: x, y: y, cell: cell, score: Array.from(values), rank: rank,
          task: new Array(values.length).fill(task)};
}
function limit(values, diverging) {
  let hi = 0, lo = Infinity;
  for (const v of values) { hi = Math.max(hi, diverging ? Math.abs(v) : v);
                            lo = Math.min(lo, v); }
  hi = hi || 1;
  return diverging ? [-hi, hi] : [Math.min(lo, 0), hi];
}
"""


def cells(matrix, task: str, by_abs: bool = False) -> dict:
    """The columns of a heatmap's data source from an ``[L, H]`` matrix: ``x`` (head), ``y``
    (layer), ``cell`` ("l.h"), ``score``, ``rank`` (1: largest score, or largest |score| with
    ``by_abs``) and ``task``."""
    m = np.asarray(matrix, dtype=np.float64)
    n_layers, n_heads = m.shape
    flat = m.ravel()
    order = np.argsort(-(np.abs(flat) if by_abs else flat), kind="stable")
    rank = np.empty(flat.size, dtype=int)
    rank[order] = np.arange(1, flat.size + 1)
    return {"x": [h for _ in range(n_layers) for h in range(n_heads)],
            "y": [layer for layer in range(n_layers) for _ in range(n_heads)],
            "cell": [f"{layer}.{h}" for layer in range(n_layers) for h in range(n_heads)],
            "score": flat.tolist(), "rank": rank.tolist(), "task": [task] * flat.size}


def _limits(values, diverging: bool) -> tuple[float, float]:
    values = np.asarray(values, dtype=np.float64)
    if diverging:
        high = float(np.abs(values).max()) or 1.0
        return -high, high
    return min(float(values.min()), 0.0), float(values.max()) or 1.0


def heatmap(data: dict, n_layers: int, n_heads: int, name: str, title: str,
            diverging: bool = False, label: str = "AP"):
    """An ``[L, H]`` heatmap of ``data`` (:func:`cells`) with hover and tap; returns
    ``(figure, source, colour mapper)``."""
    from bokeh.models import (
        ColorBar,
        ColumnDataSource,
        FixedTicker,
        HoverTool,
        LinearColorMapper,
        Range1d,
    )
    from bokeh.palettes import RdBu11, Viridis256
    from bokeh.plotting import figure

    source = ColumnDataSource(data, name=f"{name}-source")
    low, high = _limits(data["score"], diverging)
    mapper = LinearColorMapper(palette=list(reversed(RdBu11)) if diverging else Viridis256,
                               low=low, high=high)
    cell = max(14, min(44, 520 // max(n_heads, 1)))  # pixels a head
    band = max(8, min(28, 620 // max(n_layers, 1)))  # pixels a layer
    fig = figure(name=name, title=title, width=max(340, 130 + cell * n_heads),
                 height=max(240, 90 + band * n_layers),
                 x_range=Range1d(-0.5, n_heads - 0.5), y_range=Range1d(n_layers - 0.5, -0.5),
                 tools="tap,save,reset", toolbar_location="above", x_axis_label="head",
                 y_axis_label="layer")
    fig.rect("x", "y", width=1, height=1, source=source, line_color=None,
             fill_color={"field": "score", "transform": mapper},
             nonselection_fill_alpha=1.0, selection_line_color="red", selection_line_width=2)
    fig.add_tools(HoverTool(tooltips=HOVER, formatters={"@score": "printf"}))
    fig.add_layout(ColorBar(color_mapper=mapper, title=label, width=10), "right")
    fig.xaxis.ticker = FixedTicker(ticks=list(range(0, n_heads, max(1, n_heads // 16))))
    fig.yaxis.ticker = FixedTicker(ticks=list(range(0, n_layers, max(1, n_layers // 16))))
    fig.grid.visible = False
    return fig, source, mapper


def pattern_explorer(patterns: dict[str, np.ndarray]):
    """Each task's pattern, one at a time: a task selector and its heatmap."""
    from bokeh.layouts import column
    from bokeh.models import CustomJS, Select

    names = list(patterns)
    first = patterns[names[0]]
    fig, source, mapper = heatmap(cells(first, names[0]), *first.shape, "patterns-heatmap",
                                  f"AP of {names[0]}")
    select = Select(title="task", value=names[0], options=names, name="patterns-select")
    select.js_on_change("value", CustomJS(
        args={"source": source, "mapper": mapper, "fig": fig,
              "data": {n: {"values": np.asarray(p).ravel().tolist(), "L": p.shape[0],
                           "H": p.shape[1]} for n, p in patterns.items()}},
        code=CELLS_JS + """
const d = data[cb_obj.value];
source.data = cells(d.values, d.L, d.H, cb_obj.value, false);
[mapper.low, mapper.high] = limit(d.values, false);
fig.title.text = "AP of " + cb_obj.value;
"""))
    return column(select, fig)


def similarity_matrix(names: list[str], matrix, method: str = "pearson"):
    """Task x task similarity with hover."""
    from bokeh.models import ColumnDataSource, HoverTool, LinearColorMapper
    from bokeh.palettes import RdBu11
    from bokeh.plotting import figure

    m = np.asarray(matrix, dtype=np.float64)
    data = {"a": [a for a in names for _ in names], "b": [b for _ in names for b in names],
            "value": m.ravel().tolist()}
    mapper = LinearColorMapper(palette=list(reversed(RdBu11)), low=-1, high=1)
    size = 90 + 44 * len(names)
    fig = figure(name="similarity", title=f"{method} similarity of the task patterns",
                 x_range=names, y_range=list(reversed(names)), width=size + 60, height=size,
                 tools="save", toolbar_location="above")
    fig.rect("a", "b", width=1, height=1, source=ColumnDataSource(data), line_color="white",
             fill_color={"field": "value", "transform": mapper})
    fig.add_tools(HoverTool(tooltips=[("tasks", "@a × @b"), (method, "@value{0.000}")]))
    fig.xaxis.major_label_orientation = 0.8
    return fig


def _short(values) -> list[float]:
    """A flat list of ``values`` to 5 significant digits: the page carries every record of
    every run (a 70B model has 64 x 80 heads in each record), and 17 digits a number would
    double its size for nothing a reader sees."""
    return [float(f"{v:.5g}") for v in np.asarray(values, dtype=np.float64).ravel()]


def run_explorer(runs: dict[str, dict]):
    """Each run's records: a run / probe selector, a slider over its records, the pattern at
    the record and ΔAP from the first record, and the trajectory of the head clicked (or the
    largest |ΔAP| at the end) over the steps. ``runs``: ``{label: {"steps": [...],
    "patterns": [T, L, H] array, "loss": [...]}}``."""
    from bokeh.layouts import column, row
    from bokeh.models import (
        ColumnDataSource,
        CustomJS,
        Div,
        HoverTool,
        Select,
        Slider,
        Span,
    )
    from bokeh.plotting import figure

    labels = list(runs)
    js = {k: {"steps": list(map(int, r["steps"])),
              "ap": [_short(p) for p in r["patterns"]],
              "loss": [float(x) for x in r["loss"]],
              "L": int(np.asarray(r["patterns"]).shape[1]),
              "H": int(np.asarray(r["patterns"]).shape[2])} for k, r in runs.items()}
    first = js[labels[0]]
    last = len(first["steps"]) - 1
    ap = np.asarray(first["ap"][last]).reshape(first["L"], first["H"])
    delta = ap - np.asarray(first["ap"][0]).reshape(first["L"], first["H"])
    fig_ap, src_ap, map_ap = heatmap(cells(ap, labels[0]), first["L"], first["H"], "run-ap",
                                     f"AP at step {first['steps'][last]}")
    fig_d, src_d, map_d = heatmap(cells(delta, labels[0], by_abs=True), first["L"],
                                  first["H"], "run-delta",
                                  f"ΔAP, step {first['steps'][last]} − step {first['steps'][0]}",
                                  diverging=True, label="ΔAP")
    head = int(np.argmax(np.abs(delta).ravel()))
    line = ColumnDataSource({"step": first["steps"],
                             "score": [v[head] for v in first["ap"]],
                             "loss": first["loss"]}, name="run-head-source",
                            tags=[head])  # the head shown
    fig_h = figure(name="run-head", title=f"AP of head {head // first['H']}.{head % first['H']}"
                                          f" over the steps (click a cell to choose)",
                   width=520, height=260, x_axis_label="step", y_axis_label="AP",
                   tools="save,reset", toolbar_location="above")
    fig_h.line("step", "score", source=line, line_width=2)
    fig_h.scatter("step", "score", source=line, size=6)
    fig_h.add_tools(HoverTool(tooltips=[("step", "@step"), ("AP", "@score{%.4g}"),
                                        ("probe loss", "@loss{0.000}")],
                              formatters={"@score": "printf"}))
    marker = Span(location=first["steps"][last], dimension="height", line_dash="dashed",
                  line_color="grey")
    fig_h.add_layout(marker)
    select = Select(title="run: probe", value=labels[0], options=labels, name="run-select")
    slider = Slider(title="record", start=0, end=max(last, 1), value=last, step=1,
                    name="run-step", disabled=last == 0, width=420)
    label = Div(text=f"step {first['steps'][last]} of {first['steps'][-1]}", name="run-label")
    src_d.selected.indices = src_ap.selected.indices = [head]
    args = {"runs": js, "select": select, "slider": slider, "label": label, "src_ap": src_ap,
            "src_d": src_d, "map_ap": map_ap, "map_d": map_d, "fig_ap": fig_ap, "fig_d": fig_d,
            "line": line, "fig_h": fig_h, "marker": marker}
    update = CELLS_JS + """
const r = runs[select.value];
const last = r.steps.length - 1;
if (cb_obj === select) { slider.end = Math.max(last, 1); slider.value = last;
                         slider.disabled = last === 0; }
const t = Math.min(slider.value, last);
const ap = r.ap[t], ap0 = r.ap[0];
const delta = ap.map((v, i) => v - ap0[i]);
// the head shown: the last cell clicked (a shift-click appends it); a click that clears
// the selection keeps the head
const other = (cb_obj === src_d.selected) ? src_d.selected : src_ap.selected;
const picked = other.indices.length ? other.indices[other.indices.length - 1] : null;
let head = (picked === null) ? line.tags[0] : picked;
if (head >= ap.length) head = 0;
src_ap.data = cells(ap, r.L, r.H, select.value, false);
src_d.data = cells(delta, r.L, r.H, select.value, true);
[map_ap.low, map_ap.high] = limit(ap, false);
[map_d.low, map_d.high] = limit(delta, true);
fig_ap.title.text = "AP at step " + r.steps[t];
fig_d.title.text = "ΔAP, step " + r.steps[t] + " − step " + r.steps[0];
label.text = "step " + r.steps[t] + " of " + r.steps[last];
line.data = {step: r.steps, score: r.ap.map(v => v[head]), loss: r.loss};
line.tags = [head];
fig_h.title.text = "AP of head " + Math.floor(head / r.H) + "." + (head % r.H)
                   + " over the steps (click a cell to choose)";
marker.location = r.steps[t];
for (const s of [src_ap.selected, src_d.selected]) {
  if (s.indices.length !== 1 || s.indices[0] !== head) s.indices = [head];
}
"""
    callback = CustomJS(args=args, code=update)
    select.js_on_change("value", callback)
    slider.js_on_change("value", callback)
    src_ap.selected.js_on_change("indices", callback)
    src_d.selected.js_on_change("indices", callback)
    return column(row(select, column(slider, label)), row(fig_ap, fig_d), fig_h)


def composition_figures(names: list[str], alpha: list[float], intervals, controls: list[str],
                        fitted=None, measured=None, n_layers: int = 0, n_heads: int = 0,
                        title: str = ""):
    """The composition fit: α of each basic task (controls grey) with its interval, and each
    head's fitted against measured ΔAP of the complex task (hover names the head)."""
    from bokeh.layouts import row
    from bokeh.models import ColumnDataSource, HoverTool, Whisker
    from bokeh.plotting import figure

    low = [i[0] if i else a for a, i in zip(alpha, intervals or [None] * len(alpha))]
    high = [i[1] if i else a for a, i in zip(alpha, intervals or [None] * len(alpha))]
    colour = ["#999999" if n in controls else "#1f77b4" for n in names]
    labels = [f"{n} (control)" if n in controls else n for n in names]
    source = ColumnDataSource({"name": labels, "alpha": alpha, "low": low, "high": high,
                               "colour": colour})
    bars = figure(name="composition-alpha", title=title, x_range=labels,
                  width=140 + 90 * len(names), height=320, y_axis_label="α",
                  tools="save", toolbar_location="above")
    bars.vbar("name", top="alpha", width=0.6, source=source, color="colour")
    bars.add_layout(Whisker(base="name", lower="low", upper="high", source=source))
    bars.add_tools(HoverTool(tooltips=[("task", "@name"), ("α", "@alpha{0.000}"),
                                       ("interval", "[@low{0.000}, @high{0.000}]")]))
    bars.xaxis.major_label_orientation = 0.6
    if fitted is None:
        return bars
    points = ColumnDataSource({"fitted": np.ravel(fitted).tolist(),
                               "measured": np.ravel(measured).tolist(),
                               "cell": [f"{layer}.{h}" for layer in range(n_layers)
                                        for h in range(n_heads)]})
    scatter = figure(name="composition-fit", title="each head: fitted vs measured ΔAP",
                     width=380, height=320, x_axis_label="Σ α_j ΔAP_j",
                     y_axis_label="measured ΔAP", tools="save,reset,box_zoom",
                     toolbar_location="above")
    scatter.scatter("fitted", "measured", source=points, size=5, alpha=0.7)
    edge = float(max(np.abs(np.ravel(fitted)).max(), np.abs(np.ravel(measured)).max()) or 1.0)
    scatter.line([-edge, edge], [-edge, edge], line_dash="dashed", color="grey")
    scatter.add_tools(HoverTool(tooltips=[("head", "@cell"), ("fitted", "@fitted{%.3g}"),
                                          ("measured", "@measured{%.3g}")],
                                formatters={"@fitted": "printf", "@measured": "printf"}))
    return row(bars, scatter)


def ablation_figure(results: list[tuple[str, dict]]):
    """Loss increase when ablating the top-k heads (a red diamond) against each random draw
    of k heads (grey dots; hover names its heads)."""
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    names = [n for n, _ in results]
    rng = np.random.default_rng(0)
    draws = {"name": [], "x": [], "increase": [], "heads": [], "draw": []}
    top = {"name": names, "increase": [r["top_increase"] for _, r in results],
           "heads": [" ".join(r.get("top_heads", [])) for _, r in results],
           "p": [r.get("p_value") for _, r in results]}
    for i, (name, r) in enumerate(results):
        heads = r.get("random_heads") or [[]] * len(r["random_increase"])
        for j, (value, hs) in enumerate(zip(r["random_increase"], heads)):
            draws["name"].append(name)
            draws["x"].append(i + 0.5 + float(rng.uniform(-0.18, 0.18)))
            draws["increase"].append(value)
            draws["heads"].append(" ".join(hs))
            draws["draw"].append(j + 1)
    fig = figure(name="ablation", x_range=names, width=160 + 120 * len(names), height=340,
                 y_axis_label="Δ loss (nats)", title="ablating the top-k heads vs random k",
                 tools="save,reset", toolbar_location="above")
    dots = fig.scatter("x", "increase", source=ColumnDataSource(draws), size=6, color="grey",
                       alpha=0.6, legend_label="random k heads")
    diamonds = fig.scatter("name", "increase", source=ColumnDataSource(top), size=13,
                           marker="diamond", color="red", legend_label="top-k heads")
    fig.add_tools(HoverTool(renderers=[dots], tooltips=[("draw", "@draw"),
                                                        ("Δ loss", "@increase{0.0000}"),
                                                        ("heads", "@heads")]))
    fig.add_tools(HoverTool(renderers=[diamonds], tooltips=[
        ("top-k", "@name"), ("Δ loss", "@increase{0.0000}"), ("p", "@p{0.000}"),
        ("heads", "@heads")]))
    fig.xaxis.major_label_orientation = 0.5
    fig.legend.location = "top_left"
    return fig


def token_explorer(views: dict[str, dict], per_line: int = 16):
    """Which tokens carry a head: for each pattern scored with per-token shares, its first
    rows' tokens shaded by their signed share of one of its top heads; selectors for the
    pattern, the row and the head. ``views``: ``{pattern: {"tokens": [[str]], "response":
    [[bool]], "heads": ["l.h"], "values": {head: [[float per token] per row]}}}``."""
    from bokeh.layouts import column, row
    from bokeh.models import (
        ColumnDataSource,
        CustomJS,
        HoverTool,
        LinearColorMapper,
        Select,
    )
    from bokeh.palettes import RdBu11
    from bokeh.plotting import figure

    names = list(views)
    first = views[names[0]]

    def layout(tokens, response, values) -> dict:
        return {"x": [i % per_line for i in range(len(tokens))],
                "y": [i // per_line for i in range(len(tokens))],
                "text": [t.replace("\n", "⏎") or "·" for t in tokens],
                "short": [(t.replace("\n", "⏎") or "·")[:7] for t in tokens],
                "value": list(values), "part": ["response" if r else "prompt"
                                                 for r in response]}

    head = first["heads"][0]
    data = layout(first["tokens"][0], first["response"][0], first["values"][head][0])
    source = ColumnDataSource(data, name="tokens-source")
    high = float(np.abs(data["value"]).max()) if data["value"] else 1.0
    mapper = LinearColorMapper(palette=list(reversed(RdBu11)), low=-(high or 1), high=high or 1)
    lines = max(1, -(-max(len(t) for v in views.values() for t in v["tokens"]) // per_line))
    fig = figure(name="tokens", title=f"{names[0]}: row 0, head {head}", width=60 * per_line,
                 height=60 + 28 * lines, x_range=(-0.5, per_line - 0.5),
                 y_range=(lines - 0.5, -0.5), tools="save", toolbar_location="above")
    fig.rect("x", "y", width=0.96, height=0.9, source=source, line_color=None,
             fill_color={"field": "value", "transform": mapper})
    fig.text("x", "y", text="short", source=source, text_align="center",
             text_baseline="middle", text_font_size="9pt")
    fig.add_tools(HoverTool(tooltips=[("token", "@text"), ("share", "@value{%.3g}"),
                                      ("part", "@part")], formatters={"@value": "printf"}))
    fig.axis.visible = False
    fig.grid.visible = False
    pick = Select(title="pattern", value=names[0], options=names, name="tokens-pattern")
    rows = Select(title="row", value="0", options=[str(i) for i in range(len(first["tokens"]))],
                  name="tokens-row")
    heads = Select(title="head (top by score)", value=head, options=first["heads"],
                   name="tokens-head")
    callback = CustomJS(args={"views": views, "pick": pick, "rows": rows, "heads": heads,
                              "source": source, "mapper": mapper, "fig": fig,
                              "per_line": per_line}, code="""
const v = views[pick.value];
if (cb_obj === pick) {
  rows.options = v.tokens.map((_, i) => String(i));
  heads.options = v.heads;
}
// another pattern keeps other rows and top heads: clamp both before reading them
const r = Math.min(Number(rows.value), v.tokens.length - 1);
const head = v.heads.includes(heads.value) ? heads.value : v.heads[0];
if (String(r) !== rows.value) rows.value = String(r);
if (head !== heads.value) heads.value = head;
const tokens = v.tokens[r], values = v.values[head][r];
const x = [], y = [], text = [], short = [], part = [];
tokens.forEach((t, i) => { const s = t.replace(/\\n/g, "⏎") || "·";
  x.push(i % per_line); y.push(Math.floor(i / per_line)); text.push(s);
  short.push(s.slice(0, 7)); part.push(v.response[r][i] ? "response" : "prompt"); });
source.data = {x: x, y: y, text: text, short: short, value: values, part: part};
const hi = Math.max(...values.map(Math.abs)) || 1;
mapper.low = -hi; mapper.high = hi;
fig.title.text = pick.value + ": row " + r + ", head " + head;
""")
    for widget in (pick, rows, heads):
        widget.js_on_change("value", callback)
    return column(row(pick, rows, heads), fig)


def compare_heatmaps(patterns: dict[str, np.ndarray], delta_name: str):
    """Both patterns and ΔAP of ``headway compare`` side by side, with hover."""
    from bokeh.layouts import row

    figs = []
    for name, matrix in patterns.items():
        diverging = name == delta_name
        fig, _, _ = heatmap(cells(matrix, name, by_abs=diverging), *np.shape(matrix),
                            f"compare-{'delta' if diverging else name}", name,
                            diverging=diverging, label="ΔAP" if diverging else "AP")
        figs.append(fig)
    return row(*figs)


def arms_figure(summary: dict):
    """Experiment arms: each seed's response loss and accuracy (dots, hover names the seed)
    and the mean (a diamond)."""
    from bokeh.layouts import row
    from bokeh.models import ColumnDataSource, HoverTool
    from bokeh.plotting import figure

    names = list(summary["arms"])
    figs = []
    for key, label in (("response_loss", "response loss (nats, lower is better)"),
                       ("accuracy", "accuracy (greedy)")):
        seeds = {"arm": [], "value": [], "seed": []}
        means = {"arm": names, "value": [summary["arms"][n][key]["mean"] for n in names],
                 "sd": [summary["arms"][n][key]["sd"] or 0.0 for n in names]}
        for n in names:
            arm = summary["arms"][n]
            for s, v in zip(arm.get("seeds", []), arm[key]["values"]):
                seeds["arm"].append(n)
                seeds["value"].append(v)
                seeds["seed"].append(s)
        fig = figure(name=f"arms-{key}", x_range=names, width=140 + 110 * len(names),
                     height=320, y_axis_label=label, tools="save", toolbar_location="above")
        dots = fig.scatter("arm", "value", source=ColumnDataSource(seeds), size=7,
                           color="black", alpha=0.7)
        fig.scatter("arm", "value", source=ColumnDataSource(means), size=13,
                    marker="diamond", color="#1f77b4")
        fig.add_tools(HoverTool(renderers=[dots], tooltips=[("arm", "@arm"), ("seed", "@seed"),
                                                            (key, "@value{0.0000}")]))
        fig.xaxis.major_label_orientation = 0.4
        figs.append(fig)
    return row(*figs)


def embed(models: list) -> tuple[str, list[str]]:
    """``(head, divs)``: Bokeh's JavaScript and CSS inlined with the models' script (the
    ``<head>`` part), and one ``<div>`` per model, in order."""
    from bokeh.embed import components
    from bokeh.resources import Resources

    resources = Resources(mode="inline", components=["bokeh", "bokeh-widgets"])
    script, divs = components(models)
    return resources.render_js() + resources.render_css() + script, list(divs)
