"""``headway eval | mix | select | modes``."""

from __future__ import annotations

from pathlib import Path

from ..locks import owning
from ..settings import EvalArgs, ExperimentArgs, MixArgs, ModesArgs, SelectArgs
from .common import load_model, load_task


def evaluate(args: EvalArgs) -> int:
    """``headway eval``: accuracy and response loss on rows no ``--train-run`` trained on."""
    from ..experiments.evaluation import (
        EvalSettings,
        check_disjoint,
        duplicate_prompts,
    )
    from ..experiments.evaluation import evaluate as evaluate_rows
    from ..experiments.runner import rows_trained_by
    from ..storage import atomic_write_json, check_writable

    task = load_task(args)
    if args.output:
        check_writable(Path(args.output).parent)
    used, prompts = rows_trained_by(args.train_run)
    check_disjoint(task, used)
    lm = load_model(args)
    result = evaluate_rows(lm, task, EvalSettings(args.template, args.max_length, args.overlong,
                                                  args.max_new_tokens, args.batch_size),
                           progress=args.progress)
    result["model"] = lm.describe()
    if args.train_run:
        result["n_eval_prompts_seen_in_training"] = duplicate_prompts(task, prompts)
    low, high = result["accuracy_ci95"]
    print(f"{task.name} on {lm.name}: accuracy {result['accuracy']:.3f} "
          f"({result['correct']}/{result['n']}; 95 % CI {low:.3f}-{high:.3f}), mean checker "
          f"score {result['mean_score']:.3f}, response loss {result['response_loss']:.4f} "
          f"nats (mean over rows); checker {result['checker']}")
    if args.train_run:
        print(f"no evaluation row is a training row of {', '.join(args.train_run)}; "
              f"{result['n_eval_prompts_seen_in_training']} evaluation prompts also occur "
              f"verbatim in their training data")
    if args.output:
        atomic_write_json(args.output, result)
        print(f"wrote {args.output} (per-row generations included)")
    return 0


def experiment(args: ExperimentArgs):
    """The :class:`~headway.experiments.runner.Experiment` of the settings, its folder checked
    to be writable."""
    from ..experiments.runner import Experiment
    from ..storage import check_writable

    check_writable(args.output_dir)
    return Experiment(output_dir=args.output_dir, model=args.model, target=args.target,
                      target_rows=args.target_rows, eval_rows=args.eval_rows,
                      eval_offset=args.eval_offset, seeds=args.seeds,
                      batch_size=args.batch_size, learning_rate=args.learning_rate,
                      max_length=args.max_length, template=args.template,
                      keep_weights=args.keep_weights, progress=args.progress)


def mix(args: MixArgs) -> int:
    """``headway mix``: pattern-guided mixture vs random mixture vs target-only SFT."""
    from ..experiments.mix import run_mix

    with owning(args.output_dir, f"experiment folder {args.output_dir}"):
        run_mix(experiment(args), args.basics, total=args.total,
                stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
                delta_rows=args.delta_rows, delta_steps=args.delta_steps,
                probe_rows=args.probe_rows)
    return 0


def select(args: SelectArgs) -> int:
    """``headway select``: the most similar pool rows vs random pool rows."""
    from ..experiments.select import run_select

    with owning(args.output_dir, f"experiment folder {args.output_dir}"):
        run_select(experiment(args), args.basics, pool_rows=args.pool_rows, n=args.top_n,
                   stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
                   similarity=args.similarity)
    return 0


def modes(args: ModesArgs) -> int:
    """``headway modes``: head-selective SFT vs LoRA vs full SFT at equal steps."""
    from ..experiments.modes import run_modes

    with owning(args.output_dir, f"experiment folder {args.output_dir}"):
        run_modes(experiment(args), steps=args.steps, top_k=args.top_k, lora_r=args.lora_r,
                  learning_rates={"full": args.learning_rate, "lora": args.lr_lora,
                                  "heads": args.lr_heads})
    return 0
