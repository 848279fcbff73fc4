"""What headway train costs: gradient checkpointing, the wrapper over plain TRL, tracking.

    python benchmarks/bench_tracking.py      # smollm2-135m, arithmetic, 300 steps (+ 2 x 30)
    python benchmarks/bench_tracking.py --max-steps 6 --gc-steps 4     # a quick trial

Every figure is measured in this one run, all runs full fine-tuning, float32, batch 8:

1. Gradient checkpointing: ``headway train`` (tracking off) for --gc-steps steps with
   ``gradient_checkpointing`` off and on; mean step time and the ratio on / off (about 1.3x
   expected: the forward pass runs twice).
2. Wrapper cost: ``headway train`` (run_train, tracking off) against a plain TRL SFTTrainer
   given the same model (headway.models.load_model), the same encoded rows (an input_ids /
   labels Dataset, as run_train builds it) and the same SFTConfig values. Target: <= 1.05x.
3. Tracking overhead: the same --max-steps run with tracking on (log schedule, track_every
   25: 14 records over 300 steps) against the run of 2.; target <= 3 %. Also the time the
   tracker measured itself (manifest ``tracking_seconds``).
4. Tracker memory: bytes it holds between records (``StartWeights.nbytes``; 0 when W_0 is
   read memory-mapped from the checkpoint) plus the peak of bytes allocated while computing
   one parameter-change record (``relative_change(resolve(model), start)``, from the
   profiler's allocator events), against the model's weight bytes. Target: <= 10 %.
   Storages that map the checkpoint file (safetensors' ``safe_open``) are reported apart:
   they are file-backed address space, of which only the pages read become (page cache)
   memory.

Times: "loop" is the wall time of ``trainer.train()`` (the training loop with its callbacks,
the tracker's step-0 and final records included; model loading, data encoding and trainer
construction excluded), measured the same way for headway and plain TRL by a subclass of
SFTTrainer. "step" is the mean time per step from the start of step 3 to the end of the last
step (the first 2 steps are warm-up), from a callback's on_step_begin / on_step_end.
"""

from __future__ import annotations

import argparse
import gc
import json
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
import trl
from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback
from trl import SFTConfig, SFTTrainer

from headway.models.architectures import resolve
from headway.models.loading import load_model
from headway.progress import quiet_hf_progress
from headway.training.callback import log_schedule
from headway.training.config import TrainConfig
from headway.training.trainer import _task_spec, run_train
from headway.training.weight_change import relative_change, start_weights

WARMUP = 2  # steps left out of the mean step time
ROWS = 512


class StepTimer(TrainerCallback):
    """Start of every step and end of the last; added after every other callback, so a
    step's time includes the tracker's record at its end."""

    def __init__(self):
        self.begins: list[float] = []
        self.end = 0.0

    def on_step_begin(self, args, state, control, **kwargs):
        self.begins.append(time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
        self.end = time.perf_counter()

    def step_s(self) -> float:
        warm = min(WARMUP, len(self.begins) - 1)
        return (self.end - self.begins[warm]) / (len(self.begins) - warm)


class TimedSFTTrainer(SFTTrainer):
    """SFTTrainer with a StepTimer and the wall time of train(); headway's run_train gets it
    in place of trl.SFTTrainer, the plain run uses it directly."""

    last: TimedSFTTrainer | None = None

    def __init__(self, *args, callbacks=None, **kwargs):
        self.timer = StepTimer()
        super().__init__(*args, callbacks=[*(callbacks or []), self.timer], **kwargs)
        TimedSFTTrainer.last = self

    def train(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return super().train(*args, **kwargs)
        finally:
            self.loop_s = time.perf_counter() - start


def config_for(args, **fields) -> TrainConfig:
    """headway train's configuration for these runs: defaults, no saving, no progress bar."""
    return TrainConfig(**{"model": args.model, "task": args.task, "rows": ROWS,
                          "save_final": False, "disable_tqdm": True, "save_strategy": "no",
                          **fields})


def headway_run(args, **fields) -> dict:
    """run_train (headway train) in a temporary run folder."""
    gc.collect()  # the previous run's model and optimizer, if in a reference cycle
    with tempfile.TemporaryDirectory() as out, \
            mock.patch.object(trl, "SFTTrainer", TimedSFTTrainer):
        manifest = run_train(config_for(args, output_dir=out, **fields))
    return {**figures_of(TimedSFTTrainer.last), "tracking_s": manifest["tracking_seconds"]}


def figures_of(trainer: TimedSFTTrainer) -> dict:
    """The run's times. The trainer (model, optimizer) is let go: no run shares the process's
    memory with the previous one."""
    TimedSFTTrainer.last = None
    return {"loop_s": trainer.loop_s, "step_s": trainer.timer.step_s(),
            "steps": trainer.state.global_step,
            "checkpointing": bool(getattr(trainer.model, "is_gradient_checkpointing", False))}


def plain_run(args) -> dict:
    """A plain TRL script: the same model, rows and SFTConfig values as headway train."""
    from datasets import Dataset

    from headway.data.encoding import encode_examples
    from headway.data.tasks import load_task

    gc.collect()
    c = config_for(args, max_steps=args.max_steps, tracking=False)
    lm = load_model(c.model, dtype=c.dtype)
    task = load_task(_task_spec(c, c.task, c.rows, c.offset))
    encoded, _ = encode_examples(task.examples, lm.tokenizer, c.template, c.max_length,
                                 c.overlong, task.source, prompt_field=task.prompt_field)
    dataset = Dataset.from_dict({"input_ids": [e.input_ids for e in encoded],
                                 "labels": [e.labels for e in encoded]})
    with tempfile.TemporaryDirectory() as out, quiet_hf_progress():
        sft = SFTConfig(
            output_dir=out, per_device_train_batch_size=c.per_device_train_batch_size,
            gradient_accumulation_steps=c.gradient_accumulation_steps,
            learning_rate=c.learning_rate, lr_scheduler_type=c.lr_scheduler_type,
            warmup_steps=c.warmup_steps, weight_decay=c.weight_decay, max_steps=c.max_steps,
            seed=c.seed, data_seed=c.seed, logging_steps=c.logging_steps, save_strategy="no",
            report_to="none", max_length=c.max_length, packing=False,
            activation_checkpointing=False,  # SFTConfig's default is on
            bf16=False, fp16=False,  # SFTConfig's bf16 default None may turn bf16 on
            disable_tqdm=True, use_cpu=not torch.cuda.is_available())
        trainer = TimedSFTTrainer(model=lm.model, args=sft, train_dataset=dataset,
                                  processing_class=lm.tokenizer)
        trainer.remove_callback(PrinterCallback)  # as headway train with --disable_tqdm
        trainer.train()
    return figures_of(trainer)


def tracker_memory(model: str) -> dict:
    """Bytes the tracker holds, and the allocator peak of one parameter-change record."""
    from torch.profiler import ProfilerActivity, profile

    lm = load_model(model)  # as run_train: float32, then W_0 from the model's own files
    start = start_weights(lm.model, lm.path)
    weights = resolve(lm.model)
    mapped = {Path(path).stat().st_size for path, _ in start.files.values()}
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        relative_change(weights, start)
    # every allocation / free, in order (prof.events() folds those inside an op into the op)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = mapped_now = mapped_peak = 0
    for e in events:
        if abs(e.nbytes()) in mapped:  # a storage mapping a whole checkpoint file
            mapped_now += e.nbytes()
            mapped_peak = max(mapped_peak, mapped_now)
        else:
            held += e.nbytes()
            peak = max(peak, held)
    return {"source": start.source, "start_bytes": start.nbytes, "record_peak_bytes": peak,
            "mapped_peak_bytes": mapped_peak,
            "weight_bytes": sum(p.numel() * p.element_size() for p in lm.model.parameters())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--task", default="arithmetic")
    p.add_argument("--max-steps", type=int, default=300, help="steps of runs 2. and 3.")
    p.add_argument("--gc-steps", type=int, default=30, help="steps of each run of 1.")
    args = p.parse_args()
    defaults = TrainConfig()
    every = defaults.track_every

    # the checkpointing runs come first: they also warm up the process for the others
    gc_off = headway_run(args, max_steps=args.gc_steps, tracking=False)
    gc_on = headway_run(args, max_steps=args.gc_steps, tracking=False,
                        gradient_checkpointing=True)
    plain = plain_run(args)
    off = headway_run(args, max_steps=args.max_steps, tracking=False)
    on = headway_run(args, max_steps=args.max_steps, tracking=True, track_schedule="log",
                     track_every=every)
    mem = tracker_memory(args.model)
    assert gc_on["checkpointing"] and not any(r["checkpointing"] for r in (gc_off, plain, off, on))

    records = len(log_schedule(args.max_steps, every))
    tracker_bytes = mem["start_bytes"] + mem["record_peak_bytes"]
    figures = {
        "model": args.model, "task": args.task, "max_steps": args.max_steps,
        "gc_steps": args.gc_steps, "records": records,
        "gc_off_step_s": gc_off["step_s"], "gc_on_step_s": gc_on["step_s"],
        "gc_ratio": gc_on["step_s"] / gc_off["step_s"],
        "plain_loop_s": plain["loop_s"], "plain_step_s": plain["step_s"],
        "headway_loop_s": off["loop_s"], "headway_step_s": off["step_s"],
        "wrapper_ratio": off["loop_s"] / plain["loop_s"],
        "tracked_loop_s": on["loop_s"], "tracked_step_s": on["step_s"],
        "tracker_s": on["tracking_s"],
        "tracking_overhead": (on["loop_s"] - off["loop_s"]) / off["loop_s"],
        **mem, "tracker_memory_fraction": tracker_bytes / mem["weight_bytes"],
    }
    f = figures
    print(f"\nheadway train costs: {args.model}, {args.task}, batch "
          f"{defaults.per_device_train_batch_size}, {defaults.dtype}, "
          f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'CPU'}")
    print(f"{'run':<38}{'steps':>6}{'loop (s)':>10}{'step (s)':>10}")
    for name, r in [("headway, checkpointing off", gc_off), ("headway, checkpointing on", gc_on),
                    ("plain TRL SFTTrainer", plain), ("headway, tracking off", off),
                    (f"headway, tracking on ({records} records, log)", on)]:
        print(f"{name:<38}{r['steps']:>6}{r['loop_s']:>10.2f}{r['step_s']:>10.3f}")
    print(f"1. checkpointing on / off, step time:   {f['gc_ratio']:.2f}x")
    print(f"2. headway / plain TRL, loop time:      {f['wrapper_ratio']:.3f}x   (target <= 1.05x; "
          f"step time {off['step_s'] / plain['step_s']:.3f}x)")
    print(f"3. tracking on vs off, loop time:       {f['tracking_overhead']:+.1%}   "
          f"(target <= 3 %); tracker's own time {f['tracker_s']:.2f} s = "
          f"{f['tracker_s'] / off['loop_s']:.1%} of the untracked loop")
    mib = 2 ** 20
    print(f"4. tracker memory: W_0 held {mem['start_bytes'] / mib:.1f} MiB (from {mem['source']})"
          f" + record peak {mem['record_peak_bytes'] / mib:.1f} MiB = "
          f"{f['tracker_memory_fraction']:.1%} of {mem['weight_bytes'] / mib:.0f} MiB of weights"
          f"   (target <= 10 %); checkpoint file mapped meanwhile: "
          f"{mem['mapped_peak_bytes'] / mib:.0f} MiB of address space")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
