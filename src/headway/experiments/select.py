"""``headway select``: the pool rows whose per-sample pattern is most similar to the target's
pattern, against random pool rows."""

from __future__ import annotations

import numpy as np

from .runner import (
    POOL_SEED,
    Experiment,
    base_result,
    check_not_target,
    device,
    eval_task,
    finish,
    run_arm,
    start,
    target_task,
)


def run_select(e: Experiment, basics: list[str], pool_rows: int = 64, n: int = 64,
               stage1_steps: int = 8, stage2_steps: int = 16, similarity: str = "pearson",
               batch_size: int = 8) -> dict:
    """Pattern-similarity selection: rank a pool (``pool_rows`` rows of each basic task) by
    the Pearson similarity of each row's |s_i| to the target's AP (base model, the scarce
    target rows); train on the top ``n``, then on the target; against ``n`` random pool rows."""
    from ..data.rows import TaskSpec
    from ..data.tasks import load_task
    from ..models.loading import load_model
    from ..scoring.score import score_task
    from ..storage import atomic_write_json
    from .mixing import similarity_ranking, top_n

    check_not_target(e, basics)
    start(e, "select", {"basics": basics, "pool_rows": pool_rows, "n": n,
                         "stage1_steps": stage1_steps, "stage2_steps": stage2_steps,
                         "similarity": similarity})
    evaluation = eval_task(e)
    folder = e.out / "selection"
    print(f"headway select 1/3: pattern of {e.target} ({e.target_rows} rows) and per-row "
          f"patterns of the pool ({pool_rows} rows of each of {', '.join(basics)})")
    lm = load_model(e.model, device=device())
    settings = dict(template=e.template, max_length=e.max_length, batch_size=batch_size,
                    progress=e.progress)
    target = score_task(lm, target_task(e), save_to=folder / "target", **settings)
    pool, sims = [], []
    for b in basics:
        task = load_task(TaskSpec(b, n=pool_rows, seed=POOL_SEED, shuffle=True))
        pattern = score_task(lm, task, keep_per_sample=True, save_to=folder / "pool" / task.name,
                        **settings)
        by_index = {e_.index: e_ for e_ in task.examples}
        sim = similarity_ranking(pattern.per_sample, target.scores, similarity)
        for idx, s in zip(pattern.index.tolist(), sim):
            ex = by_index[idx]
            pool.append({"prompt": ex.prompt, "response": ex.response, "task": task.name,
                         "source": task.source, "row": idx})
            sims.append(float(s))
    del lm
    chosen = top_n(sims, n)
    ranking = [{**{k: pool[i][k] for k in ("task", "row")}, "similarity": sims[i]}
               for i in np.argsort(-np.asarray(sims), kind="stable")]
    picked = {t: sum(pool[i]["task"] == t for i in chosen) for t in dict.fromkeys(
        p["task"] for p in pool)}
    atomic_write_json(folder / "ranking.json", {"similarity": similarity, "selected_by_task":
                                                picked, "ranking": ranking})
    print("  top-" + str(n) + " rows by task: " + ", ".join(f"{t} {c}" for t, c in picked.items()))

    print(f"headway select 2/3: arms over seeds {e.seeds}: top-{n} selected and {n} random "
          f"pool rows ({stage1_steps} steps), then {stage2_steps} steps on the target")
    results = [base_result(e, evaluation)]
    target_stage = {"task": e.target, "rows": e.target_rows, "max_steps": stage2_steps}
    stage1 = {"task": "{data}", "rows": n, "max_steps": stage1_steps}
    for seed in e.seeds:
        random_rows = np.random.default_rng(seed).choice(len(pool), n, replace=False)
        for name, rows in (("selected", chosen), ("random", random_rows.tolist())):
            results.append(run_arm(e, name, seed, [stage1, target_stage], evaluation,
                                   data=[pool[i] for i in rows]))
    print("headway select 3/3: summary")
    return finish(e, "SelectResults", results, [("selected", "random")],
                   {"selected_by_task": picked})


# ---------------------------------------------------------------- headway modes
