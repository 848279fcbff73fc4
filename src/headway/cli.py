"""Command line: ``headway score | show | train | eval | mix | select | modes | analyze | report |
tasks | demo``.
``headway COMMAND --help`` for details."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

DEFAULT_MODEL = "smollm2-135m"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=DEFAULT_MODEL,
                   help="built-in alias (smollm2-135m), local model folder, or hub id "
                        "(default: %(default)s)")
    g.add_argument("--revision", help="hub revision (branch, tag or commit) for hub ids")
    g.add_argument("--dtype", default="float32", help="float32 (default), bfloat16 or float16")
    g.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--trust-remote-code", action="store_true",
                   help="allow the model's own Python code from the hub (off by default)")


def _add_task_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("task")
    g.add_argument("--task", required=True,
                   help="built-in task (see `headway tasks`), rg:<reasoning-gym name>, a .jsonl/"
                        ".json/.csv/.parquet file, a dataset folder, or a hub dataset id")
    g.add_argument("-n", "--rows", dest="n", type=int,
                   help="rows to use (default: all rows of a file or dataset, 64 generated rows "
                        "for a built-in task)")
    g.add_argument("--offset", type=int, default=0, help="skip this many rows first")
    g.add_argument("--seed", type=int, default=0, help="generator / shuffle seed")
    g.add_argument("--shuffle", action="store_true", help="shuffle file rows (seeded)")
    g.add_argument("--split", default="train", help="dataset split for folders and hub ids")
    g.add_argument("--config", help="hub dataset configuration, e.g. 'main' for gsm8k")
    g.add_argument("--prompt-field", help="prompt column (default: auto-detect)")
    g.add_argument("--response-field", help="response column (default: auto-detect)")
    g.add_argument("--template", default="qa",
                   help="qa ('Question: {prompt}\\nAnswer: ', default), raw, chat (the "
                        "tokenizer's chat template) or a custom string containing {prompt}")
    g.add_argument("--max-length", type=int, default=1024, help="tokens per row (default 1024)")
    g.add_argument("--overlong", default="truncate", choices=["truncate", "drop"],
                   help="rows longer than --max-length: truncate the response or drop the row")


def _load_task(args):
    from .tasks import TaskSpec, load_task

    return load_task(TaskSpec(
        source=args.task, n=args.n, offset=args.offset, seed=args.seed,
        shuffle=args.shuffle, split=args.split, config=args.config,
        prompt_field=args.prompt_field, response_field=args.response_field))


def _distributed_state():
    """Accelerate's process state when launched with several processes, else None."""
    from .distributed import launched_distributed, process_state

    return process_state() if launched_distributed() else None


def _load_model(args, state=None):
    import torch

    from .models import load_model

    device = args.device or (state.device if state else
                             "cuda" if torch.cuda.is_available() else "cpu")
    return load_model(args.model, dtype=args.dtype, revision=args.revision,
                      trust_remote_code=args.trust_remote_code, device=device)


def cmd_score(args) -> int:
    from .scoring import score_task
    from .storage import check_writable

    state = _distributed_state()
    task = _load_task(args)
    output = Path(args.output or f"runs/{task.name}")
    if not state or state.is_main_process:
        check_writable(output.parent)
    lm = _load_model(args, state)
    pattern = score_task(lm, task, convention=args.convention, method=args.method,
                    batch_size=args.batch_size, template=args.template,
                    max_length=args.max_length, overlong=args.overlong,
                    keep_per_sample=args.per_sample, progress=not args.no_progress,
                    save_to=output)
    if state and not state.is_main_process:
        return 0
    m = pattern.meta
    print(f"scored {m['n_samples']} rows of {task.name} on {lm.name} "
          f"({pattern.n_layers} layers x {pattern.n_heads} heads) in {m['elapsed_s']:.1f} s; "
          f"truncated {m['n_truncated']}, dropped {m['n_dropped']}; "
          f"mean response loss {m['mean_loss']:.3f}")
    print(f"wrote {output}.safetensors and {output}.json")
    return 0


def cmd_show(args) -> int:
    from .analysis.stats import concentration
    from .patterns import ActivationPattern, pattern_paths
    from .report.figures import heatmap

    pattern = ActivationPattern.load(args.pattern)
    top = pattern.top_heads(args.top_k)
    stats = concentration(pattern.scores.numpy())
    task = pattern.meta.get("task", {}).get("name", "?")
    model = pattern.meta.get("model", {}).get("name", "?")
    png = Path(args.heatmap) if args.heatmap else pattern_paths(args.pattern)[0].with_suffix(".png")
    heatmap(pattern.scores.numpy(), png, title=f"{task} on {model}", top=top[:5])
    if args.json:
        print(json.dumps({"top_heads": [{"layer": l, "head": h, "score": s} for l, h, s in top],
                          **stats, "heatmap": str(png)}, indent=2))
        return 0
    print(f"{task} on {model}: {pattern.n_layers} layers x {pattern.n_heads} heads, "
          f"N = {pattern.meta.get('n_samples', '?')}, convention {pattern.meta.get('convention')}")
    print(f"Gini {stats['gini']:.3f}   CV {stats['cv']:.3f}   entropy {stats['entropy']:.3f} "
          f"nats (uniform: {math.log(pattern.scores.numel()):.3f})")
    print(f"{'rank':>4}  {'layer':>5}  {'head':>4}  score")
    for rank, (layer, head, value) in enumerate(top, 1):
        print(f"{rank:>4}  {layer:>5}  {head:>4}  {value:.4f}")
    print(f"heatmap: {png}")
    return 0


def cmd_analyze(args) -> int:
    from .analysis.findings import analyze
    from .storage import check_writable

    check_writable(args.output_dir)
    result = analyze(Path(args.output_dir), patterns=args.patterns, runs=args.runs,
                     complex_run=args.complex, model=args.model, k=args.k,
                     n_random=args.random_draws, n_boot=args.bootstrap, n_perm=args.permutations,
                     seed=args.seed, progress=not args.no_progress)
    print(f"wrote {args.output_dir}/analysis.json and {len(result['figures'])} figures; "
          f"`headway report {args.output_dir}` makes the HTML report")
    return 0


def cmd_report(args) -> int:
    from .report.html import write_report
    from .storage import check_writable

    check_writable(Path(args.output).parent if args.output else args.folder)
    print(f"wrote {write_report(args.folder, args.output)}")
    return 0


def cmd_eval(args) -> int:
    from .experiments.evaluation import (
        EvalSettings,
        check_disjoint,
        duplicate_prompts,
        evaluate,
    )
    from .experiments.runner import rows_trained_by
    from .storage import atomic_write_json, check_writable

    task = _load_task(args)
    if args.output:
        check_writable(Path(args.output).parent)
    used, prompts = rows_trained_by(args.train_run)
    check_disjoint(task, used)
    lm = _load_model(args)
    result = evaluate(lm, task, EvalSettings(args.template, args.max_length, args.overlong,
                                             args.max_new_tokens, args.batch_size),
                      progress=not args.no_progress)
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


def _add_experiment_args(p: argparse.ArgumentParser, output: str) -> None:
    g = p.add_argument_group("experiment")
    g.add_argument("-o", "--output-dir", default=output, help="default: %(default)s")
    g.add_argument("--model", default=DEFAULT_MODEL, help="default: %(default)s")
    g.add_argument("--target", default="word_problems",
                   help="target task, as for --task of score (default: %(default)s)")
    g.add_argument("--target-rows", type=int, default=32,
                   help="labelled target rows to train on: rows 0..N-1 (default %(default)s)")
    g.add_argument("--eval-rows", type=int, default=64, help="held-out evaluation rows "
                                                              "(default %(default)s)")
    g.add_argument("--eval-offset", type=int, default=10_000,
                   help="first evaluation row of the target (default %(default)s)")
    g.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="seeds (default: 0 1 2): each arm runs once per seed. A seed sets the "
                        "training seed; in mix also the basic rows drawn and the random "
                        "mixture, in select the random rows. Target and evaluation rows stay "
                        "the same")
    g.add_argument("--batch-size", type=int, default=8, help="rows per step (default 8)")
    g.add_argument("--learning-rate", type=float, default=5e-5,
                   help="full-SFT learning rate (default %(default)s)")
    g.add_argument("--max-length", type=int, default=512, help="tokens per row (default 512)")
    g.add_argument("--template", default="qa", help="prompt template (default qa)")
    g.add_argument("--keep-weights", action="store_true",
                   help="keep every arm's trained weights (default: deleted after evaluation)")
    g.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_two_stage_args(p: argparse.ArgumentParser, basics: str, stage1_steps: int) -> None:
    from .experiments.runner import BASIC_TASKS

    p.add_argument("--basics", nargs="+", default=BASIC_TASKS,
                   help=f"{basics} (default: %(default)s)")
    p.add_argument("--stage1-steps", type=int, default=stage1_steps,
                   help="steps on the basic-task rows (default %(default)s)")
    p.add_argument("--stage2-steps", type=int, default=16,
                   help="steps on the target rows after stage 1 (default %(default)s)")


def _experiment(args):
    from .experiments.runner import Experiment
    from .storage import check_writable

    check_writable(args.output_dir)
    return Experiment(output_dir=args.output_dir, model=args.model, target=args.target,
                      target_rows=args.target_rows, eval_rows=args.eval_rows,
                      eval_offset=args.eval_offset, seeds=args.seeds,
                      batch_size=args.batch_size, learning_rate=args.learning_rate,
                      max_length=args.max_length, template=args.template,
                      keep_weights=args.keep_weights, progress=not args.no_progress)


def cmd_mix(args) -> int:
    from .experiments.mix import run_mix

    run_mix(_experiment(args), args.basics, total=args.total, stage1_steps=args.stage1_steps,
            stage2_steps=args.stage2_steps, delta_rows=args.delta_rows,
            delta_steps=args.delta_steps, probe_rows=args.probe_rows)
    return 0


def cmd_select(args) -> int:
    from .experiments.select import run_select

    run_select(_experiment(args), args.basics, pool_rows=args.pool_rows, n=args.top_n,
               stage1_steps=args.stage1_steps, stage2_steps=args.stage2_steps,
               similarity=args.similarity)
    return 0


def cmd_modes(args) -> int:
    from .experiments.modes import run_modes

    run_modes(_experiment(args), steps=args.steps, top_k=args.top_k, lora_r=args.lora_r,
              learning_rates={"full": args.learning_rate, "lora": args.lr_lora,
                              "heads": args.lr_heads})
    return 0


def _probe_data(args) -> dict:
    """``{name: task}`` from ``--probes`` (``NAME=SOURCE`` or a source named by its stem)."""
    from .tasks import TaskSpec, load_task

    probes = {}
    for item in args.probes:
        name, _, source = item.rpartition("=") if "=" in item else ("", "", item)
        task = load_task(TaskSpec(source=source, n=args.n, offset=args.offset, seed=args.seed,
                                  split=args.split, config=args.config,
                                  prompt_field=args.prompt_field,
                                  response_field=args.response_field, name=name or None))
        probes[task.name] = task
    return probes


def cmd_trajectory(args) -> int:
    from .training.trajectory import trajectory

    out = trajectory(args.checkpoints if len(args.checkpoints) > 1 else args.checkpoints[0],
                     base=args.base, probes=_probe_data(args), output_dir=args.output_dir,
                     template=args.template, max_length=args.max_length,
                     overlong=args.overlong, dtype=args.dtype, device=args.device,
                     progress=not args.no_progress)
    print(f"wrote the trajectory to {out}; `headway analyze --runs {out}` analyses it")
    return 0


def cmd_compare(args) -> int:
    from .analysis.compare import compare

    task = _load_task(args)
    out = Path(args.output or f"runs/compare-{task.name}")
    summary = compare(args.model_a, args.model_b, data=task, output_dir=out, k=args.top_k,
                      names=tuple(args.names), dtype=args.dtype, device=args.device,
                      progress=not args.no_progress, template=args.template,
                      max_length=args.max_length, overlong=args.overlong)
    a, b = summary["names"]
    print(f"{task.name}: {a} -> {b}: Gini {summary['a']['gini']:.3f} -> {summary['b']['gini']:.3f}"
          f", CV {summary['a']['cv']:.3f} -> {summary['b']['cv']:.3f}; Pearson "
          f"{summary['similarity']['pearson']:.3f}; top-{summary['k']}: gained "
          f"{' '.join(summary['gained']) or '-'}, lost {' '.join(summary['lost']) or '-'}")
    print(f"wrote {out}; `headway report {out}` makes the HTML report")
    return 0


def cmd_tasks(args) -> int:
    from .tasks import list_builtin_tasks

    for name, description in list_builtin_tasks():
        print(f"{name:<16} {description}")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo
    from .storage import check_writable

    check_writable(args.output_dir)
    run_demo(Path(args.output_dir), model=args.model, n=args.n, progress=not args.no_progress,
             sft_steps=args.sft_steps)
    return 0


def _unknown_flags(parser, remaining: list[str]):
    """A ConfigError for flags no field has, with the closest field names as a hint."""
    import difflib

    from .training.config import ConfigError

    known = [o for action in parser._actions for o in action.option_strings]
    flags = [a for a in remaining if a.startswith("-")] or remaining
    close = list(dict.fromkeys(o.replace("-", "_").replace("__", "--") for o in
                               difflib.get_close_matches(flags[0].split("=")[0], known, n=4)))
    return ConfigError(f"unknown argument{'s' if len(flags) > 1 else ''} {' '.join(flags)}",
                       hint=(f"did you mean {' or '.join(close)}? " if close else "")
                       + "`headway train --help` lists every field")


def cmd_train(argv: list[str]) -> int:
    """``headway train``: fields of TrainConfig from --config YAML, overridden by flags."""
    from transformers import HfArgumentParser

    from .training.config import TrainConfig, load_config
    from .training.trainer import run_train

    parser = HfArgumentParser(
        TrainConfig, prog="headway train", allow_abbrev=False,
        description="Supervised fine-tuning with activation-pattern tracking. Every field can "
                    "be set in a YAML file (--config) and overridden by its flag.")
    parser.add_argument("--config", help="YAML file of TrainConfig fields")
    known, _ = parser.parse_known_args(argv)
    if known.config:
        defaults = dataclasses.asdict(load_config(known.config))
        parser.set_defaults(**defaults)
    outputs = parser.parse_args_into_dataclasses(
        args=argv, look_for_args_file=False, return_remaining_strings=True)
    config, remaining = outputs[0], outputs[-1]  # between them: the --config namespace
    if remaining:
        raise _unknown_flags(parser, remaining)
    config = load_config(None, **dataclasses.asdict(config))
    manifest = run_train(config)
    from .distributed import rank_world

    if manifest and rank_world()[0] == 0:
        print(f"trained {manifest['global_step']} steps ({manifest['mode']}, "
              f"{manifest['n_trainable_parameters']:,} trainable parameters) in "
              f"{manifest['train_seconds']:.0f} s, {manifest['tracking_seconds']:.0f} s of it "
              f"recording patterns; run directory {config.output_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="headway",
        description="Attention-head activation patterns of language models (Zhao et al., "
                    "ACL 2025): which heads a task relies on.")
    parser.add_argument("--debug", action="store_true",
                        help="show Python tracebacks instead of one-line errors (also "
                             "HEADWAY_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("score", help="compute a task's activation pattern (L x H)",
                       description="Score every attention head on a task: AP[l,h] = mean over "
                                   "samples of |<Γ, ∂L/∂Γ>|, in one forward + backward pass.")
    _add_model_args(p)
    _add_task_args(p)
    p.add_argument("--convention", default="sample", choices=["sample", "paper"],
                   help="sample: each sample's own mean loss (default); paper: the released "
                        "script's batch-mean loss, batch 4, file order")
    p.add_argument("--method", default="gate", choices=["gate", "reference"],
                   help="gate: fast path (default); reference: eager attention with Γ.grad")
    p.add_argument("--batch-size", type=int,
                   help="rows per batch (default 8; 4 with --convention paper)")
    p.add_argument("--per-sample", action="store_true",
                   help="also store every sample's signed L x H scores")
    p.add_argument("-o", "--output", help="output path without suffix (default runs/TASK)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("show", help="top heads, Gini, CV and a heatmap of a pattern file")
    p.add_argument("pattern", help="pattern file (.safetensors, or the path without suffix)")
    p.add_argument("--top-k", type=int, default=10, help="heads to list (default 10)")
    p.add_argument("--heatmap", help="PNG path (default: beside the pattern)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("eval", help="accuracy (greedy generation, 95 %% CI) and response "
                                    "loss on held-out rows",
                       description="Greedy generation on held-out rows, answers checked by "
                                   "reasoning-gym's checkers, the '#### N' convention (GSM8K "
                                   "format) or exact match; plus the mean response-token loss. "
                                   "--train-run refuses rows that run trained on.")
    _add_model_args(p)
    _add_task_args(p)
    p.add_argument("--train-run", action="append", default=[],
                   help="a headway train run directory: fail if an evaluation row was one of "
                        "its training rows (repeatable)")
    p.add_argument("--max-new-tokens", type=int,
                   help="generation length (default: 1.5 x the longest reference + 8)")
    p.add_argument("--batch-size", type=int, default=16, help="rows per batch (default 16)")
    p.add_argument("-o", "--output", help="write the result (JSON, with every generation)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("mix", help="pattern-guided basic-task mixture vs random mixture vs "
                                   "target-only SFT, over seeds",
                       description="α from fitting the target's ΔAP on the basic tasks' ΔAPs "
                                   "(NNLS); n_j = N·α_j/Σα basic rows; stage 1 on them, stage 2 "
                                   "on the scarce target rows; evaluated on held-out target rows "
                                   "against a uniform random mixture of the same N and "
                                   "target-only SFT with the same total steps.")
    _add_experiment_args(p, "experiments/mix")
    _add_two_stage_args(p, "basic tasks", stage1_steps=16)
    p.add_argument("--total", type=int, default=128, help="mixture size N (default 128)")
    p.add_argument("--delta-rows", type=int, default=64,
                   help="training rows of each basic task's ΔAP run (default %(default)s)")
    p.add_argument("--delta-steps", type=int, default=8,
                   help="SFT steps of each ΔAP run (default %(default)s)")
    p.add_argument("--probe-rows", type=int, default=32,
                   help="held-out probe rows of each basic task (default %(default)s)")
    p.set_defaults(func=cmd_mix)

    p = sub.add_parser("select", help="train on the pool rows whose pattern is most similar "
                                      "to the target's, vs random rows, over seeds",
                       description="Rank a pool (rows of the basic tasks) by the similarity of "
                                   "each row's per-sample pattern to the target pattern; stage "
                                   "1 on the top N, stage 2 on the target rows; against N "
                                   "random pool rows.")
    _add_experiment_args(p, "experiments/select")
    _add_two_stage_args(p, "tasks the pool is drawn from", stage1_steps=8)
    p.add_argument("--pool-rows", type=int, default=64, help="pool rows per task (default 64)")
    p.add_argument("--top-n", type=int, default=64, help="rows selected (default 64)")
    p.add_argument("--similarity", default="pearson", choices=["pearson", "cosine"])
    p.set_defaults(func=cmd_select)

    p = sub.add_parser("modes", help="head-selective SFT vs LoRA vs full SFT at equal steps",
                       description="Train the target's top-k heads only (their q/k/v rows and "
                                   "o columns), LoRA adapters, or every weight, for the same "
                                   "steps on the same rows; accuracy, response loss, trainable "
                                   "parameters and time. Each mode uses its own learning rate.")
    _add_experiment_args(p, "experiments/modes")
    p.add_argument("--steps", type=int, default=32, help="SFT steps (default 32)")
    p.add_argument("--top-k", type=int, default=10, help="heads trained (default 10)")
    p.add_argument("--lora-r", type=int, default=8, help="LoRA rank (alpha = 2r; default 8)")
    p.add_argument("--lr-lora", type=float, default=2e-4, help="default %(default)s")
    p.add_argument("--lr-heads", type=float, default=5e-4, help="default %(default)s")
    p.set_defaults(func=cmd_modes)

    p = sub.add_parser("analyze", help="the three findings from pattern files and tracked "
                                       "runs: numbers (analysis.json) and figures",
                       description="Concentration and similarity of task patterns; ΔAP, "
                                   "dynamics and parameter-change concentration of runs; "
                                   "composition of a complex run's ΔAP from basic runs; "
                                   "top-k vs random-k head ablation.")
    p.add_argument("--patterns", nargs="*", default=[], help="pattern files (headway score)")
    p.add_argument("--runs", nargs="*", default=[], help="run directories (headway train)")
    p.add_argument("--complex", help="the run (task name or directory) whose ΔAP is fitted on "
                                     "the other runs' ΔAP")
    p.add_argument("--model", help="also ablate each pattern's top-k heads on this model "
                                   "(held-out rows of the pattern's task)")
    p.add_argument("--k", type=int, default=10, help="top heads (default 10)")
    p.add_argument("--random-draws", type=int, default=10, help="random head sets (default 10)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap replicates (200)")
    p.add_argument("--permutations", type=int, default=500, help="shuffled-null draws (500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output-dir", default="analysis", help="default: %(default)s")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("report", help="one self-contained HTML file from `headway analyze`")
    p.add_argument("folder", help="output folder of headway analyze")
    p.add_argument("-o", "--output", help="HTML path (default FOLDER/report.html)")
    p.set_defaults(func=cmd_report)

    sub.add_parser("train", add_help=False,
                   help="SFT (full, LoRA or selected heads) recording activation patterns and "
                        "parameter change; `headway train --help` for its fields")

    p = sub.add_parser("trajectory", help="patterns and parameter change over checkpoints "
                                          "trained with anything",
                       description="Score probe tasks at a base model and at each checkpoint "
                                   "(a folder of checkpoint-N folders, or a list of model "
                                   "folders; PEFT adapters load onto their base) and measure "
                                   "each head's parameter change from the base. Writes a run "
                                   "folder that `headway analyze --runs` reads.")
    p.add_argument("checkpoints", nargs="+", help="a folder of checkpoint-N folders (e.g. a "
                                                  "Trainer's output_dir), or model folders")
    p.add_argument("--base", required=True, help="the model the checkpoints were trained from")
    p.add_argument("--probes", nargs="+", required=True,
                   help="probe tasks: built-in names, files, folders or hub ids, optionally "
                        "named as NAME=SOURCE")
    p.add_argument("-n", "--rows", dest="n", type=int, help="rows per probe (default: all of "
                                                            "a file, 64 generated)")
    for flag, default in (("--offset", 0), ("--seed", 0)):
        p.add_argument(flag, type=int, default=default)
    p.add_argument("--split", default="train")
    p.add_argument("--config", help="hub dataset configuration")
    p.add_argument("--prompt-field")
    p.add_argument("--response-field")
    p.add_argument("--template", default="qa")
    p.add_argument("--max-length", type=int, default=1024)
    p.add_argument("--overlong", default="truncate", choices=["truncate", "drop"])
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device")
    p.add_argument("-o", "--output-dir", help="default: FOLDER/headway-trajectory")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_trajectory)

    p = sub.add_parser("compare", help="ΔAP between two models on the same rows",
                       description="Score the same rows on two models (e.g. base and instruct, "
                                   "or before and after your SFT): both patterns, ΔAP = B − A, "
                                   "the change of Gini and CV, the heads gained and lost in "
                                   "the top-k.")
    p.add_argument("model_a", help="model A (alias, folder or hub id)")
    p.add_argument("model_b", help="model B")
    _add_task_args(p)
    p.add_argument("--names", nargs=2, default=["A", "B"], help="labels of the two models")
    p.add_argument("--top-k", type=int, default=10, help="heads compared (default 10)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device")
    p.add_argument("-o", "--output", help="output folder (default runs/compare-TASK)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("tasks", help="list the built-in tasks")
    p.set_defaults(func=cmd_tasks)

    p = sub.add_parser("demo", help="the whole story on the built-in model: patterns of the "
                                    "built-in tasks, three short tracked fine-tunes, analysis "
                                    "and an HTML report")
    p.add_argument("--output-dir", default="headway-demo", help="default: %(default)s")
    p.add_argument("--model", default=DEFAULT_MODEL, help="default: %(default)s")
    p.add_argument("-n", "--rows", dest="n", type=int, default=64,
                   help="rows per task (default 64)")
    p.add_argument("--sft-steps", type=int, default=24,
                   help="steps of each tracked fine-tune (default 24; 0 skips them)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)
    for command in sub.choices.values():  # a mistyped flag is an error, not an abbreviation
        command.allow_abbrev = False
    return parser


def _debug(argv: list[str]) -> bool:
    """``--debug`` anywhere before ``--``, or ``HEADWAY_DEBUG=1``: show tracebacks."""
    import os

    return "--debug" in argv or os.environ.get("HEADWAY_DEBUG", "") not in ("", "0")


def main(argv: list[str] | None = None) -> int:
    """Run one command. A :class:`~headway.errors.HeadwayError` (bad input or setting) ends in
    one ``headway: error:`` line (and a ``hint:`` line) with exit 2; Ctrl-C in one line saying
    what was kept, exit 130. ``--debug`` (or ``HEADWAY_DEBUG=1``) shows tracebacks instead."""
    from .errors import HeadwayError

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug(argv)
    argv = [a for a in argv if a != "--debug"]
    try:
        if argv and argv[0] == "train":
            return cmd_train(argv[1:])
        args = build_parser().parse_args(argv)
        return args.func(args)
    except HeadwayError as err:
        if debug:
            raise
        print(f"headway: error: {err}", file=sys.stderr)
        if err.hint:
            print(f"hint: {err.hint}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        if debug:
            raise
        print(f"headway: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if debug:
            raise
        print("\nheadway: interrupted; finished work is kept (scoring: OUT.partial.safetensors, "
              "training: its checkpoints and records, analyze: OUT/.ablation). Run the same "
              "command again to resume.", file=sys.stderr)
        return 130
    except Exception:
        from .distributed import launched_distributed

        if debug or not launched_distributed():
            raise
        # print now: a traceback held until exit keeps the process group (and its threads)
        # alive past shutdown(), which can abort the process instead of exiting
        import traceback

        traceback.print_exc()
        return 1
    finally:
        from .distributed import shutdown

        shutdown()


if __name__ == "__main__":
    sys.exit(main())
