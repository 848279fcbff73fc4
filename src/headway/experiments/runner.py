"""``headway mix | select | modes``: fine-tuning experiments scored on held-out target rows,
each method against its baselines, over several seeds.

An *arm* is one way to fine-tune: a list of SFT stages (each a ``headway train`` run; stage
k+1 starts from stage k's weights), then :func:`headway.experiments.evaluation.evaluate` on the target's
evaluation rows. Every arm of an experiment is evaluated on the same rows, which are checked
to be disjoint from every training row (:func:`headway.experiments.evaluation.check_disjoint`).

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

from .summary import summarise, table_markdown

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


def train_config(e: Experiment, output_dir: Path, **fields):
    from ..training.config import TrainConfig

    base = dict(model=e.model, template=e.template, max_length=e.max_length,
                per_device_train_batch_size=e.batch_size, learning_rate=e.learning_rate,
                tracking=False, save_final=True, logging_steps=5, disable_tqdm=not e.progress,
                save_strategy="no", output_dir=str(output_dir))
    return TrainConfig(**{**base, **fields})


def eval_task(e: Experiment):
    """The evaluation rows; refused at once if they overlap the target's training rows."""
    from ..data.rows import TaskSpec
    from ..data.tasks import load_task
    from .evaluation import check_disjoint

    evaluation = load_task(TaskSpec(e.target, n=e.eval_rows, offset=e.eval_offset, seed=0))
    target = target_task(e)
    check_disjoint(evaluation, [(target.source, [x.index for x in target.examples])])
    return evaluation


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_not_target(e: Experiment, basics: list[str]) -> None:
    from ..data.rows import TaskSpec
    from ..data.tasks import load_task
    from .mixing import MixingError

    target = target_task(e).source
    for b in basics:
        if load_task(TaskSpec(b, n=1)).source.split("(")[0] == target.split("(")[0]:
            raise MixingError(f"basic task {b!r} is the target {e.target!r} itself")


def target_task(e: Experiment):
    from ..data.rows import TaskSpec
    from ..data.tasks import load_task

    return load_task(TaskSpec(e.target, n=e.target_rows, offset=0, seed=0))


def trained_rows(spec) -> tuple[list[tuple[str, list[int]]], list[str]]:
    """``(source, row indices)`` pairs and the prompts of everything a training set (a
    :class:`headway.tasks.TaskSpec`) holds; a mixture file adds the rows it was built from."""
    from ..data.tasks import load_task
    from .mixing import used_rows

    task = load_task(spec)
    used = [(task.source, [e.index for e in task.examples])]
    if str(spec.source).endswith(".jsonl"):
        used += [(source, sorted(rows)) for source, rows in used_rows(spec.source).items()]
    return used, [e.prompt for e in task.examples]


def rows_trained_by(run_dirs) -> tuple[list[tuple[str, list[int]]], list[str]]:
    """:func:`trained_rows` of the training sets of ``headway train`` run directories (read from
    each ``manifest.json``), concatenated in order."""
    from ..data.rows import TaskSpec
    from .evaluation import EvalError

    used, prompts = [], []
    for run in run_dirs:
        manifest = Path(run) / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(f"{manifest}: not a headway train run directory")
        try:
            spec = TaskSpec(**json.loads(manifest.read_text())["train_task"]["spec"])
        except (ValueError, KeyError, TypeError) as err:
            raise EvalError(f"{manifest}: no readable train_task.spec ({err!r})") from err
        rows, run_prompts = trained_rows(spec)
        used += rows
        prompts += run_prompts
    return used, prompts


def stage_spec(stage: dict):
    from ..data.rows import TaskSpec

    return TaskSpec(stage["task"], n=stage["rows"], offset=stage.get("offset", 0),
                    seed=stage.get("task_seed", 0))


def run_arm(e: Experiment, name: str, seed: int, stages: list[dict], evaluation,
            data: list[dict] | None = None) -> dict:
    """Train ``stages`` in turn (TrainConfig fields; ``seed`` is the training seed), then
    evaluate on ``evaluation`` (a Task). ``data``: rows of ``ARM/data.jsonl``, written first
    (stages refer to it as ``"{data}"``). Returns the result (also ``ARM/result.json``)."""
    from ..models.loading import load_model
    from ..storage import atomic_write_json
    from ..training.trainer import run_train
    from .evaluation import EvalSettings, check_disjoint, duplicate_prompts, evaluate
    from .mixing import write_rows

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
        rows, stage_prompts = trained_rows(stage_spec(stage))
        used += rows
        prompts += stage_prompts
    check_disjoint(evaluation, used)

    model, manifests = e.model, []
    for k, stage in enumerate(stages, 1):
        config = train_config(e, arm / f"stage{k}", model=model, seed=seed, **stage)
        print(f"  {name} seed {seed}: stage {k}/{len(stages)}: {config.max_steps} steps "
              f"({config.mode}) on {Path(config.task).name} ({config.rows} rows)")
        run_train(config)
        manifests.append(json.loads((arm / f"stage{k}" / "manifest.json").read_text()))
        model = str(arm / f"stage{k}" / "final")
    lm = load_model(model, device=device())
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


def finish(e: Experiment, kind: str, results: list[dict], comparisons, extra: dict) -> dict:
    from ..report.figures import arms_figure
    from ..report.html import write_experiment_report
    from ..storage import atomic_write_bytes, atomic_write_json

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


def start(e: Experiment, kind: str, settings: dict) -> None:
    from ..storage import atomic_write_json

    e.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(e.out / "experiment.json",
                      {"kind": kind, **dataclasses.asdict(e), **settings})


def base_result(e: Experiment, evaluation) -> dict:
    """The untrained model on the evaluation rows (one 'seed': nothing is random)."""
    return run_arm(e, BASE_ARM, 0, [], evaluation)


# ---------------------------------------------------------------- headway mix


