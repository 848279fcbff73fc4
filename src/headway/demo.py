"""``headway demo``: the whole story on the built-in model, a first look in under three minutes
on 2 CPU cores (:data:`QUICK`); ``headway demo --full`` runs the sizes docs/findings.md is
measured on (:data:`FULL`, 7 to 15 minutes; most of it the 24-step fine-tunes). Each stage
prints its seconds.

1. Patterns of the built-in tasks (``patterns/TASK``): which heads each task uses.
2. Short tracked full fine-tunes (``runs/TASK``; batch 2, with ``--full`` 4) on two basic tasks (arithmetic,
   syllogism), one complex task (word problems) and one unrelated control (sorting): how
   patterns and weights move.
3. ``headway analyze`` over both (``analysis/``): concentration, similarity, dynamics,
   composition of the complex task's ΔAP from the basic ones (with the control, and the gain
   over the component every task shares), top-k vs random-k ablations.
4. ``report.html`` (self-contained, interactive) and ``summary.md``.

Finished patterns and runs are reused when their data and settings match, so an interrupted
demo picks up where it stopped (a run cut short starts again: each takes about 1.5 minutes,
less than writing its checkpoints would cost).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

DEMO_TASKS = ("arithmetic", "sorting", "syllogism", "word_problems")
BASIC_TASKS, COMPLEX_TASK = ("arithmetic", "syllogism"), "word_problems"
CONTROL_TASK = "sorting"  # unrelated to word problems: enters the fit as a control


@dataclass(frozen=True)
class Size:
    """How big the demo is: rows per task pattern, steps of each fine-tune (a record every
    ``track_every``), rows of each probe, random head sets of the ablation and the held-out
    rows it runs on (``random_draws`` + 2 ablated passes over them per task)."""

    rows: int
    sft_steps: int
    track_every: int
    probe_rows: int
    random_draws: int
    ablation_rows: int
    sft_batch: int = 4


QUICK = Size(rows=16, sft_steps=6, track_every=3, probe_rows=6, random_draws=8,
             ablation_rows=4, sft_batch=2)  # the first look, under 3 minutes
FULL = Size(rows=64, sft_steps=24, track_every=8, probe_rows=32, random_draws=20,
            ablation_rows=16)  # docs/findings.md's tables


def _reusable(path: Path, lm, task) -> bool:
    from .patterns import ActivationPattern, PatternError, pattern_paths

    if not pattern_paths(path)[0].is_file():
        return False
    try:
        pattern = ActivationPattern.load(path)
    except PatternError:  # damaged: score it again
        return False
    meta = pattern.meta
    return (pattern.per_token is not None  # the report's token view needs them
            and meta.get("task", {}).get("data_hash") == task.data_hash
            and meta.get("model", {}).get("revision") == lm.revision
            and meta.get("convention") == "sample")


def run_demo(out: Path, model: str = "smollm2-135m", n: int | None = None,
             progress: bool = True, sft_steps: int | None = None, seed: int = 0,
             size: Size = QUICK) -> dict:
    """Run the demo into ``out``; return the analysis (also in ``out/analysis``). ``size``:
    :data:`QUICK` or :data:`FULL`; ``n`` and ``sft_steps`` override its rows and steps.
    ``seed``: the fine-tunes' training seed (the order of their rows) and the analysis seed
    (bootstrap, null, random head sets); the rows themselves stay the same."""
    from .analysis.findings import run_analysis as analyze
    from .data.rows import TaskSpec
    from .data.tasks import load_task
    from .models.loading import load_model
    from .report.html import write_report
    from .report.static import analysis_figures
    from .scoring.score import score_task
    from .storage import atomic_write_bytes
    from .training.config import TrainConfig
    from .training.run_dir import clear_other_run
    from .training.trainer import finished_run, run_train, train_data

    start = time.perf_counter()
    out = Path(out)
    n = size.rows if n is None else n
    sft_steps = size.sft_steps if sft_steps is None else sft_steps
    print(f"headway demo 1/4: activation patterns of {', '.join(DEMO_TASKS)} on {model} "
          f"(the first run converts the model once, ~20 s)")
    lm = load_model(model)
    pattern_paths = []
    for name in DEMO_TASKS:
        task = load_task(TaskSpec(source=name, n=n, seed=0))
        path = out / "patterns" / name
        if _reusable(path, lm, task):
            print(f"  {name}: reusing {path}.safetensors")
        else:
            score_task(lm, task, keep_per_sample=True, per_token=True, progress=progress,
                       save_to=path)
        pattern_paths.append(str(path))
    del lm
    stage = _lap(start)

    run_paths = []
    if sft_steps:
        every = min(size.track_every, max(1, sft_steps // 2))  # a fixed interval
        print(f"headway demo 2/4: full SFT, {sft_steps} steps each, on {', '.join(BASIC_TASKS)} "
              f"(basic), {COMPLEX_TASK} (complex) and {CONTROL_TASK} (control); patterns every "
              f"{every} steps")
        for name in (*BASIC_TASKS, COMPLEX_TASK, CONTROL_TASK):
            config = TrainConfig(model=model, task=name, rows=size.sft_batch * sft_steps,
                                 max_steps=sft_steps, per_device_train_batch_size=size.sft_batch,
                                 track_every=every, track_schedule="every", seed=seed,
                                 probe_rows=min(size.probe_rows, n), save_final=False,
                                 output_dir=str(out / "runs" / name),
                                 save_strategy="no", disable_tqdm=not progress)
            if finished_run(config):
                print(f"  {name}: reusing the finished run in {config.output_dir}")
            else:
                clear_other_run(config, train_data(config))
                run_train(config)
            run_paths.append(config.output_dir)

        stage = _lap(stage)
    print("headway demo 3/4: analysis (similarity, dynamics, composition, ablation)")
    analysis = analyze(out / "analysis", patterns=pattern_paths, runs=run_paths,
                       complex_run=COMPLEX_TASK if run_paths else None,
                       controls=[CONTROL_TASK] if run_paths else [], model=model, k=10,
                       n_random=size.random_draws, seed=seed, ablation_modes=("zero",),
                       ablation_rows=size.ablation_rows, progress=progress)
    stage = _lap(stage)
    print("headway demo 4/4: report")
    analysis_figures(out / "analysis", redraw=True)  # the PNGs, for papers
    report = write_report(out / "analysis", out / "report.html")
    _lap(stage)
    text = summary_markdown(analysis, model, n, time.perf_counter() - start)
    atomic_write_bytes(out / "summary.md", text.encode())
    print()
    print(text)
    print(f"open {report} in a browser; numbers in {out}/analysis/analysis.json")
    return analysis


def _lap(since: float) -> float:
    """Print the seconds a stage took; the clock for the next one."""
    now = time.perf_counter()
    print(f"  ({now - since:.0f} s)")
    return now


def summary_markdown(a: dict, model: str, n: int, seconds: float) -> str:
    """The demo's headline numbers as Markdown."""
    lines = [f"# headway demo on {model}", "",
             f"## Task patterns (N = {n} rows each)", "",
             "| task | Gini | CV | top heads (layer.head) |", "|---|---|---|---|"]
    for name, p in a["patterns"].items():
        lines.append(f"| {name} | {p['gini']:.3f} | {p['cv']:.3f} | "
                     f"{', '.join(p['top_heads'][:5])} |")
    s = a.get("similarity")
    if s:
        lines += ["", "Pearson correlation between task patterns:", "",
                  "| | " + " | ".join(s["names"]) + " |", "|---" * (len(s["names"]) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{v:.2f}" for v in row) + " |"
                  for name, row in zip(s["names"], s["pearson"])]
    if a.get("runs"):
        lines += ["", "## Short full fine-tunes", "",
                  "| task | steps | probe loss | ΔAP: change at first record → end | "
                  "corr(AP_0, AP_end) | Gini | share of heads holding 50 % of Δweights |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in a["runs"].items():
            d = r["dynamics"]
            lines.append(f"| {name} | {r['steps'][-1]} | {r['loss'][0]:.3f} → "
                         f"{r['loss'][-1]:.3f} | {d['change'][1]:.3f} → {d['change'][-1]:.3f} | "
                         f"{d['corr_start'][-1]:.3f} | {r['before']['gini']:.3f} → "
                         f"{r['after']['gini']:.3f} | {r['param_change']['share_50']:.0%} |")
    c = a.get("composition")
    if c:
        lines += composition_lines(c)
    f = a.get("faithfulness")
    if f:
        lines += faithfulness_lines(f)
    lines += ["", f"Finished in {seconds:.0f} s. Figures and every number: report.html, "
                  f"analysis/analysis.json.", ""]
    return "\n".join(lines)


def _ci(ci) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "[no interval]"


def composition_lines(c: dict) -> list[str]:
    """Finding 2 in the summary: α with intervals (controls marked), R², the shared component's
    gain and the verdicts."""
    lines = []
    for key, label in (("least_squares", "least squares"), ("nonnegative", "α ≥ 0")):
        fit = c[key]
        ci = fit.get("alpha_ci") or [None] * len(fit["alpha"])
        parts = [f"{b} {al:.2f} {_ci(i)}" for b, al, i in zip(c["bases"], fit["alpha"], ci)]
        ctl = fit.get("controls")
        if ctl:
            parts += [f"{n} (control) {al:.2f} {_ci(i)}" for n, al, i in zip(
                ctl["names"], ctl["alpha"], ctl["alpha_ci"] or [None] * len(ctl["alpha"]))]
        r2ci = fit.get("r2_ci")
        sc = fit["shared_component"]
        gain_ci = sc.get("r2_gain_ci")
        lines += ["", f"**Composition ({label})**: ΔAP({c['target']}) ≈ Σ α ΔAP(basic); "
                      f"α (95 % interval): {', '.join(parts)}; R² = {fit['r2']:.3f} "
                      + (f"[{r2ci[0]:.3f}, {r2ci[1]:.3f}] " if r2ci else "")
                      + f"(uncentered {fit['r2_uncentered']:.3f}); shuffled-heads null R² "
                      f"{fit['shuffled_null']['null_mean']:.3f} "
                      f"(p = {fit['shuffled_null']['p_value']:.3f}). Shared component alone "
                      f"(β · mean ΔAP): R² = {sc['r2']:.3f}; gain of the full fit "
                      f"{sc['r2_gain']:+.3f} " + (f"[{gain_ci[0]:+.3f}, {gain_ci[1]:+.3f}]"
                                                 if gain_ci else "")
                      + ("" if not ctl else "; specific (basic α above the control's |α|): "
                         + {True: "yes", False: "no", None: "undecided"}[ctl["specific"]])
                      + "."]
    return lines


def faithfulness_lines(f: dict) -> list[str]:
    """The ablation in the summary: top-k against the random draws, interval labelled."""
    results = [(name, mode, r) for name, modes in f.items() if "skipped" not in modes
               for mode, r in modes.items()]
    if not results:
        return []
    k, label = results[0][2]["k"], results[0][2]["random_interval"]["label"]
    lines = ["", f"## Ablating the top-{k} heads vs {k} random heads outside them "
                 f"(held-out rows)", "",
             f"| task | ablation | Δloss top-{k} | Δloss random (mean [{label}]) | p |",
             "|---|---|---|---|---|"]
    for name, mode, r in results:
        i = r["random_interval"]
        lines.append(f"| {name} | {mode} | {r['top_increase']:.3f} | "
                     f"{r['random_increase_mean']:.3f} [{i['low']:.3f}, {i['high']:.3f}] | "
                     f"{r['p_value']:.3f} |")
    return lines
