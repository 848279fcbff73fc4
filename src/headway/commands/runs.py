"""``headway train | trajectory``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import HeadwayError
from ..settings import TrajectoryArgs

if TYPE_CHECKING:  # importing it imports TRL, which trajectory does not need
    from ..training.config import TrainConfig


def train(config: TrainConfig) -> int:
    """Tracked SFT (:func:`headway.training.trainer.run_train`); rank 0 prints a summary."""
    from ..distributed import rank_world
    from ..training.trainer import run_train

    manifest = run_train(config)
    if manifest and rank_world()[0] == 0:
        print(f"trained {manifest['global_step']} steps ({manifest['mode']}, "
              f"{manifest['n_trainable_parameters']:,} trainable parameters) in "
              f"{manifest['train_seconds']:.0f} s, {manifest['tracking_seconds']:.0f} s of it "
              f"recording patterns; run directory {config.output_dir}")
    return 0


def probe_tasks(args: TrajectoryArgs) -> dict:
    """``{name: task}`` of ``args.probes`` (each ``NAME=SOURCE``, or a source named by its
    stem), ``args.rows`` rows each."""
    from ..data.rows import TaskSpec
    from ..data.tasks import load_task

    probes = {}
    for item in args.probes:
        name, _, source = item.rpartition("=") if "=" in item else ("", "", item)
        task = load_task(TaskSpec(source=source, n=args.rows, offset=args.offset,
                                  seed=args.seed, shuffle=args.shuffle, split=args.split,
                                  config=args.config,
                                  prompt_field=args.prompt_field,
                                  response_field=args.response_field, name=name or None))
        if task.name in probes:
            raise HeadwayError(f"--probes: two probes are named {task.name!r}; their records "
                               f"would overwrite each other", hint="give names: NAME=SOURCE")
        probes[task.name] = task
    return probes


def trajectory(args: TrajectoryArgs) -> int:
    """Probe patterns and parameter change at the base and every checkpoint."""
    from ..training.trajectory import trajectory as record_trajectory

    run = record_trajectory(
        args.checkpoints if len(args.checkpoints) > 1 else args.checkpoints[0],
        base=args.base, probes=probe_tasks(args), output_dir=args.output_dir,
        template=args.template, max_length=args.max_length, overlong=args.overlong,
        dtype=args.dtype, device=args.device, progress=args.progress)
    print(f"wrote the trajectory to {run.path}; `headway analyze --runs {run.path}` analyses "
          f"it")
    return 0
