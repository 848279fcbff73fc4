"""Finding 2 and the ablation over several demo seeds, as the Markdown tables of
docs/findings.md (mean ± sd over seeds, and each seed).

    python scripts/findings_seeds.py seeds/0 seeds/1 seeds/2

Each argument is a ``headway demo --seed S --output-dir DIR`` folder (its
``analysis/analysis.json`` is read).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def _ms(values) -> str:
    v = np.asarray(values, dtype=np.float64)
    return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v[0]:.3f}"


def _ci(ci) -> str:
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def composition_table(analyses: list[dict], seeds: list[str], key: str) -> list[str]:
    c0 = analyses[0]["composition"]
    names = c0["bases"] + [f"{n} (control)" for n in c0["controls"]]
    rows = []
    for a in analyses:
        fit = a["composition"][key]
        ctl = fit.get("controls") or {"alpha": [], "alpha_ci": [], "specific": None}
        sc = fit["shared_component"]
        rows.append({"alpha": fit["alpha"] + ctl["alpha"],
                     "ci": (fit.get("alpha_ci") or []) + (ctl["alpha_ci"] or []),
                     "r2": fit["r2"], "r2_shared": sc["r2"], "gain": sc["r2_gain"],
                     "gain_ci": sc["r2_gain_ci"], "specific": ctl["specific"],
                     "null_p": fit["shuffled_null"]["p_value"]})
    head = ["seed", *[f"α {n}" for n in names], "R²", "R² shared only", "gain (adj. R²)",
            "null p", "specific"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for seed, r in zip(seeds, rows):
        lines.append("| " + " | ".join(
            [str(seed), *[f"{al:.2f} {_ci(ci)}" for al, ci in zip(r["alpha"], r["ci"])],
             f"{r['r2']:.3f}", f"{r['r2_shared']:.3f}",
             f"{r['gain']:+.3f} {_ci(r['gain_ci'])}", f"{r['null_p']:.3f}",
             {True: "yes", False: "no", None: "–"}[r["specific"]]]) + " |")
    lines.append("| " + " | ".join(
        ["mean ± sd", *[_ms([r["alpha"][j] for r in rows]) for j in range(len(names))],
         _ms([r["r2"] for r in rows]), _ms([r["r2_shared"] for r in rows]),
         _ms([r["gain"] for r in rows]), "", f"{sum(r['specific'] is True for r in rows)} of "
                                            f"{len(rows)}"]) + " |")
    return lines


def ablation_table(analyses: list[dict]) -> list[str]:
    tasks = [t for t, modes in analyses[0]["faithfulness"].items() if "skipped" not in modes]
    r0 = analyses[0]["faithfulness"][tasks[0]]["zero"]
    lines = [f"| task | Δloss top-{r0['k']} | Δloss random {r0['k']} (mean) | "
             f"{r0['random_interval']['label']} (mean of bounds) | p (each seed) |",
             "|---|---|---|---|---|"]
    for t in tasks:
        rs = [a["faithfulness"][t]["zero"] for a in analyses]
        lines.append(f"| {t} | {_ms([r['top_increase'] for r in rs])} | "
                     f"{_ms([r['random_increase_mean'] for r in rs])} | "
                     f"[{np.mean([r['random_interval']['low'] for r in rs]):.3f}, "
                     f"{np.mean([r['random_interval']['high'] for r in rs]):.3f}] | "
                     f"{', '.join(format(r['p_value'], '.3f') for r in rs)} |")
    return lines


def main(folders: list[str]) -> None:
    analyses = [json.loads((Path(f) / "analysis" / "analysis.json").read_text())
                for f in folders]
    seeds = [Path(f).name for f in folders]
    for key, label in (("least_squares", "least squares"), ("nonnegative", "α ≥ 0")):
        print(f"\nComposition ({label}), 95 % bootstrap intervals:\n")
        print("\n".join(composition_table(analyses, seeds, key)))
    print("\nZero ablation, held-out rows:\n")
    print("\n".join(ablation_table(analyses)))


if __name__ == "__main__":
    main(sys.argv[1:])
