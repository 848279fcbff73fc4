"""How close ``headway estimate`` comes to measured peaks, on the CPU.

    python benchmarks/bench_estimate.py            # the validation table of the README
    python benchmarks/bench_estimate.py --quick    # fewer cases

Measured: the real model (the built-in smollm2-135m, float32; and two tiny configs, one of
them a mixture of experts) runs the workload while
:class:`headway.scoring.memory.PeakMemory` counts the tensors alive; the peak plus the
weights is what ``torch.cuda.max_memory_allocated`` would report on a GPU. Training runs a
forward, a backward and an AdamW step. Training is measured in its
second step, when the optimizer's states exist throughout (what every later step holds).
Estimated: ``headway estimate``'s memory model from the config alone (:mod:`headway.estimate`).
"""

from __future__ import annotations

import argparse
import time

import torch

TINY = {
    "tiny-llama": ("LlamaConfig", dict(vocab_size=8000, hidden_size=256, intermediate_size=688,
                                       num_hidden_layers=6, num_attention_heads=8,
                                       num_key_value_heads=2)),
    "tiny-mixtral": ("MixtralConfig", dict(vocab_size=8000, hidden_size=256,
                                           intermediate_size=512, num_hidden_layers=4,
                                           num_attention_heads=8, num_key_value_heads=2,
                                           num_local_experts=4, num_experts_per_tok=2)),
}


def config_of(name: str):
    import transformers

    from headway.estimate import load_config

    if name in TINY:
        kind, fields = TINY[name]
        return getattr(transformers, kind)(**fields)
    return load_config(name)


def measured(config, batch: int, length: int, workload: str, mode: str,
             checkpoint_layers: bool) -> int:
    """Peak bytes of the real model running the workload: its weights plus every tensor
    alive at once."""
    from transformers import AutoModelForCausalLM

    from headway.estimate import _rows
    from headway.models.architectures import resolve
    from headway.scoring.head_scores import gate_scores
    from headway.scoring.memory import PeakMemory, checkpointed_layers

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    data = _rows(batch, length, min(config.vocab_size, 1000))
    if workload == "score":
        model.eval()
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        with checkpointed_layers(model, checkpoint_layers), PeakMemory() as probe:
            gate_scores(model, data, resolve(model).n_heads, "sample")
        return weights + probe.peak
    model.train()
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "k_proj",
                                                                      "v_proj", "o_proj"],
                                                 task_type="CAUSAL_LM"))
    if checkpoint_layers:
        model.gradient_checkpointing_enable()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad])

    def step():
        model(**data).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the first step makes AdamW's states, which every later step holds
    states = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                 for t in s.values() if isinstance(t, torch.Tensor))
    with PeakMemory() as probe:
        step()
    return weights + states + probe.peak


def main() -> None:
    from headway.estimate import estimate

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer cases")
    args = parser.parse_args()
    cases = [  # model, workload, mode, layer checkpointing, batch, length
        ("smollm2-135m", "score", "full", False, 1, 256),
        ("smollm2-135m", "score", "full", False, 8, 256),
        ("smollm2-135m", "score", "full", False, 4, 1024),
        ("smollm2-135m", "score", "full", True, 4, 1024),
        ("smollm2-135m", "train", "full", False, 4, 256),
        ("smollm2-135m", "train", "lora", False, 4, 256),
        ("tiny-llama", "score", "full", False, 2, 512),
        ("tiny-llama", "score", "full", False, 8, 512),
        ("tiny-llama", "train", "full", True, 8, 512),
        ("tiny-mixtral", "score", "full", False, 4, 256),
        ("tiny-mixtral", "train", "full", False, 4, 256),
    ]
    if args.quick:
        cases = cases[::3]
    rows = []
    for name, workload, mode, layers, batch, length in cases:
        config = config_of(name)
        start = time.perf_counter()
        predicted = estimate(config, batch, length, dtype="float32", workload=workload,
                             mode=mode, checkpoint_layers=layers, probe_batch=batch,
                             probe_length=length)
        seconds = time.perf_counter() - start
        real = measured(config, batch, length, workload, mode, layers)
        rows.append((name, f"{workload} {mode if workload == 'train' else ''}".strip(),
                     "yes" if layers else "no", batch, length, real, predicted.peak, seconds))
        print(rows[-1], flush=True)
    print("\n| model | workload | layer ckpt | batch | tokens | measured MiB | estimated MiB "
          "| estimate / measured |")
    print("|---|---|---|---|---|---|---|---|")
    for name, what, layers, batch, length, real, predicted, _ in rows:
        print(f"| {name} | {what} | {layers} | {batch} | {length} | {real / 2**20:,.0f} | "
              f"{predicted / 2**20:,.0f} | {predicted / real:.2f} |")
    worst = max(abs(p / r - 1) for *_, r, p, _ in rows)
    print(f"\nlargest error: {worst:.1%} (target: within 20 %)")


if __name__ == "__main__":
    main()
