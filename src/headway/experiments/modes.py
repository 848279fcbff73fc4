"""``headway modes``: head-selective SFT on the target pattern's top-k heads against LoRA and
full SFT, at equal steps."""

from __future__ import annotations

from .runner import (
    Experiment,
    base_result,
    device,
    eval_task,
    finish,
    run_arm,
    start,
    target_task,
)


def run_modes(e: Experiment, steps: int = 32, top_k: int = 10,
              learning_rates: dict[str, float] | None = None, lora_r: int = 8) -> dict:
    """Head-selective SFT (the target pattern's top-k heads) against LoRA and full SFT, equal
    steps and data: accuracy, response loss, trainable parameters, training time."""
    from ..models.loading import load_model
    from ..scoring.score import score_task
    from ..training.heads import top_heads_from_file

    lrs = {"full": 5e-5, "lora": 2e-4, "heads": 5e-4, **(learning_rates or {})}
    start(e, "modes", {"steps": steps, "top_k": top_k, "learning_rates": lrs, "lora_r": lora_r})
    evaluation = eval_task(e)
    print(f"headway modes 1/3: pattern of {e.target} on its {e.target_rows} training rows")
    lm = load_model(e.model, device=device())
    path = e.out / "heads" / "target"
    score_task(lm, target_task(e), template=e.template, max_length=e.max_length,
          progress=e.progress, save_to=path)
    heads = [f"{l}.{h}" for l, h in top_heads_from_file(path, top_k, lm.n_layers, lm.n_heads)]
    del lm
    print(f"  top-{top_k} heads: {' '.join(heads)}")
    print(f"headway modes 2/3: full, LoRA (r={lora_r}) and heads SFT, {steps} steps each, "
          f"seeds {e.seeds}")
    results = [base_result(e, evaluation)]
    stage = {"task": e.target, "rows": e.target_rows, "max_steps": steps}
    for seed in e.seeds:
        for mode in ("full", "lora", "heads"):
            extra = {"heads": heads} if mode == "heads" else (
                {"lora_r": lora_r, "lora_alpha": 2 * lora_r} if mode == "lora" else {})
            results.append(run_arm(e, mode, seed, [{**stage, "mode": mode,
                                                    "learning_rate": lrs[mode], **extra}],
                                   evaluation))
    print("headway modes 3/3: summary")
    return finish(e, "ModesResults", results, [("heads", "full"), ("heads", "lora"),
                                                 ("lora", "full")], {"heads": heads,
                                                                      "learning_rates": lrs})
