"""``headway mix``: the pattern-guided basic-task mixture against a random mixture of the same
size and target-only SFT (α from fitting the target's ΔAP on the basic tasks' ΔAPs)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .runner import (
    MIX_SEED,
    Experiment,
    base_result,
    check_not_target,
    eval_task,
    finish,
    run_arm,
    start,
    train_config,
)


def delta_patterns(e: Experiment, tasks: list[str], rows: int, steps: int,
                   probe_rows: int) -> dict[str, np.ndarray]:
    """ΔAP [L, H] of each task: AP after a short tracked full SFT minus before, on the same
    probe rows. Basic tasks are probed on held-out rows; the target (scarce) on its own
    training rows."""
    from ..training.records import run_trajectory
    from ..training.run_dir import clear_other_run
    from ..training.trainer import finished_run, run_train, train_data

    deltas = {}
    for source in tasks:
        is_target = source == e.target
        config = train_config(
            e, e.out / "alpha" / Path(source).name, task=source,
            rows=e.target_rows if is_target else rows, max_steps=steps, tracking=True,
            track_every=0, probe_rows=e.target_rows if is_target else probe_rows,
            probe_train_rows=is_target, save_final=False, seed=0)
        if finished_run(config):
            print(f"  ΔAP of {source}: reusing {config.output_dir}")
        else:
            print(f"  ΔAP of {source}: {steps} SFT steps on {config.rows} rows")
            clear_other_run(config, train_data(config))
            run_train(config)
        probes = run_trajectory(config.output_dir)["probes"]
        patterns = next(iter(probes.values()))["patterns"]
        deltas[source] = (patterns[-1] - patterns[0]).numpy()
    return deltas


def run_mix(e: Experiment, basics: list[str], total: int = 128, stage1_steps: int = 16,
            stage2_steps: int = 16, delta_rows: int = 64, delta_steps: int = 8,
            probe_rows: int = 32) -> dict:
    """Pattern-guided mixture (α from the composition fit of the target's ΔAP on the basic
    tasks' ΔAPs, NNLS) against a uniform random mixture of the same size and target-only SFT
    with the same total steps."""
    from ..analysis.fitting import composition_fit
    from ..data.rows import TaskSpec
    from ..data.tasks import load_task
    from ..storage import atomic_write_json
    from .mixing import alpha_to_counts, mixture_rows, random_counts

    check_not_target(e, basics)
    start(e, "mix", {"basics": basics, "total": total, "stage1_steps": stage1_steps,
                      "stage2_steps": stage2_steps, "delta_rows": delta_rows,
                      "delta_steps": delta_steps, "probe_rows": probe_rows})
    evaluation = eval_task(e)
    print(f"headway mix 1/3: ΔAP of {e.target} ({e.target_rows} rows) and of "
          f"{', '.join(basics)} ({delta_steps} steps each)")
    deltas = delta_patterns(e, [e.target, *basics], delta_rows, delta_steps, probe_rows)
    bases = [deltas[b] for b in basics]
    fit = composition_fit(deltas[e.target], bases, nonnegative=True)
    unconstrained = composition_fit(deltas[e.target], bases)
    counts = alpha_to_counts(fit["alpha"], total)
    alpha = {"basics": basics, "alpha": fit["alpha"], "r2": fit["r2"],
             "r2_uncentered": fit["r2_uncentered"], "counts": counts,
             "alpha_unconstrained": unconstrained["alpha"], "r2_unconstrained": unconstrained["r2"]}
    atomic_write_json(e.out / "alpha" / "alpha.json", alpha)
    print("  α (NNLS): " + ", ".join(f"{b} {a:.3f}" for b, a in zip(basics, fit["alpha"]))
          + f"; R² {fit['r2']:.3f}; counts of {total}: "
          + ", ".join(f"{b} {c}" for b, c in zip(basics, counts)))

    print(f"headway mix 2/3: arms over seeds {e.seeds}: pattern mixture, random mixture "
          f"(stage 1: {stage1_steps} steps on {total} basic rows; stage 2: {stage2_steps} steps "
          f"on the target), target only ({stage1_steps + stage2_steps} steps)")
    results = [base_result(e, evaluation)]
    target_stage = {"task": e.target, "rows": e.target_rows, "max_steps": stage2_steps}
    for seed in e.seeds:
        pool = [load_task(TaskSpec(b, n=total, offset=seed * total, seed=MIX_SEED, shuffle=True))
                for b in basics]
        for name, arm_counts in (("pattern_mix", counts),
                                 ("random_mix", random_counts(len(basics), total, seed))):
            stage1 = {"task": "{data}", "rows": total, "max_steps": stage1_steps}
            results.append(run_arm(e, name, seed, [stage1, target_stage], evaluation,
                                   data=mixture_rows(pool, arm_counts)))
        results.append(run_arm(e, "target_only", seed,
                               [{**target_stage, "max_steps": stage1_steps + stage2_steps}],
                               evaluation))
    print("headway mix 3/3: summary")
    return finish(e, "MixResults", results,
                   [("pattern_mix", "random_mix"), ("pattern_mix", "target_only"),
                    ("random_mix", "target_only")], {"alpha": alpha})


# ---------------------------------------------------------------- headway select
