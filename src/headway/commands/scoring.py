"""``headway score | show | tasks``."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from ..settings import ScoreArgs, ShowArgs, TasksArgs
from .common import distributed_state, load_model, load_task


def score(args: ScoreArgs) -> int:
    """Score every head on the task; write ``OUTPUT.safetensors`` and ``OUTPUT.json``."""
    from ..scoring.score import score_task
    from ..storage import check_writable

    state = distributed_state()
    task = load_task(args)
    output = Path(args.output or f"runs/{task.name}")
    if not state or state.is_main_process:
        check_writable(output.parent)
    lm = load_model(args, state)
    pattern = score_task(lm, task, convention=args.convention, method=args.method,
                         batch_size=args.batch_size, template=args.template,
                         max_length=args.max_length, overlong=args.overlong,
                         keep_per_sample=args.per_sample, progress=args.progress,
                         save_to=output, checkpoint_layers=args.checkpoint_layers,
                         per_token=args.per_token)
    if state and not state.is_main_process:
        return 0
    m = pattern.meta
    print(f"scored {m['n_samples']} rows of {task.name} on {lm.name} "
          f"({pattern.n_layers} layers x {pattern.n_heads} heads) in {m['elapsed_s']:.1f} s; "
          f"truncated {m['n_truncated']}, dropped {m['n_dropped']}; "
          f"mean response loss {m['mean_loss']:.3f}")
    print(f"wrote {output}.safetensors and {output}.json")
    return 0


def show(args: ShowArgs) -> int:
    """Print a pattern's top heads and concentration; write its heatmap."""
    import torch

    from ..errors import HeadwayError
    from ..patterns import ActivationPattern, pattern_paths
    from ..report.figures import heatmap
    from ..stats import concentration
    from ..storage import check_writable

    pattern = ActivationPattern.load(args.pattern)
    png = Path(args.heatmap) if args.heatmap else pattern_paths(args.pattern)[0].with_suffix(".png")
    check_writable(png.parent, "heatmap folder")
    scores = pattern.scores
    if not bool(torch.isfinite(scores).all()):
        raise HeadwayError(f"{pattern_paths(args.pattern)[0]}: {int((~torch.isfinite(scores)).sum())}"
                           f" of its {scores.numel()} scores are NaN or infinite: the scoring "
                           f"overflowed", hint="score again in float32 (--dtype float32)")
    if not bool((scores != 0).any()):
        print(f"headway: warning: every score of {args.pattern} is 0: no head carries the loss "
              f"(in float16 the gradients may have underflowed; see n_zero_scores in its JSON); "
              f"Gini and CV are 0 by definition", file=sys.stderr)
    top = pattern.top_heads(args.top_k)
    stats = concentration(scores.numpy())
    task = pattern.meta.get("task", {}).get("name", "?")
    model = pattern.meta.get("model", {}).get("name", "?")
    heatmap(scores.numpy(), png, title=f"{task} on {model}", top=top[:5])
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


def tasks(args: TasksArgs | None = None) -> int:
    """List the built-in tasks."""
    from ..data.tasks import list_builtin_tasks

    for name, description in list_builtin_tasks():
        print(f"{name:<16} {description}")
    return 0
