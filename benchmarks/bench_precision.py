"""Scores in bfloat16 against float32 on a real model and real data.

    python benchmarks/bench_precision.py         # smollm2-135m, first 64 GSM8K test rows

Three runs on the same rows (sample convention, batch 8): float32; bfloat16 with the gate's
sum over tokens accumulated in float32 (headway's HeadGate); and bfloat16 with the plain
multiplicative gate of earlier versions, whose gradient is reduced in bfloat16 before it
reaches the float32 gate. Each bfloat16 pattern is compared with the float32 one: maximum
relative difference of the AP (max |AP_bf16 − AP_fp32| / max AP_fp32), of the per-sample scores,
Spearman correlation over heads, and the overlap of the top-10 heads.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import torch
from scipy.stats import spearmanr

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


@contextlib.contextmanager
def multiplicative_gates(model, batch_size: int, n_heads: int):
    """The earlier gate: x * g with g cast to the activation dtype (reduced in bfloat16)."""
    from headway.scoring.hooks import on_head_slices, split_heads

    gates: list[torch.Tensor] = []

    def gate(layer, x):
        if layer == len(gates):
            gates.append(torch.ones(batch_size, n_heads, device=x.device, requires_grad=True))
        g = gates[layer].to(x.dtype)[:, None, :, None]
        return (split_heads(x, n_heads) * g).flatten(-2)

    with on_head_slices(model, gate):
        yield gates


def compare(pattern, reference) -> dict:
    a, b = pattern.scores, reference.scores
    top = {i for i in b.flatten().topk(10).indices.tolist()}
    return {"ap_max_rel_diff": float((a - b).abs().max() / b.abs().max()),
            "per_sample_max_rel_diff": float((pattern.per_sample - reference.per_sample).abs().max()
                                             / reference.per_sample.abs().max()),
            "spearman": float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic),
            "top10_overlap": len(top & set(a.flatten().topk(10).indices.tolist()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("-n", type=int, default=64)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    from headway.data.rows import TaskSpec
    from headway.data.tasks import load_task
    from headway.models.loading import load_model
    from headway.scoring import head_scores
    from headway.scoring.score import score_task

    task = load_task(TaskSpec(source=args.data, n=args.n))
    results = {}
    reference = score_task(load_model(args.model), task, keep_per_sample=True, progress=False)
    lm = load_model(args.model, dtype="bfloat16")
    results["bf16, float32 accumulation (HeadGate)"] = compare(
        score_task(lm, task, keep_per_sample=True, progress=False), reference)
    real = head_scores.head_gates
    head_scores.head_gates = multiplicative_gates
    try:
        results["bf16, reduced in bfloat16 (earlier gate)"] = compare(
            score_task(lm, task, keep_per_sample=True, progress=False), reference)
    finally:
        head_scores.head_gates = real
    print(f"{args.model}, {args.n} rows of {Path(args.data).name}, each against float32:")
    print("| bfloat16 scoring | max rel. diff AP | max rel. diff per-sample | Spearman | top-10 |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['ap_max_rel_diff']:.2e} | {r['per_sample_max_rel_diff']:.2e} | "
              f"{r['spearman']:.4f} | {r['top10_overlap']}/10 |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
