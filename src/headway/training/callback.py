"""``PatternCallback``: record activation patterns and parameter change while any Hugging Face
``Trainer`` trains (``Trainer``, TRL's ``SFTTrainer``, any subclass).

    trainer = SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tok,
                         callbacks=[headway.PatternCallback({"gsm8k": probe_rows}, tok, every=25)])

At step 0, every ``every`` optimizer steps and at the end, for each probe (the same rows every
time) it writes ``patterns/step_SSSSSS/PROBE.{safetensors,json}`` and
``param_change/step_SSSSSS.safetensors`` (tensors q, k, v, o, attn ``[L, H]`` and mlp ``[L]``:
relative Frobenius change ‖W_t − W_0‖/‖W_0‖ from the weights at step 0) into its run folder,
``<args.output_dir>/headway/`` unless told otherwise, and appends one line per record to
``metrics.jsonl`` (train-loss and evaluation lines from the Trainer's logs go there too). The
folder has a ``manifest.json``, so ``headway analyze --runs`` and ``headway report`` read it.

Each record also goes to the Trainer's own logs (``log_history``, and ``report_to``
integrations such as TensorBoard or W&B): ``headway/<probe>/loss``, ``headway/<probe>/gini``
and ``headway/<probe>/delta_norm`` (‖AP_t − AP_0‖_F). Integration callbacks run before user
callbacks, so for them to see the records, hand the callback its trainer:
``callback.attach(trainer)`` (or ``PatternCallback(..., trainer=trainer)``).

Under DDP (``torchrun``, ``accelerate launch``) add it on every process, as any callback:
every process scores its share of the probe batches, only the main process writes. Under
FSDP2 (Accelerate's ``fsdp_version: 2``) every process runs as many probe batches and
computes the parameter change of the rows it holds; the sums are added over processes
(:mod:`headway.sharding`). A resumed
run (``trainer.train(resume_from_checkpoint=...)``) keeps the records up to its checkpoint and
writes the later ones again.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from ..distributed import broadcast_from_main
from ..models.architectures import resolve
from ..models.sharding import is_sharded
from ..patterns import ActivationPattern, pattern_meta
from ..scoring.score import score_encoded
from ..stats import concentration
from ..stopping import stop_requested
from ..storage import atomic_save_tensors, atomic_write_json
from .records import read_metrics, truncate_metrics
from .weight_change import relative_change


@dataclass
class Probe:
    """A probe task, already encoded: name, rows (``Encoded``), the task's record
    (:func:`headway.tasks.task_record`) and the scoring settings (convention, method,
    batch_size, template, max_length, overlong)."""

    name: str
    encoded: list
    task: dict
    settings: dict


class PatternCallback(TrainerCallback):
    """Records probe activation patterns and per-head parameter change during training.

    ``probes``: ``{name: data}``, data in any form :func:`headway.score` takes (a
    ``datasets.Dataset``, a list of dicts, a DataFrame, a file path or a task name), or a list
    of :class:`Probe`. ``tokenizer``: the model's tokenizer (default: the Trainer's
    ``processing_class``). ``every``: record every this many optimizer steps (0: only at the
    start and the end). ``schedule="log"``: as many records, spaced evenly in log(step)
    instead (:func:`log_schedule`: dense early, when patterns move most, sparse later). ``output_dir``: the run folder (default ``<args.output_dir>/headway``).
    ``template``, ``max_length``, ``overlong``, ``batch_size``: as for :func:`headway.score`
    (``template`` None: each probe's rendering follows its columns, as it does in
    :func:`headway.score`, :func:`headway.trajectory` and :func:`headway.compare`: TRL's
    prompt/completion rows -> raw, ``messages`` -> chat, question/answer -> qa).
    ``initial_weights``: where W_0 of the parameter change comes from: default, the
    safetensors files the model was loaded from (``name_or_path``), read memory-mapped, or a
    copy in the weights' dtype when they are not there; a folder; or a
    :class:`~headway.training.weight_change.StartWeights`. A resumed run whose start cannot be
    read records no parameter change (and says so). ``manifest``: extra fields for ``manifest.json`` (``False``: write none,
    as ``headway train`` does, which writes its own). ``train_task``: the probe that is the
    training task (default: the first), for ``headway analyze``.
    """

    def __init__(self, probes, tokenizer=None, every: int = 25, *, schedule: str = "every",
                 output_dir=None, template: str | None = None, max_length: int = 1024,
                 overlong: str = "truncate", batch_size: int = 8, track_weights: bool = True,
                 initial_weights=None, manifest: dict | bool = True,
                 train_task: str | None = None, model_info=None, trainer=None,
                 checkpoint_layers: bool | None = None):
        from ..errors import HeadwayError
        from ..scoring.score import _is_tokenizer

        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise HeadwayError(f"PatternCallback: every is {every!r}; give a number of steps "
                               f">= 0 (0: only the start and the end)")
        if schedule not in SCHEDULES:
            raise HeadwayError(f"PatternCallback: schedule {schedule!r} is not one of "
                               f"{SCHEDULES}")
        if not (isinstance(probes, dict) and probes) and not (
                isinstance(probes, (list, tuple)) and probes
                and all(isinstance(p, Probe) for p in probes)):
            raise HeadwayError(f"PatternCallback: probes must be a mapping of probe name to its "
                               f"rows, e.g. {{'gsm8k': rows}}; got a {type(probes).__name__}")
        if tokenizer is not None and not _is_tokenizer(tokenizer):
            raise HeadwayError(f"PatternCallback: the second argument is a "
                               f"{type(tokenizer).__name__}, not a tokenizer")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise HeadwayError(f"PatternCallback: batch_size is {batch_size!r}; give >= 1")
        self.schedule = schedule
        self.checkpoint_layers = checkpoint_layers  # probes recompute each layer's backward
        self.steps: set[int] | None = None  # the log schedule's steps, once the length is known
        self.raw_probes = probes
        self.tokenizer = tokenizer
        self.every = every
        self.output_dir = Path(output_dir) if output_dir else None
        self.settings = {"convention": "sample", "method": "gate", "batch_size": batch_size,
                         "template": template, "max_length": max_length, "overlong": overlong}
        # template None: each probe's own, from its columns (headway.data.encoding.template_for)
        self.track_weights = track_weights
        self.initial = initial_weights
        self.manifest = manifest
        self.train_task = train_task
        self.model_info = model_info
        self.trainer = trainer
        self.probes: list[Probe] | None = None
        self.first: dict[str, torch.Tensor] = {}  # AP at step 0 per probe, for delta_norm
        self.done: set[int] = set()
        self.pending: dict = {}
        self.seconds = 0.0  # time spent recording, for the overhead figure
        self.run_dir: Path | None = None
        self.is_main = True
        self.sharded = False  # FSDP2: scoring and weight norms are collectives

    def attach(self, trainer) -> PatternCallback:
        """Add this callback to ``trainer`` and log through it, so that ``report_to``
        integrations see the records too."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def prepare(self, run_dir: Path, tokenizer, model_info: dict, initial=None) -> None:
        """Set up for :meth:`record` outside a Trainer (e.g. over saved checkpoints)."""
        self.run_dir, self.tokenizer, self.model_info = Path(run_dir), tokenizer, model_info
        self.probes = self._encode(tokenizer)
        if initial is not None:
            self.initial = initial

    # -- set-up ---------------------------------------------------------------------------
    def _encode(self, tokenizer) -> list[Probe]:
        from ..data.encoding import encode_examples, template_for
        from ..data.rows import task_record
        from ..data.user import as_task
        from ..errors import HeadwayError

        if isinstance(self.raw_probes, (list, tuple)) and all(
                isinstance(p, Probe) for p in self.raw_probes):
            return list(self.raw_probes)
        if tokenizer is None:
            raise HeadwayError("PatternCallback needs the tokenizer (argument, or the "
                               "Trainer's processing_class)")
        out = []
        for name, data in self.raw_probes.items():
            task = as_task(data, name=name)
            settings = {**self.settings, "template": template_for(task,
                                                                  self.settings["template"])}
            encoded, _ = encode_examples(task.examples, tokenizer, settings["template"],
                                         settings["max_length"], settings["overlong"],
                                         task.source, prompt_field=task.prompt_field)
            out.append(Probe(name=name, encoded=encoded, task=task_record(task),
                             settings=settings))
        return out

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kw):
        from ..models.loading import wrap_model

        self.is_main = state.is_world_process_zero
        self.run_dir = self.output_dir or Path(args.output_dir) / "headway"
        tokenizer = self.tokenizer or processing_class
        self.tokenizer = tokenizer
        if self.probes is None:
            self.probes = self._encode(tokenizer)
        if self.model_info is None:
            self.model_info = wrap_model(model, tokenizer).describe()
        metrics = self.run_dir / "metrics.jsonl"
        if state.global_step == 0:  # a new run: records of an earlier one go
            self.done = set()
            if self.is_main:
                metrics.unlink(missing_ok=True)
        else:  # resumed: keep the records up to the checkpoint, write the later ones again
            # read on the main process and shared: each record is a collective, and nodes
            # without a shared filesystem would disagree on which are done
            done = {r["step"] for r in read_metrics(metrics)
                    if r["kind"] == "probe" and r["step"] <= state.global_step} \
                if self.is_main else set()
            self.done = set(broadcast_from_main(sorted(done)))
            if self.is_main:
                truncate_metrics(metrics, state.global_step)
            self._load_first()
        if self.is_main and self.manifest is not False:
            self._write_manifest(args, state, model, status="running")
        self.sharded = is_sharded(model)
        # the main process computes the change; of a sharded model, every one its rows
        if self.track_weights and (self.is_main or self.sharded):
            self._start_weights(model, state.global_step == 0)
        if state.global_step == 0:
            self.record(model, 0, state)

    def _start_weights(self, model, now_is_start: bool) -> None:
        """W_0 for the parameter change, without copying the model where its checkpoint can
        be read (:func:`~headway.training.weight_change.start_weights`)."""
        from .weight_change import StartWeights, start_weights

        if isinstance(self.initial, (str, Path)):
            self.initial = StartWeights.from_folder(self.initial, resolve(model))
        elif self.initial is None:
            self.initial = start_weights(model, now_is_start=now_is_start)
        if self.initial is None and self.is_main:
            print("headway: parameter change is not recorded: the run resumed and its starting "
                  "weights are not in a folder to read (pass initial_weights=FOLDER)",
                  file=sys.stderr)

    def _load_first(self) -> None:
        for probe in self.probes:
            path = self.run_dir / "patterns" / "step_000000" / probe.name
            try:
                self.first[probe.name] = ActivationPattern.load(path).scores
            except (FileNotFoundError, ValueError):
                pass

    def _write_manifest(self, args, state, model, status: str, **extra) -> None:
        from ..patterns import library_versions

        base = {"kind": "headway.TrainRun", "format_version": 1, "status": status,
                "model": self.model_info, "mode": _mode(model),
                "train_task": {"name": self.train_task or self.probes[0].name},
                "probes": [{**p.task, "n": len(p.encoded)} for p in self.probes],
                "every": self.every, "schedule": self.schedule, "world_size": args.world_size,
                "versions": library_versions(), "written_by": "headway.PatternCallback"}
        path = self.run_dir / "manifest.json"
        if status != "running" and path.is_file():
            base = {**json.loads(path.read_text()), "status": status}
        if isinstance(self.manifest, dict):
            base.update(self.manifest)
        atomic_write_json(path, {**base, **extra})

    # -- Trainer events -------------------------------------------------------------------
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self._due(state):
            self.record(model, state.global_step, state)

    def _due(self, state) -> bool:
        step = state.global_step
        if not self.every:  # only the start and the end
            return False
        if self.schedule == "log" and state.max_steps > 0:
            if self.steps is None:
                self.steps = set(log_schedule(state.max_steps, self.every))
            return step in self.steps
        return bool(self.every) and step % self.every == 0

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if stop_requested():  # SIGTERM: leave the grace period to the checkpoint
            return
        self.record(model, state.global_step, state)  # once: done steps are skipped
        if self.is_main and self.manifest is not False:
            self._write_manifest(args, state, model, status="finished",
                                 global_step=state.global_step,
                                 tracking_seconds=round(self.seconds, 2))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        if self.pending:  # seen by the callbacks after this one
            logs.update(self.pending)
            self.pending = {}
        if self.is_main and ("loss" in logs or "eval_loss" in logs):
            self._append({"kind": "train" if "loss" in logs else "eval",
                          "step": state.global_step,
                          **{k: v for k, v in logs.items() if isinstance(v, (int, float))
                             and not k.startswith("headway/")}})

    # -- recording --------------------------------------------------------------------------
    def _append(self, record: dict) -> None:
        path = self.run_dir / "metrics.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def record(self, model, step: int, state=None) -> dict | None:
        """Score every probe (all processes share the work) and, on the main process, write
        the patterns, the parameter change and a metrics line; hand the numbers to the
        Trainer's logs."""
        if step in self.done:  # e.g. the end of a run resumed from its final checkpoint
            return None
        self.done.add(step)
        start = time.perf_counter()
        heads = resolve(model)
        entry, logs = {"kind": "probe", "step": step, "probes": {}}, {}
        tag = f"step_{step:06d}"
        for probe in self.probes:
            out = score_encoded(model, probe.encoded, heads.n_layers, heads.n_heads,
                                _pad_id(self.tokenizer), batch_size=probe.settings["batch_size"],
                                progress=False, checkpoint_layers=self.checkpoint_layers)
            scores = out["per_sample"].abs().mean(0)
            n_zero = int((out["per_sample"] == 0).sum())  # underflow shows here (float16)
            meta = pattern_meta(self.model_info, probe.task, probe.settings,
                                n_samples=len(probe.encoded),
                                mean_loss=float(out["loss"].mean()), step=step,
                                n_zero_scores=n_zero, compute_dtype=out["compute_dtype"])
            if n_zero and self.is_main:
                print(f"headway: warning: step {step}, probe {probe.name}: {n_zero} of "
                      f"{out['per_sample'].numel()} per-sample scores are exactly 0 (float16 "
                      f"gradients underflowing?)", file=sys.stderr)
            if self.is_main:
                ActivationPattern(scores=scores, meta=meta, loss=out["loss"],
                                  per_sample=out["per_sample"],
                                  index=torch.tensor([e.index for e in probe.encoded])).save(
                    self.run_dir / "patterns" / tag / probe.name)
            first = self.first.setdefault(probe.name, scores) if step == 0 else \
                self.first.get(probe.name)
            stats = {"loss": meta["mean_loss"], **concentration(scores.numpy()),
                     "n_zero_scores": n_zero}
            entry["probes"][probe.name] = stats
            logs.update({f"headway/{probe.name}/loss": stats["loss"],
                         f"headway/{probe.name}/gini": stats["gini"]})
            if first is not None:
                logs[f"headway/{probe.name}/delta_norm"] = float((scores - first).norm())
        if self.initial is not None and (self.is_main or self.sharded):
            change = relative_change(heads, self.initial)
        if self.is_main and self.initial is not None:
            atomic_save_tensors(self.run_dir / "param_change" / f"{tag}.safetensors", change)
            entry["param_change"] = {"attn_mean": float(change["attn"].nanmean()),
                                     "attn_max": float(change["attn"].nan_to_num(0).max()),
                                     "mlp_mean": float(change["mlp"].mean())}
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        if self.is_main:
            entry["record_s"] = round(elapsed, 3)
            self._append(entry)
        self._log(logs, step, state)
        return entry

    def _log(self, logs: dict, step: int, state) -> None:
        """The record's numbers into the Trainer's logs (see the module docstring): through
        ``Trainer.log`` itself (a subclass's ``log``, e.g. SFTTrainer's, would take its
        running averages along), keeping the Trainer's own decision to log this step."""
        if self.trainer is not None and step > 0:
            from transformers import Trainer

            control = self.trainer.control
            due = control.should_log
            log = Trainer.log if isinstance(self.trainer, Trainer) else type(self.trainer).log
            log(self.trainer, dict(logs))
            self.trainer.control.should_log = due  # on_log cleared it: the loss line follows
        elif state is not None:
            state.log_history.append({**logs, "step": step})
            self.pending.update(logs)


SCHEDULES = ("every", "log")


def log_schedule(max_steps: int, every: int) -> list[int]:
    """Record steps spaced evenly in log(step) from 1 to ``max_steps``, as many as the fixed
    interval ``every`` would give (at least 4), plus step 0, deduplicated after rounding. E.g.
    300 steps, every 25: 0, 1, 2, 3, 4, 7, 11, 17, 28, 45, 72, 116, 187, 300."""
    import math

    count = max(max_steps // every if every else 0, 3) + 1
    points = {round(math.exp(math.log(max_steps) * i / (count - 1))) for i in range(count)}
    return sorted({0, *points})


def _pad_id(tokenizer) -> int:
    from ..models.loading import pad_id

    return pad_id(tokenizer)


def _mode(model) -> str:
    """What trains: ``lora`` (a PEFT model), ``full`` (every parameter) or ``partial``."""
    if hasattr(model, "peft_config"):
        return "lora"
    params = list(model.parameters())
    return "full" if all(p.requires_grad for p in params) else "partial"
