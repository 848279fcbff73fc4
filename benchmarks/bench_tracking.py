"""Tracking overhead: the same SFT run with pattern tracking on and off.

    python benchmarks/bench_tracking.py            # smollm2-135m, arithmetic, 100 steps

Prints wall time of both runs, the overhead (on - off) / off, and the time the tracker itself
measured. Target: <= 10 % at the default interval.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time

from headway.training.trainer import TrainConfig, load_config, run_train


def main() -> None:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--track-every", type=int, default=defaults.track_every)
    p.add_argument("--probe-rows", type=int, default=defaults.probe_rows)
    p.add_argument("--batch-size", type=int, default=defaults.per_device_train_batch_size)
    args = p.parse_args()

    times, manifests = {}, {}
    for tracking in (False, True):
        with tempfile.TemporaryDirectory() as out:
            config = load_config(None, model=args.model, task=args.task, rows=512,
                                 max_steps=args.max_steps, track_every=args.track_every,
                                 probe_rows=args.probe_rows, tracking=tracking, output_dir=out,
                                 per_device_train_batch_size=args.batch_size,
                                 save_final=False, progress=False)
            start = time.perf_counter()
            manifests[tracking] = run_train(config)
            times[tracking] = time.perf_counter() - start
    on, off = times[True], times[False]
    records = args.max_steps // args.track_every + 1 + bool(args.max_steps % args.track_every)
    print(f"tracking overhead: {args.model}, {args.task}, {args.max_steps} steps, batch "
          f"{args.batch_size}, probe {args.probe_rows} rows every {args.track_every} steps "
          f"({records} records)")
    print(f"{'run':<14}{'wall (s)':>10}{'train loop (s)':>16}")
    print(f"{'tracking off':<14}{off:>10.1f}{manifests[False]['train_seconds']:>16.1f}")
    print(f"{'tracking on':<14}{on:>10.1f}{manifests[True]['train_seconds']:>16.1f}")
    loop_on, loop_off = manifests[True]["train_seconds"], manifests[False]["train_seconds"]
    print(f"overhead of the training loop (on - off) / off: {(loop_on - loop_off) / loop_off:.1%}"
          f"   (target <= 10 %)")
    print(f"time inside the tracker: {manifests[True]['tracking_seconds']:.1f} s = "
          f"{manifests[True]['tracking_seconds'] / loop_off:.1%} of the untracked loop")
    print(json.dumps({"off_s": off, "on_s": on, "loop_off_s": loop_off, "loop_on_s": loop_on,
                      "tracker_s": manifests[True]["tracking_seconds"]}))


if __name__ == "__main__":
    main()
