"""``headway demo``: the built-in model's activation patterns, and how SFT moves them.

Writes into the output folder: ``patterns/TASK.{safetensors,json}``, ``figures/TASK.png``
(heatmaps), ``figures/all_tasks.png``, ``sft/`` (a tracked fine-tuning run),
``figures/sft_trajectory.png``, ``figures/sft_delta_PROBE.png`` and ``summary.{json,md}``
(concentration per task, top heads, task-by-task similarity, the fine-tune's dynamics). A
pattern already there for the same model, data and settings is reused and a finished run is
reused, so an interrupted demo picks up where it stopped.
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


def run_demo(out: Path, model: str = "smollm2-135m", n: int = 64, progress: bool = True,
             sft_steps: int = 40) -> dict:
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
    if sft_steps:
        summary["sft"] = demo_sft(out, model, sft_steps, progress, probe_rows=min(32, n))
    summary["elapsed_s"] = round(time.perf_counter() - start, 1)
    atomic_write_json(out / "summary.json", summary)
    text = summary_markdown(summary)
    atomic_write_bytes(out / "summary.md", text.encode())
    print()
    print(text)
    print(f"wrote {out}/summary.md, {out}/figures/*.png, {out}/patterns/*.safetensors")
    return summary


SFT_TASK, SFT_PROBES = "arithmetic", ("arithmetic", "word_problems")


def demo_sft(out: Path, model: str, steps: int, progress: bool, probe_rows: int = 32) -> dict:
    """A short full fine-tune on arithmetic, recording probe patterns every steps // 4 steps;
    a trajectory figure and a ΔAP heatmap. A finished run in ``out/sft`` is reused and an
    interrupted one resumes from its checkpoint."""
    import dataclasses
    import json

    import yaml

    from .report import heatmap, trajectory_figure
    from .tracking import run_trajectory
    from .train import RESUMABLE_CHANGES, load_config, run_train

    run_dir = out / "sft"
    every = max(1, steps // 4)
    config = load_config(None, model=model, task=SFT_TASK, rows=8 * steps, max_steps=steps,
                         track_every=every, probes=list(SFT_PROBES), probe_rows=probe_rows,
                         save_steps=every, save_total_limit=1, save_final=False,
                         output_dir=str(run_dir), progress=progress)
    manifest_file = run_dir / "manifest.json"
    previous = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
    def settings(values: dict) -> dict:
        return {k: v for k, v in values.items() if k not in RESUMABLE_CHANGES}

    same = (run_dir / "config.yaml").is_file() and settings(yaml.safe_load(
        (run_dir / "config.yaml").read_text())) == settings(dataclasses.asdict(config))
    if same and previous.get("status") == "finished":
        print(f"  sft: reusing the finished run in {run_dir}")
    else:
        print(f"headway demo: fine-tuning {model} on {SFT_TASK} for {steps} steps, recording "
              f"patterns every {every} steps")
        run_train(config)
    manifest = json.loads(manifest_file.read_text())
    trajectory = run_trajectory(run_dir)
    trajectory_figure(trajectory, out / "figures" / "sft_trajectory.png",
                      title=f"full SFT of {model} on {SFT_TASK}")
    result = {"task": SFT_TASK, "steps": steps, "every": every,
              "train_seconds": manifest["train_seconds"],
              "tracking_seconds": manifest["tracking_seconds"], "probes": {}}
    for name, probe in trajectory["probes"].items():
        aps = probe["patterns"]
        heatmap((aps[-1] - aps[0]).numpy(), out / "figures" / f"sft_delta_{name}.png",
                title=f"ΔAP of {name} after {steps} steps", diverging=True,
                label="AP(after) − AP(before)")
        d = probe["dynamics"]
        result["probes"][name] = {
            "loss_start": probe["loss"][0], "loss_end": probe["loss"][-1],
            "change_first_record": d["change"][1], "change_end": d["change"][-1],
            "corr_start_end": d["corr_start"][-1], "gini_start": probe["gini"][0],
            "gini_end": probe["gini"][-1], "step_50": d["step_50"], "step_90": d["step_90"]}
    result["param_change_end"] = trajectory["param_change"][-1]
    return result


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
    if "sft" in summary:
        sft = summary["sft"]
        lines += ["", f"## {sft['steps']} steps of full SFT on {sft['task']}", "",
                  f"Probe patterns every {sft['every']} steps on held-out rows "
                  f"({sft['train_seconds']:.0f} s of training, {sft['tracking_seconds']:.0f} s "
                  f"of it recording). Change = ‖AP_t − AP_0‖ / ‖AP_0‖.", "",
                  f"| probe | loss before → after | change at step {sft['every']} | change at "
                  f"the end | corr(AP_0, AP_end) | Gini before → after |",
                  "|---|---|---|---|---|---|"]
        for name, p in sft["probes"].items():
            lines.append(f"| {name} | {p['loss_start']:.3f} → {p['loss_end']:.3f} | "
                         f"{p['change_first_record']:.3f} | {p['change_end']:.3f} | "
                         f"{p['corr_start_end']:.3f} | {p['gini_start']:.3f} → "
                         f"{p['gini_end']:.3f} |")
        lines += ["", f"Mean per-head relative weight change at the end: "
                      f"{sft['param_change_end']:.2e}. Figures: figures/sft_trajectory.png, "
                      f"figures/sft_delta_*.png."]
    lines += ["", f"Finished in {summary['elapsed_s']:.0f} s.", ""]
    return "\n".join(lines)
