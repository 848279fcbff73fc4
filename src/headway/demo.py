"""``headway demo``: activation patterns of the built-in tasks on the built-in model.

Writes into the output folder: ``patterns/TASK.{safetensors,json}``, ``figures/TASK.png``
(heatmaps), ``figures/all_tasks.png`` and ``summary.{json,md}`` (concentration per task, top
heads, task-by-task similarity). A pattern already there for the same model, data and settings
is reused, so an interrupted demo picks up where it stopped.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np

DEMO_TASKS = ("arithmetic", "sorting", "syllogism", "word_problems")


def _reusable(path: Path, lm, task) -> bool:
    from .patterns import ActivationPattern, pattern_paths

    if not pattern_paths(path)[0].is_file():
        return False
    meta = ActivationPattern.load(path).meta
    return (meta.get("task", {}).get("data_hash") == task.data_hash
            and meta.get("model", {}).get("revision") == lm.revision
            and meta.get("convention") == "sample")


def jaccard_top_k(a: np.ndarray, b: np.ndarray, k: int) -> float:
    """|top-k(a) ∩ top-k(b)| / |top-k(a) ∪ top-k(b)| over flattened heads."""
    ta = set(np.argsort(a.ravel())[::-1][:k])
    tb = set(np.argsort(b.ravel())[::-1][:k])
    return len(ta & tb) / len(ta | tb)


def run_demo(out: Path, model: str = "smollm2-135m", n: int = 64, progress: bool = True) -> dict:
    from scipy.stats import spearmanr

    from .analysis import concentration, pearson
    from .models import load_model
    from .patterns import ActivationPattern
    from .report import heatmap, heatmap_grid
    from .scoring import score
    from .storage import atomic_write_bytes, atomic_write_json
    from .tasks import TaskSpec, load_task

    start = time.perf_counter()
    print(f"headway demo: loading {model} (the first run converts the GGUF once, ~20 s)")
    lm = load_model(model)
    patterns: dict[str, ActivationPattern] = {}
    for name in DEMO_TASKS:
        task = load_task(TaskSpec(source=name, n=n, seed=0))
        path = out / "patterns" / name
        if _reusable(path, lm, task):
            print(f"  {name}: reusing {path}.safetensors")
            patterns[name] = ActivationPattern.load(path)
        else:
            patterns[name] = score(lm, task, keep_per_sample=True, progress=progress, save_to=path)
        heatmap(patterns[name].scores.numpy(), out / "figures" / f"{name}.png",
                title=f"{name} on {model} (N={n})", top=patterns[name].top_heads(5))
    heatmap_grid({k: p.scores.numpy() for k, p in patterns.items()},
                 out / "figures" / "all_tasks.png", title=f"activation patterns on {model}")

    summary = {"model": lm.describe(), "n_per_task": n, "tasks": {}, "pairs": []}
    for name, p in patterns.items():
        summary["tasks"][name] = {
            **concentration(p.scores.numpy()), "mean_loss": p.meta["mean_loss"],
            "top_heads": [{"layer": l, "head": h, "score": s} for l, h, s in p.top_heads(5)]}
    for a, b in itertools.combinations(patterns, 2):
        x, y = patterns[a].scores.numpy(), patterns[b].scores.numpy()
        summary["pairs"].append({"a": a, "b": b, "pearson": pearson(x, y),
                                 "spearman": float(spearmanr(x.ravel(), y.ravel())[0]),
                                 "jaccard_top10": jaccard_top_k(x, y, 10)})
    summary["elapsed_s"] = round(time.perf_counter() - start, 1)
    atomic_write_json(out / "summary.json", summary)
    text = summary_markdown(summary)
    atomic_write_bytes(out / "summary.md", text.encode())
    print()
    print(text)
    print(f"wrote {out}/summary.md, {out}/figures/*.png, {out}/patterns/*.safetensors")
    return summary


def summary_markdown(summary: dict) -> str:
    lines = [f"# Activation patterns of the built-in tasks on {summary['model']['name']}", "",
             f"N = {summary['n_per_task']} rows per task, `sample` loss convention, "
             f"{summary['model']['n_layers']} layers x {summary['model']['n_heads']} heads.", "",
             "| task | mean loss | Gini | CV | top heads (layer.head) |",
             "|---|---|---|---|---|"]
    for name, t in summary["tasks"].items():
        top = ", ".join(f"{h['layer']}.{h['head']}" for h in t["top_heads"])
        lines.append(f"| {name} | {t['mean_loss']:.3f} | {t['gini']:.3f} | {t['cv']:.3f} | "
                     f"{top} |")
    lines += ["", "| task a | task b | Pearson | Spearman | top-10 Jaccard |", "|---|---|---|---|---|"]
    for p in summary["pairs"]:
        lines.append(f"| {p['a']} | {p['b']} | {p['pearson']:.3f} | {p['spearman']:.3f} | "
                     f"{p['jaccard_top10']:.2f} |")
    lines += ["", f"Finished in {summary['elapsed_s']:.0f} s.", ""]
    return "\n".join(lines)
