"""``headway mix | select | modes``: fine-tuning experiments scored on held-out target rows,
each method against its baselines, over several seeds (DESIGN.md 1.3).

An *arm* is one way to fine-tune: a list of SFT stages (each a ``headway train`` run; stage
k+1 starts from stage k's weights), then :func:`headway.evaluation.evaluate` on the target's
evaluation rows. Every arm of an experiment is evaluated on the same rows, which are checked
to be disjoint from every training row (:func:`headway.evaluation.check_disjoint`).

Experiment folder::

    experiment.json             the settings
    alpha/ (mix)                short tracked SFTs giving each task's ΔAP; alpha.json
    selection/ (select)         target pattern, pool patterns, ranking.json
    heads/ (modes)              target pattern and the heads trained
    arms/ARM-seedS/             data.jsonl (stage-1 rows), stage1/, stage2/, result.json
    results.json, table.md      per arm mean ± sd over seeds; paired differences

Finished arms are reused when their settings match; an interrupted experiment starts the arm
it was in again. Trained weights are deleted after evaluation unless ``keep_weights``.

What a seed changes: the training seed (data order, LoRA initialisation) of every arm; in
``mix`` also the basic-task rows drawn (rows ``seed·N ...`` of generator seed
:data:`MIX_SEED`) and the random mixture's counts; in ``select`` the random rows. The target
rows, the evaluation rows, α and the selected rows are the same for every seed.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

BASIC_TASKS = ["arithmetic", "chain_sum", "sorting", "syllogism", "leg_counting"]
BASE_ARM = "base"  # the model before any training
# generator seeds of mixture and pool rows (reasoning-gym row i of seed S is Random(S + i):
# far apart, so the two never share rows with each other or with seed-0 rows)
MIX_SEED, POOL_SEED = 100_000, 200_000


@dataclass
class Experiment:
    """Settings every experiment shares."""

    output_dir: str
    model: str = "smollm2-135m"
    target: str = "word_problems"
    target_rows: int = 32  # labelled target rows available for training (rows 0..n-1)
    eval_rows: int = 64
    eval_offset: int = 10_000  # evaluation rows start here
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    batch_size: int = 8
    learning_rate: float = 5e-5
    max_length: int = 512
    template: str = "qa"
    keep_weights: bool = False
    progress: bool = True

    @property
    def out(self) -> Path:
        return Path(self.output_dir)


# ---------------------------------------------------------------- building blocks


def _train_config(e: Experiment, output_dir: Path, **fields):
    from .train import load_config

    base = dict(model=e.model, template=e.template, max_length=e.max_length,
                per_device_train_batch_size=e.batch_size, learning_rate=e.learning_rate,
                tracking=False, save_final=True, logging_steps=5, progress=e.progress,
                output_dir=str(output_dir))
    return load_config(None, **{**base, **fields})


def eval_task(e: Experiment):
    """The evaluation rows; refused at once if they overlap the target's training rows."""
    from .evaluation import check_disjoint
    from .tasks import TaskSpec, load_task

    evaluation = load_task(TaskSpec(e.target, n=e.eval_rows, offset=e.eval_offset, seed=0))
    target = target_task(e)
    check_disjoint(evaluation, [(target.source, [x.index for x in target.examples])])
    return evaluation


def _device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _check_not_target(e: Experiment, basics: list[str]) -> None:
    from .mixing import MixingError
    from .tasks import TaskSpec, load_task

    target = target_task(e).source
    for b in basics:
        if load_task(TaskSpec(b, n=1)).source.split("(")[0] == target.split("(")[0]:
            raise MixingError(f"basic task {b!r} is the target {e.target!r} itself")


def target_task(e: Experiment):
    from .tasks import TaskSpec, load_task

    return load_task(TaskSpec(e.target, n=e.target_rows, offset=0, seed=0))


def trained_rows(spec) -> tuple[list[tuple[str, list[int]]], list[str]]:
    """``(source, row indices)`` pairs and the prompts of everything a training set (a
    :class:`headway.tasks.TaskSpec`) holds; a mixture file adds the rows it was built from."""
    from .mixing import used_rows
    from .tasks import load_task

    task = load_task(spec)
    used = [(task.source, [e.index for e in task.examples])]
    if str(spec.source).endswith(".jsonl"):
        used += [(source, sorted(rows)) for source, rows in used_rows(spec.source).items()]
    return used, [e.prompt for e in task.examples]


def _stage_spec(stage: dict):
    from .tasks import TaskSpec

    return TaskSpec(stage["task"], n=stage["rows"], offset=stage.get("offset", 0),
                    seed=stage.get("data_seed", 0))


def run_arm(e: Experiment, name: str, seed: int, stages: list[dict], evaluation,
            data: list[dict] | None = None) -> dict:
    """Train ``stages`` in turn (TrainConfig fields; ``seed`` is the training seed), then
    evaluate on ``evaluation`` (a Task). ``data``: rows of ``ARM/data.jsonl``, written first
    (stages refer to it as ``"{data}"``). Returns the result (also ``ARM/result.json``)."""
    from .evaluation import EvalSettings, check_disjoint, duplicate_prompts, evaluate
    from .mixing import write_rows
    from .models import load_model
    from .storage import atomic_write_json
    from .train import run_train

    arm = e.out / "arms" / f"{name}-seed{seed}"
    key = {"model": e.model, "stages": stages, "data": data, "eval": eval_key(e),
           "template": e.template, "max_length": e.max_length, "batch_size": e.batch_size,
           "learning_rate": e.learning_rate}
    result_file = arm / "result.json"
    if result_file.is_file():
        result = json.loads(result_file.read_text())
        if result.get("key") == key:
            print(f"  {name} seed {seed}: reusing {result_file}")
            return result
    if arm.exists():
        shutil.rmtree(arm)  # unfinished, or other settings: start the arm again
    arm.mkdir(parents=True)
    if data is not None:
        write_rows(data, arm / "data.jsonl", seed)
    stages = [{k: (str(arm / "data.jsonl") if v == "{data}" else v) for k, v in s.items()}
              for s in stages]
    used, prompts = [], []
    for stage in stages:
        rows, stage_prompts = trained_rows(_stage_spec(stage))
        used += rows
        prompts += stage_prompts
    check_disjoint(evaluation, used)

    model, manifests = e.model, []
    for k, stage in enumerate(stages, 1):
        config = _train_config(e, arm / f"stage{k}", model=model, seed=seed, **stage)
        print(f"  {name} seed {seed}: stage {k}/{len(stages)}: {config.max_steps} steps "
              f"({config.mode}) on {Path(config.task).name} ({config.rows} rows)")
        run_train(config)
        manifests.append(json.loads((arm / f"stage{k}" / "manifest.json").read_text()))
        model = str(arm / f"stage{k}" / "final")
    lm = load_model(model, device=_device())
    result = evaluate(lm, evaluation, EvalSettings(template=e.template, max_length=e.max_length),
                      progress=e.progress)
    result.update(
        arm=name, seed=seed, key=key,
        n_eval_prompts_seen_in_training=duplicate_prompts(evaluation, prompts),
        train_seconds=sum(m["train_seconds"] for m in manifests),
        steps=sum(m["global_step"] for m in manifests),
        n_trainable_parameters=manifests[-1]["n_trainable_parameters"] if manifests else 0,
        n_parameters=sum(p.numel() for p in lm.model.parameters()))
    atomic_write_json(result_file, result)
    if not e.keep_weights:
        for k in range(1, len(stages) + 1):
            shutil.rmtree(arm / f"stage{k}" / "final", ignore_errors=True)
    print(f"  {name} seed {seed}: accuracy {result['accuracy']:.3f}, response loss "
          f"{result['response_loss']:.4f}")
    return result


def eval_key(e: Experiment) -> dict:
    return {"target": e.target, "rows": e.eval_rows, "offset": e.eval_offset}


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


def _finish(e: Experiment, kind: str, results: list[dict], comparisons, extra: dict) -> dict:
    from .html_report import write_experiment_report
    from .report import arms_figure
    from .storage import atomic_write_bytes, atomic_write_json

    summary = summarise(results, comparisons)
    out = {"kind": f"headway.{kind}", "experiment": dataclasses.asdict(e), **extra,
           "summary": summary,
           "results": [{k: v for k, v in r.items() if k not in ("rows", "key")}
                       for r in results]}
    atomic_write_json(e.out / "results.json", out)
    text = table_markdown(summary)
    atomic_write_bytes(e.out / "table.md", text.encode())
    arms_figure(summary, e.out / "results.png", title=f"{kind.removesuffix('Results')}: "
                                                      f"{e.target} on {e.model}")
    report = write_experiment_report(e.out)
    print(text)
    print(f"results in {e.out / 'results.json'}, {e.out / 'table.md'}; figure "
          f"{e.out / 'results.png'}; open {report} in a browser")
    return out


def _start(e: Experiment, kind: str, settings: dict) -> None:
    from .storage import atomic_write_json

    e.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(e.out / "experiment.json",
                      {"kind": kind, **dataclasses.asdict(e), **settings})


def _base_result(e: Experiment, evaluation) -> dict:
    """The untrained model on the evaluation rows (one 'seed': nothing is random)."""
    return run_arm(e, BASE_ARM, 0, [], evaluation)


# ---------------------------------------------------------------- headway mix


def delta_patterns(e: Experiment, tasks: list[str], rows: int, steps: int,
                   probe_rows: int) -> dict[str, np.ndarray]:
    """ΔAP [L, H] of each task: AP after a short tracked full SFT minus before, on the same
    probe rows. Basic tasks are probed on held-out rows; the target (scarce) on its own
    training rows."""
    from .run_dir import clear_other_run
    from .tracking import run_trajectory
    from .train import finished_run, run_train

    deltas = {}
    for source in tasks:
        is_target = source == e.target
        config = _train_config(
            e, e.out / "alpha" / Path(source).name, task=source,
            rows=e.target_rows if is_target else rows, max_steps=steps, tracking=True,
            track_every=0, probe_rows=e.target_rows if is_target else probe_rows,
            probe_train_rows=is_target, save_final=False, seed=0)
        if finished_run(config):
            print(f"  ΔAP of {source}: reusing {config.output_dir}")
        else:
            print(f"  ΔAP of {source}: {steps} SFT steps on {config.rows} rows")
            clear_other_run(config)
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
    from .analysis import composition_fit
    from .mixing import alpha_to_counts, mixture_rows, random_counts
    from .storage import atomic_write_json
    from .tasks import TaskSpec, load_task

    _check_not_target(e, basics)
    _start(e, "mix", {"basics": basics, "total": total, "stage1_steps": stage1_steps,
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
    results = [_base_result(e, evaluation)]
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
    return _finish(e, "MixResults", results,
                   [("pattern_mix", "random_mix"), ("pattern_mix", "target_only"),
                    ("random_mix", "target_only")], {"alpha": alpha})


# ---------------------------------------------------------------- headway select


def run_select(e: Experiment, basics: list[str], pool_rows: int = 64, n: int = 64,
               stage1_steps: int = 8, stage2_steps: int = 16, similarity: str = "pearson",
               batch_size: int = 8) -> dict:
    """Pattern-similarity selection: rank a pool (``pool_rows`` rows of each basic task) by
    the Pearson similarity of each row's |s_i| to the target's AP (base model, the scarce
    target rows); train on the top ``n``, then on the target; against ``n`` random pool rows."""
    from .mixing import similarity_ranking, top_n
    from .models import load_model
    from .scoring import score_task
    from .storage import atomic_write_json
    from .tasks import TaskSpec, load_task

    _check_not_target(e, basics)
    _start(e, "select", {"basics": basics, "pool_rows": pool_rows, "n": n,
                         "stage1_steps": stage1_steps, "stage2_steps": stage2_steps,
                         "similarity": similarity})
    evaluation = eval_task(e)
    folder = e.out / "selection"
    print(f"headway select 1/3: pattern of {e.target} ({e.target_rows} rows) and per-row "
          f"patterns of the pool ({pool_rows} rows of each of {', '.join(basics)})")
    lm = load_model(e.model, device=_device())
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
    results = [_base_result(e, evaluation)]
    target_stage = {"task": e.target, "rows": e.target_rows, "max_steps": stage2_steps}
    stage1 = {"task": "{data}", "rows": n, "max_steps": stage1_steps}
    for seed in e.seeds:
        random_rows = np.random.default_rng(seed).choice(len(pool), n, replace=False)
        for name, rows in (("selected", chosen), ("random", random_rows.tolist())):
            results.append(run_arm(e, name, seed, [stage1, target_stage], evaluation,
                                   data=[pool[i] for i in rows]))
    print("headway select 3/3: summary")
    return _finish(e, "SelectResults", results, [("selected", "random")],
                   {"selected_by_task": picked})


# ---------------------------------------------------------------- headway modes


def run_modes(e: Experiment, steps: int = 32, top_k: int = 10,
              learning_rates: dict[str, float] | None = None, lora_r: int = 8) -> dict:
    """Head-selective SFT (the target pattern's top-k heads) against LoRA and full SFT, equal
    steps and data: accuracy, response loss, trainable parameters, training time."""
    from .heads import top_heads_from_file
    from .models import load_model
    from .scoring import score_task

    lrs = {"full": 5e-5, "lora": 2e-4, "heads": 5e-4, **(learning_rates or {})}
    _start(e, "modes", {"steps": steps, "top_k": top_k, "learning_rates": lrs, "lora_r": lora_r})
    evaluation = eval_task(e)
    print(f"headway modes 1/3: pattern of {e.target} on its {e.target_rows} training rows")
    lm = load_model(e.model, device=_device())
    path = e.out / "heads" / "target"
    score_task(lm, target_task(e), template=e.template, max_length=e.max_length,
          progress=e.progress, save_to=path)
    heads = [f"{l}.{h}" for l, h in top_heads_from_file(path, top_k, lm.n_layers, lm.n_heads)]
    del lm
    print(f"  top-{top_k} heads: {' '.join(heads)}")
    print(f"headway modes 2/3: full, LoRA (r={lora_r}) and heads SFT, {steps} steps each, "
          f"seeds {e.seeds}")
    results = [_base_result(e, evaluation)]
    stage = {"task": e.target, "rows": e.target_rows, "max_steps": steps}
    for seed in e.seeds:
        for mode in ("full", "lora", "heads"):
            extra = {"heads": heads} if mode == "heads" else (
                {"lora_r": lora_r, "lora_alpha": 2 * lora_r} if mode == "lora" else {})
            results.append(run_arm(e, mode, seed, [{**stage, "mode": mode,
                                                    "learning_rate": lrs[mode], **extra}],
                                   evaluation))
    print("headway modes 3/3: summary")
    return _finish(e, "ModesResults", results, [("heads", "full"), ("heads", "lora"),
                                                 ("lora", "full")], {"heads": heads,
                                                                      "learning_rates": lrs})
