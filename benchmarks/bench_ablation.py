"""What 20 random head-set ablations cost against 20 times one.

    python benchmarks/bench_ablation.py              # smollm2-135m, 32 arithmetic rows, k 10

One draw, the old way, is a full forward pass over the rows with its k heads ablated. The
draws of :func:`headway.analysis.ablation.faithfulness` start at their first ablated layer
from the unablated pass's cached residual stream, several sets of one first layer in one
batch. Prints:

- the exact cost: decoder layers run per row batch by the 20 draws, against 20 full passes
  (free of timing noise);
- wall time (median and minimum over ``--repeats`` interleaved repetitions) of one draw's
  full pass, of the 20 draws the old way, and of the 20 draws with reuse (1 and 4 sets per
  pass), the unablated pass (which both ways run once) subtracted.

Timings on a shared machine are noisy: compare the minimums, and the exact layer count.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--rows", type=int, default=32)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--draws", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--pattern", default=None, help="take the top-k heads from this pattern "
                                                   "(default: random scores)")
    args = p.parse_args()

    from headway.analysis.head_sets import (
        head_set_losses,
        layers_run,
        top_and_random_sets,
    )
    from headway.data.encoding import encode_examples
    from headway.data.rows import TaskSpec
    from headway.data.tasks import load_task
    from headway.models.architectures import head_geometry
    from headway.models.loading import load_model
    from headway.patterns import ActivationPattern
    from headway.scoring.hooks import ablated
    from headway.scoring.loss import mean_loss

    lm = load_model(args.model)
    model = lm.model.eval()
    n_layers, n_heads, _ = head_geometry(model)
    task = load_task(TaskSpec(source=args.task, n=args.rows, offset=64, seed=0))
    encoded, _ = encode_examples(task.examples, lm.tokenizer, "qa", 1024, "truncate",
                                 task.source)
    scores = (ActivationPattern.load(args.pattern).scores.numpy() if args.pattern
              else np.random.default_rng(0).uniform(size=(n_layers, n_heads)))
    _, draws = top_and_random_sets(scores, args.k, args.draws, seed=0)

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    def old_way():
        for heads in draws:
            with ablated(model, heads, n_heads):
                mean_loss(model, encoded, lm.pad_id)

    def one_draw():
        with ablated(model, draws[0], n_heads):
            mean_loss(model, encoded, lm.pad_id)

    def reuse(per_pass):
        return lambda: head_set_losses(model, encoded, lm.pad_id, draws, sets_per_pass=per_pass)

    runs = {"unablated pass": lambda: mean_loss(model, encoded, lm.pad_id),
            "one draw, full pass": one_draw, f"{args.draws} draws, old way": old_way,
            f"{args.draws} draws, reuse, 1 set per pass": reuse(1),
            f"{args.draws} draws, reuse, 4 sets per pass": reuse(4)}
    one_draw()  # warm up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    base = min(times["unablated pass"])
    one = min(times["one draw, full pass"])

    exact = layers_run(draws, n_layers) / layers_run(draws, n_layers, reuse=False)
    firsts = sorted(min(layer for layer, _ in d) for d in draws)
    print(f"{args.model}: {n_layers} layers x {n_heads} heads; {args.rows} {args.task} rows; "
          f"{args.draws} draws of {args.k} heads outside the top {args.k}")
    print(f"first ablated layer of each draw: {firsts}")
    print(f"exact cost (decoder layers run): {exact:.3f} of {args.draws} full passes = "
          f"{exact * args.draws:.1f} x one draw")
    print(f"{'':<36}{'median (s)':>12}{'min (s)':>10}{'x one draw (min)':>18}")
    for name, values in times.items():
        own = min(values) - (base if "reuse" in name else 0)  # reuse runs the unablated pass
        print(f"{name:<36}{statistics.median(values):>12.2f}{min(values):>10.2f}"
              f"{own / one:>18.2f}")
    print("(reuse rows: the unablated pass inside them, which the old way runs apart, is "
          "subtracted in the last column)")


if __name__ == "__main__":
    main()
