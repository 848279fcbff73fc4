"""GPU benchmark of scoring at the sizes users run: 7-8B models in bfloat16, no download.

    python benchmarks/bench_gpu.py                    # both models, 512 / 2048 / 8192 tokens
    python benchmarks/bench_gpu.py --models llama3-8b --lengths 2048 --out results.json
    python benchmarks/bench_gpu.py --tiny             # a tiny config, on the CPU if no GPU:
                                                      # the test suite runs it, so it cannot rot

Models are randomly initialised from the published configurations of Llama-3-8B and
Qwen2.5-7B (layers, heads, grouped-query KV heads, widths, vocabulary): shapes are what cost
time and memory. Each row is one sequence of the given length whose second half is the
response. Paths:

    forward            the model's forward with labels (HF loss), no grad
    gate AP            headway's fast path (SDPA attention, no weight gradients)
    eager reference    eager attention, Γ.retain_grad(), ordinary backward (weight grads too)
    released config    the released script: the eager reference on 4 rows padded to 1024
                       tokens (512 real tokens each), time per row; at 512 tokens only

    gate AP, layers    the fast path with activation checkpointing per decoder layer

Time is the median of 3 runs after a warm-up; peak memory is the peak CUDA allocation above
what the model's weights hold (on the CPU, the peak of tensors alive, measured by
:class:`headway.scoring.memory.PeakMemory`). An out-of-memory error is reported as OOM. Targets (one H100
class GPU): gate AP <= 2.2 x forward at 2048 tokens; released config per row >= 20 x gate AP
per 512-token row; peak memory of gate AP at 8192 tokens <= 0.25 x the eager reference (or the
reference runs out of memory).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

CONFIGS = {
    # published configurations (config.json of meta-llama/Meta-Llama-3-8B, Qwen/Qwen2.5-7B)
    "llama3-8b": ("LlamaConfig", dict(vocab_size=128256, hidden_size=4096,
                                      intermediate_size=14336, num_hidden_layers=32,
                                      num_attention_heads=32, num_key_value_heads=8,
                                      max_position_embeddings=8192, rope_theta=500000.0,
                                      rms_norm_eps=1e-5, tie_word_embeddings=False)),
    "qwen2.5-7b": ("Qwen2Config", dict(vocab_size=152064, hidden_size=3584,
                                       intermediate_size=18944, num_hidden_layers=28,
                                       num_attention_heads=28, num_key_value_heads=4,
                                       max_position_embeddings=32768, rope_theta=1000000.0,
                                       rms_norm_eps=1e-6, tie_word_embeddings=False)),
    # the shape of a Llama-3, shrunk: every path runs in seconds on a CPU
    "tiny": ("LlamaConfig", dict(vocab_size=512, hidden_size=64, intermediate_size=224,
                                 num_hidden_layers=4, num_attention_heads=8,
                                 num_key_value_heads=2, max_position_embeddings=2048)),
}
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def build(name: str):
    import transformers

    kind, fields = CONFIGS[name]
    config = getattr(transformers, kind)(**fields)
    with torch.device(DEVICE):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16,
                                                              attn_implementation="sdpa")
    return model.eval()


def batch(rows: int, length: int, vocab: int, pad_to: int | None = None) -> dict:
    width = pad_to or length
    ids = torch.randint(0, vocab, (rows, width), device=DEVICE)
    mask = torch.zeros(rows, width, dtype=torch.long, device=DEVICE)
    mask[:, :length] = 1
    labels = ids.clone()
    labels[:, : length // 2] = -100
    labels[:, length:] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def measure(fn, repeats: int = 3) -> tuple[float, float]:
    """(median seconds, peak GiB above the allocation before) of ``fn``."""
    from headway.scoring.memory import PeakMemory

    fn()  # warm-up
    if DEVICE == "cpu":  # no allocator statistics: count the tensors alive
        with PeakMemory() as probe:
            fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        return statistics.median(times), probe.peak / 2**30
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), (torch.cuda.max_memory_allocated() - base) / 2**30


def run_path(path: str, model, data: dict, n_heads: int, repeats: int = 3):
    from headway.scoring.head_scores import gate_scores, reference_scores
    from headway.scoring.memory import checkpointed_layers

    def forward():
        with torch.no_grad():
            model(**data)

    def layers():
        with checkpointed_layers(model):
            gate_scores(model, data, n_heads, "sample")

    fn = {"forward": forward,
          "gate AP": lambda: gate_scores(model, data, n_heads, "sample"),
          "gate AP, layers": layers,
          "eager reference": lambda: reference_scores(model, data, n_heads, "sample"),
          "released config": lambda: reference_scores(model, data, n_heads, "paper")}[path]
    try:
        return measure(fn, repeats)
    except torch.OutOfMemoryError:
        model.zero_grad(set_to_none=True)
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["llama3-8b", "qwen2.5-7b"],
                        choices=list(CONFIGS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[512, 2048, 8192])
    parser.add_argument("--tiny", action="store_true",
                        help="the tiny config at 256 and 512 tokens (runs on a CPU)")
    parser.add_argument("--out", help="write the rows as JSON here")
    args = parser.parse_args()
    if args.tiny:
        args.models, args.lengths = ["tiny"], [256, 512]
    elif DEVICE != "cuda":
        raise SystemExit("bench_gpu.py needs a CUDA GPU (--tiny runs on a CPU)")
    rows = []
    for name in args.models:
        model = build(name)
        n_heads, vocab = model.config.num_attention_heads, model.config.vocab_size
        for length in args.lengths:
            data = batch(1, length, vocab)
            paths = ["forward", "gate AP", "gate AP, layers", "eager reference"]
            for path in paths:
                result = run_path(path, model, data, n_heads, 1 if args.tiny else 3)
                rows.append({"model": name, "tokens": length, "path": path,
                             "seconds": result and result[0], "peak_gib": result and result[1],
                             "tokens_per_s": result and length / result[0]})
                print(rows[-1], flush=True)
            if length == 512:
                result = run_path("released config", model, batch(4, 512, vocab, pad_to=1024),
                                  n_heads, 1 if args.tiny else 3)
                rows.append({"model": name, "tokens": 512, "path": "released config",
                             "seconds": result and result[0] / 4, "peak_gib": result and result[1],
                             "tokens_per_s": result and 4 * 512 / result[0]})
                print(rows[-1], flush=True)
        del model
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    device = torch.cuda.get_device_name() if DEVICE == "cuda" else "CPU"
    print(f"\n{device}, bfloat16, random-init models, one sequence per row")
    print("| model | tokens | path | s / row | tokens/s | peak GiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        cells = ("OOM", "", "") if r["seconds"] is None else (
            f"{r['seconds']:.3f}", f"{r['tokens_per_s']:,.0f}", f"{r['peak_gib']:.3g}")
        print(f"| {r['model']} | {r['tokens']} | {r['path']} | {' | '.join(cells)} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": device, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
