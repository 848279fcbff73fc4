"""Experiment results as tables: mean ± sd per arm over seeds, per-seed paired differences,
and the markdown table."""

from __future__ import annotations

import numpy as np


def summarise(results: list[dict], comparisons: list[tuple[str, str]]) -> dict:
    """Per arm: mean and sample sd over seeds of accuracy and response loss; per comparison
    (method, baseline): the paired per-seed differences and how many seeds the method wins
    (lower loss)."""
    arms: dict[str, list[dict]] = {}
    for r in results:
        arms.setdefault(r["arm"], []).append(r)

    def stats(values) -> dict:
        v = np.asarray(values, dtype=np.float64)
        return {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if len(v) > 1 else None,
                "values": v.tolist()}

    table = {name: {"seeds": [r["seed"] for r in rs],
                    "accuracy": stats([r["accuracy"] for r in rs]),
                    "response_loss": stats([r["response_loss"] for r in rs]),
                    "train_seconds": stats([r["train_seconds"] for r in rs]),
                    "steps": rs[0]["steps"],
                    "n_trainable_parameters": rs[0]["n_trainable_parameters"],
                    "n_eval": rs[0]["n"]}
             for name, rs in arms.items()}
    paired = []
    for method, baseline in comparisons:
        if method not in arms or baseline not in arms:
            continue
        by_seed = {r["seed"]: r for r in arms[baseline]}
        pairs = [(r, by_seed[r["seed"]]) for r in arms[method] if r["seed"] in by_seed]
        d_loss = [a["response_loss"] - b["response_loss"] for a, b in pairs]
        d_acc = [a["accuracy"] - b["accuracy"] for a, b in pairs]
        paired.append({"method": method, "baseline": baseline, "n_seeds": len(pairs),
                       "loss_difference": stats(d_loss), "accuracy_difference": stats(d_acc),
                       "method_lower_loss_seeds": int(sum(d < 0 for d in d_loss))})
    return {"arms": table, "paired": paired}


def table_markdown(summary: dict) -> str:
    """The summary as Markdown tables."""
    def pm(s, digits):
        sd = "" if s["sd"] is None else f" ± {s['sd']:.{digits}f}"
        return f"{s['mean']:.{digits}f}{sd}"

    lines = ["| arm | seeds | accuracy | response loss (nats) | steps | trainable "
             "parameters | train time (s) |", "|---|---|---|---|---|---|---|"]
    for name, a in summary["arms"].items():
        lines.append(f"| {name} | {len(a['seeds'])} | {pm(a['accuracy'], 3)} | "
                     f"{pm(a['response_loss'], 4)} | {a['steps']} | "
                     f"{a['n_trainable_parameters']:,} | {pm(a['train_seconds'], 0)} |")
    if summary["paired"]:
        lines += ["", "| method − baseline | seeds | Δ response loss | Δ accuracy | seeds where "
                      "method has the lower loss |", "|---|---|---|---|---|"]
        for p in summary["paired"]:
            lines.append(f"| {p['method']} − {p['baseline']} | {p['n_seeds']} | "
                         f"{pm(p['loss_difference'], 4)} | {pm(p['accuracy_difference'], 3)} | "
                         f"{p['method_lower_loss_seeds']} of {p['n_seeds']} |")
    lines += ["", "Mean ± sample standard deviation over seeds; accuracy is greedy-decoding "
                  "exact answers on the held-out evaluation rows; response loss is each row's "
                  "mean response-token loss, averaged over the same rows (lower is better)."]
    return "\n".join(lines) + "\n"
