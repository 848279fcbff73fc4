"""Scoring benchmark: the project's scoring targets (README, Benchmark) on a real model and
real data.

    python benchmarks/bench_scoring.py                 # smollm2-135m, first 64 GSM8K test rows

All timed paths run on the same batches: the released script's configuration (template
"Question: {q}\\nAnswer: ", batch 4 in file order, batch-mean loss), so every row is computed
the same way by every method. Rows:

    forward only      the model's ordinary forward with labels (HF loss), no grad
    fast AP (gate)    headway's gate path
    eager reference   eager attention, Γ.retain_grad(), ordinary backward
    released config   the eager reference with every row padded to 1024 tokens (measured on
                      --released-rows rows and scaled per row: it is slow)

the fast path in the ``sample`` convention (batch 8) with and without the per-token scores
(``per_token=True``: time ratio, and how closely each row's token values sum to its score);
and, on 8 rows padded to 1024 tokens in one batch (the memory-bound setting): the fast path
with and without activation checkpointing per decoder layer (``--checkpoint-layers``):
time, peak memory of the tensors alive (:class:`headway.scoring.memory.PeakMemory`) and the
largest difference of the scores.

Peak memory is measured in a fresh subprocess per method (one batch of 4 rows padded to
1024 tokens, the memory target's setting): the peak resident set (CPU, VmHWM after a reset)
or peak CUDA allocation above what the loaded model already holds.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "gsm8k" / "test.jsonl"


def load(args):
    from headway.data.encoding import encode_examples
    from headway.data.rows import TaskSpec
    from headway.data.tasks import load_task
    from headway.models.loading import load_model

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    lm = load_model(args.model, dtype=args.dtype, device=device)
    task = load_task(TaskSpec(source=str(args.data), n=args.n))
    encoded, _ = encode_examples(task.examples, lm.tokenizer, template="qa", max_length=1024)
    return lm, encoded


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_only(lm, encoded, batch_size, pad_to=None):
    from headway.data.batching import collate, make_batches

    device = next(lm.model.parameters()).device
    with torch.no_grad():
        for rows in make_batches([len(e.input_ids) for e in encoded], batch_size, False):
            batch = collate([encoded[i] for i in rows], lm.tokenizer.pad_token_id, pad_to, device)
            lm.model(**batch)


def run_method(lm, encoded, method, batch_size, pad_to=None, convention="paper",
               per_token=False):
    from headway.scoring.score import score_encoded

    if method == "forward":
        return forward_only(lm, encoded, batch_size, pad_to)
    return score_encoded(lm.model, encoded, lm.n_layers, lm.n_heads, lm.tokenizer.pad_token_id,
                         convention=convention, method=method, batch_size=batch_size,
                         pad_to=pad_to, progress=False, per_token=per_token)


def timed(fn, device):
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def layer_checkpointing(lm, encoded, device, pad_to: int, rows: int = 8) -> dict:
    """The fast path on ``rows`` rows padded to ``pad_to`` tokens in one batch, with and
    without layer checkpointing: seconds, peak MiB of tensors alive, score difference."""
    from headway.scoring.memory import PeakMemory
    from headway.scoring.score import score_encoded

    def run(layers: bool):
        return score_encoded(lm.model, encoded[:rows], lm.n_layers, lm.n_heads,
                             lm.tokenizer.pad_token_id, batch_size=rows, pad_to=pad_to,
                             progress=False, checkpoint_layers=layers)

    out = {}
    for layers in (False, True):
        seconds, result = timed(lambda: run(layers), device)
        with PeakMemory() as probe:  # a second pass: counting slows it, so it is not timed
            run(layers)
        out["on" if layers else "off"] = {"seconds": seconds, "peak_mib": probe.peak / 2**20,
                                          "per_sample": result["per_sample"]}
    on, off = out["on"], out["off"]
    diff = (on.pop("per_sample") - off["per_sample"]).abs().max() / off.pop(
        "per_sample").abs().max()
    return {**out, "time_ratio": on["seconds"] / off["seconds"],
            "memory_ratio": on["peak_mib"] / off["peak_mib"], "max_rel_diff": float(diff),
            "rows": rows, "tokens_per_row": pad_to}


def _status_kib(field: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(field)


def memory_probe(args) -> None:
    """Subprocess body: peak extra memory (MiB) of one method on one padded batch."""
    lm, encoded = load(args)
    device = next(lm.model.parameters()).device
    rows = encoded[:args.batch_size]
    run_method(lm, encoded[:1], args.memory_probe, 1)  # warm-up: kernels, allocator
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_method(lm, rows, args.memory_probe, args.batch_size, pad_to=args.pad_to)
        peak = torch.cuda.max_memory_allocated() - base
    else:
        base = _status_kib("VmRSS") * 1024
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        run_method(lm, rows, args.memory_probe, args.batch_size, pad_to=args.pad_to)
        peak = _status_kib("VmHWM") * 1024 - base
    print(json.dumps({"peak_mib": peak / 2**20}))


def measure_memory(args, method: str) -> float:
    cmd = [sys.executable, __file__, "--memory-probe", method, "--model", args.model,
           "--data", str(args.data), "--n", str(args.batch_size), "--dtype", args.dtype,
           "--batch-size", str(args.batch_size), "--pad-to", str(args.pad_to)]
    if args.device:
        cmd += ["--device", args.device]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--n", type=int, default=64, help="rows (default 64)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--released-rows", type=int, default=8,
                   help="rows timed in the padded-to-1024 released configuration (default 8)")
    p.add_argument("--pad-to", type=int, default=1024)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--memory-probe", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_probe:
        return memory_probe(args)

    lm, encoded = load(args)
    device = next(lm.model.parameters()).device
    torch.manual_seed(0)
    run_method(lm, encoded[:2], "gate", 2)  # warm-up
    run_method(lm, encoded[:2], "reference", 2)
    t_fwd, _ = timed(lambda: run_method(lm, encoded, "forward", args.batch_size), device)
    t_gate, fast = timed(lambda: run_method(lm, encoded, "gate", args.batch_size), device)
    t_ref, ref = timed(lambda: run_method(lm, encoded, "reference", args.batch_size), device)
    released = encoded[:args.released_rows]
    t_rel, _ = timed(lambda: run_method(lm, released, "reference", args.batch_size,
                                        pad_to=args.pad_to), device)
    t_gate_1024, _ = timed(lambda: run_method(lm, released, "gate", args.batch_size,
                                              pad_to=args.pad_to), device)
    t_sample, plain = timed(lambda: run_method(lm, encoded, "gate", 8, convention="sample"),
                            device)
    t_tokens, tokens = timed(lambda: run_method(lm, encoded, "gate", 8, convention="sample",
                                                per_token=True), device)
    token_sums = torch.stack([t.sum(0) for t in tokens["per_token"]])
    token_diff = ((token_sums - plain["per_sample"]).abs().max()
                  / plain["per_sample"].abs().max())
    t_rel_scaled = t_rel * len(encoded) / len(released)
    diff = (fast["per_sample"] - ref["per_sample"]).abs().max() / ref["per_sample"].abs().max()
    ap_fast, ap_ref = fast["per_sample"].abs().mean(0), ref["per_sample"].abs().mean(0)
    ap_diff = (ap_fast - ap_ref).abs().max() / ap_ref.abs().max()
    mem = {} if args.no_memory else {m: measure_memory(args, m)
                                     for m in ("forward", "gate", "reference")}
    layers = layer_checkpointing(lm, encoded, device, args.pad_to)

    n = len(encoded)
    tokens = sum(len(e.input_ids) for e in encoded)
    result = {
        "model": args.model, "device": str(device), "dtype": args.dtype, "rows": n,
        "tokens": tokens, "batch_size": args.batch_size, "threads": torch.get_num_threads(),
        "time_s": {"forward": t_fwd, "gate": t_gate, "reference": t_ref,
                   "released_measured": t_rel, "released_rows": len(released),
                   "released_scaled": t_rel_scaled, "gate_padded_measured": t_gate_1024,
                   "gate_sample_convention_batch8": t_sample,
                   "gate_per_token_batch8": t_tokens},
        "ratios": {"gate/forward": t_gate / t_fwd, "gate/reference": t_gate / t_ref,
                   "gate/released": t_gate / t_rel_scaled,
                   "gate/reference at pad_to": t_gate_1024 / t_rel,
                   "per_token/plain": t_tokens / t_sample},
        "max_rel_diff_per_token_sums": float(token_diff),
        "max_rel_diff_per_sample": float(diff), "max_rel_diff_ap": float(ap_diff),
        "peak_mib_at_pad_to": mem, "pad_to": args.pad_to, "layer_checkpointing": layers,
    }
    if mem:
        result["ratios"]["memory gate/reference"] = mem["gate"] / mem["reference"]
    print(table(result))
    if args.json:
        from headway.storage import atomic_write_json
        atomic_write_json(args.json, result)


def table(r: dict) -> str:
    t, m = r["time_s"], r["peak_mib_at_pad_to"]
    mem = lambda k: f"{m[k]:9.0f}" if k in m else "        -"  # noqa: E731
    lines = [
        f"headway scoring benchmark: {r['model']} on {r['device']} ({r['dtype']}, "
        f"{r['threads']} threads), {r['rows']} rows / {r['tokens']} tokens, batch {r['batch_size']}",
        "",
        f"{'path':<34}{'time (s)':>10}{'x forward':>11}{'peak MiB @' + str(r['pad_to']):>15}",
        f"{'forward only (HF, no grad)':<34}{t['forward']:>10.1f}{1:>11.2f}{mem('forward'):>15}",
        f"{'fast AP (gate)':<34}{t['gate']:>10.1f}{t['gate'] / t['forward']:>11.2f}{mem('gate'):>15}",
        f"{'eager reference':<34}{t['reference']:>10.1f}{t['reference'] / t['forward']:>11.2f}"
        f"{mem('reference'):>15}",
        f"{'released config (pad 1024)':<34}{t['released_scaled']:>10.1f}"
        f"{t['released_scaled'] / t['forward']:>11.2f}{'':>15}",
        f"  ({t['released_measured']:.1f} s measured on {t['released_rows']} rows, scaled per row)",
        f"{'fast AP, sample convention, batch 8':<34}{t['gate_sample_convention_batch8']:>10.1f}"
        f"{t['gate_sample_convention_batch8'] / t['forward']:>11.2f}",
        "  (rows sorted by length; the default way to score)",
        f"{'  the same, per-token scores kept':<34}{t['gate_per_token_batch8']:>10.1f}"
        f"{t['gate_per_token_batch8'] / t['forward']:>11.2f}",
        f"same {t['released_rows']} rows padded to {r['pad_to']}: fast {t['gate_padded_measured']:.1f} s,"
        f" reference {t['released_measured']:.1f} s",
        "",
        "target                                   measured   goal",
        f"fast / forward                           {r['ratios']['gate/forward']:8.2f}   <= 2.0",
        f"fast / eager reference                   {r['ratios']['gate/reference']:8.2f}   <= 0.5",
        f"fast / released config                   {r['ratios']['gate/released']:8.3f}   <= 0.1",
        f"fast / reference, both padded to {r['pad_to']:<6}  "
        f"{r['ratios']['gate/reference at pad_to']:8.2f}   (<= 0.5)",
    ]
    if "memory gate/reference" in r["ratios"]:
        lines.append(f"peak memory fast / reference @1024      "
                     f"{r['ratios']['memory gate/reference']:8.3f}   <= 0.5")
    lines.append(f"max |fast - ref| / max |ref| per sample  {r['max_rel_diff_per_sample']:8.1e}"
                 f"   <= 1e-5")
    lines.append(f"max |fast - ref| / max |ref| of the AP   {r['max_rel_diff_ap']:8.1e}   <= 1e-5")
    lines.append(f"per-token / plain scoring time           {r['ratios']['per_token/plain']:8.2f}")
    lines.append(f"max |sum of tokens - sample| / max       {r['max_rel_diff_per_token_sums']:8.1e}"
                 f"   <= 1e-5")
    c = r["layer_checkpointing"]
    lines += [
        "",
        f"layer checkpointing, {c['rows']} rows x {c['tokens_per_row']} tokens in one batch: "
        f"off {c['off']['seconds']:.1f} s / {c['off']['peak_mib']:,.0f} MiB, on "
        f"{c['on']['seconds']:.1f} s / {c['on']['peak_mib']:,.0f} MiB",
        f"peak memory on / off                     {c['memory_ratio']:8.3f}   <= 0.4",
        f"time on / off                            {c['time_ratio']:8.2f}   <= 1.4",
        f"max |on - off| / max |off| per sample    {c['max_rel_diff']:8.1e}   <= 1e-6",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
