"""A run folder has one owner: which run a folder holds, what a rerun may do with it.

A run's *identity* is what it computes: headway's own settings (but those in
:data:`RESUMABLE_CHANGES`), the SFTConfig fields that change the training
(:data:`TRAINING_FIELDS`; logging, saving, reporting and hardware fields may change on resume)
and the rows it trains on (the absolute source and the sha256 of the rows: ``train_data``).
Identities written by earlier versions are read in this version's fields, a field they lack
taking its default (:func:`changed_fields`). It is written to
``identity.json`` when the run starts and into every checkpoint as ``headway_run.json`` once
the Trainer has finished writing that checkpoint, so a checkpoint without it was cut short
(the process was killed while writing it). Every process that writes a run folder holds its
lock (:func:`headway.locks.owning`), so two commands never write one folder.

:func:`plan_run` only reads the folder and decides, before anything is loaded or changed:
    fresh        nothing there, or a start that trained no step (of this run: kept; of
                 other settings: its files are replaced): start at step 0
    resume       the newest *complete* checkpoint of the *same* run
    finished     this same run finished already: nothing to do
    move_aside   ``resume=False`` and the folder holds a run: it is renamed to
                 ``NAME.old-YYYYmmddTHHMMSS`` beside it, never mixed or deleted
and refuses (``ConfigError``, naming the changed fields) to resume or overwrite a run with
other settings. :func:`prepare_run` carries the plan out, after the new arguments have been
validated and the model and data loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers import TrainerCallback

MARKER = "headway_run.json"
IDENTITY = "identity.json"
DATA = "train_data"  # the identity's record of the rows: {"source", "data_hash"}
CHECKPOINTS = "checkpoints"
# headway's fields that may differ when a run resumes (they do not change what is computed)
RESUMABLE_CHANGES = {"resume", "save_final", "output_dir", "probe_batch_size",
                     "probe_checkpoint_layers"}
# the SFTConfig / TrainingArguments fields that change what a run computes
TRAINING_FIELDS = (
    "learning_rate", "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "optim",
    "optim_args", "optim_target_modules", "weight_decay", "adam_beta1", "adam_beta2",
    "adam_epsilon", "max_grad_norm", "label_smoothing_factor", "per_device_train_batch_size",
    "gradient_accumulation_steps", "average_tokens_across_devices", "max_steps",
    "num_train_epochs", "seed", "data_seed", "full_determinism", "train_sampling_strategy",
    "dataloader_drop_last", "bf16", "fp16", "max_length", "neftune_noise_alpha",
    "completion_only_loss", "loss_type", "shuffle_dataset", "trust_remote_code")
# what a run writes into its folder: a folder holding any of these holds a run
RUN_CONTENT = ("config.yaml", IDENTITY, "manifest.json", "metrics.jsonl", "patterns",
               "param_change", CHECKPOINTS, "final", "tensorboard")


def identity(config, data: dict | None = None) -> dict:
    """What defines what a run computes (a JSON-ready dict): its settings and, given, the
    rows it trains on (``data``: ``{"source", "data_hash"}``, see :func:`data_identity`)."""
    from .config import headway_fields, settings_dict

    values = settings_dict(config)
    names = [*headway_fields(), *TRAINING_FIELDS]
    out = {k: values[k] for k in names if k in values and k not in RESUMABLE_CHANGES}
    if data is not None:
        out[DATA] = data
    return out


def data_identity(task) -> dict:
    """The rows a run trains on: their resolved source and the sha256 of their content."""
    return {"source": task.source, "data_hash": task.data_hash}


def changed_fields(before: dict, now: dict) -> list[str]:
    """The fields of identity ``now`` whose values differ in the recorded identity ``before``
    (read in this version's fields, :func:`~.config.upgrade_legacy`; a field it lacks counts
    with its default, and the rows of a run recorded before they were part of its identity
    are not compared)."""
    from .config import field_defaults, upgrade_legacy

    before, defaults = upgrade_legacy(before), field_defaults()
    missing = object()
    changed = []
    for k, value in now.items():
        was = before.get(k, defaults.get(k, missing))
        if k in RESUMABLE_CHANGES or (k == DATA and k not in before):
            continue
        if was != value:
            changed.append(k)
    return sorted(changed)


@dataclass
class Checkpoint:
    path: Path
    step: int
    settings: dict | None  # from the marker (or config.yaml for checkpoints before markers)
    prior: dict = field(default_factory=dict)  # seconds spent up to this checkpoint


def _read_json(path: Path) -> dict | None:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _complete(path: Path) -> bool:
    """Trainer state readable and weights present (a checkpoint of any trainer)."""
    if _read_json(path / "trainer_state.json") is None:
        return False
    return any((path / name).is_file() for name in (
        "model.safetensors", "model.safetensors.index.json", "adapter_model.safetensors",
        "pytorch_model.bin", "pytorch_model.bin.index.json", "adapter_model.bin"))


def scan_checkpoints(run: Path, legacy_settings: dict | None) -> tuple[list[Checkpoint],
                                                                        list[Path]]:
    """``(complete checkpoints oldest first, incomplete checkpoint folders)`` of ``run``.
    A checkpoint is complete when headway's marker is there (written after everything else)
    and the Trainer's files are readable; a checkpoint written before markers existed counts
    as complete when its Trainer files are, with ``legacy_settings`` as its identity."""
    folder = run / CHECKPOINTS
    complete, incomplete = [], []
    if not folder.is_dir():
        return complete, incomplete
    for path in folder.iterdir():
        name = path.name
        if not (path.is_dir() and name.startswith("checkpoint-") and name[11:].isdigit()):
            continue
        marker = _read_json(path / MARKER)
        if marker is not None and _complete(path):
            complete.append(Checkpoint(path, int(name[11:]), marker.get("settings"),
                                       marker.get("prior", {})))
        elif not (path / MARKER).exists() and _complete(path) and legacy_settings is not None:
            complete.append(Checkpoint(path, int(name[11:]), legacy_settings))
        else:
            incomplete.append(path)
    complete.sort(key=lambda c: c.step)
    return complete, incomplete


@dataclass
class RunPlan:
    action: str  # fresh | resume | finished | move_aside
    run: Path
    resume_from: Checkpoint | None = None
    incomplete: list[Path] = field(default_factory=list)
    moved_to: Path | None = None
    replaced: list[str] = field(default_factory=list)  # fields of an abandoned start replaced


def holds_run(run: Path) -> bool:
    return run.is_dir() and any((run / name).exists() for name in RUN_CONTENT)


def recorded_identity(run: Path) -> dict | None:
    """The identity a run folder records: ``identity.json``, else (runs written before it
    existed) ``config.yaml``; None when neither can be read."""
    value = _read_json(run / IDENTITY)
    return value if value is not None else _read_yaml(run / "config.yaml")


def trained_any_step(run: Path) -> bool:
    """True when the run's records hold a training step (a train-loss line, or a probe
    record after step 0)."""
    from .records import read_metrics

    try:
        return any(r.get("step", 0) > 0 for r in read_metrics(run / "metrics.jsonl"))
    except ValueError:
        return True  # unreadable records: treat as valuable, never replace them


def plan_run(config, data: dict | None = None) -> RunPlan:
    """Decide what to do with ``config.output_dir`` (read only; see the module docstring).
    ``data``: the rows the run trains on (:func:`data_identity`)."""
    from .config import ConfigError

    run = Path(config.output_dir)
    if not holds_run(run):
        return RunPlan("fresh", run)
    if not config.resume:
        return RunPlan("move_aside", run, moved_to=_aside(run))
    mine = identity(config, data)
    recorded = recorded_identity(run)
    complete, incomplete = scan_checkpoints(run, recorded)
    hint = (f"use another --output_dir, or --resume false to move the run in {run} aside "
            f"(to {run.name}.old-<time>) and start over")
    others = [c for c in complete if c.settings is not None and changed_fields(c.settings, mine)]
    if others:
        raise ConfigError(f"{others[-1].path}: checkpoint of a run with other values of "
                          f"{', '.join(changed_fields(others[-1].settings, mine))}", hint=hint)
    manifest = _read_json(run / "manifest.json") or {}
    if (recorded is not None and not changed_fields(recorded, mine)
            and manifest.get("status") == "finished"):
        return RunPlan("finished", run)
    if complete:
        return RunPlan("resume", run, resume_from=complete[-1], incomplete=incomplete)
    if recorded is not None and changed_fields(recorded, mine):
        if not trained_any_step(run) and manifest.get("status") != "finished":
            return RunPlan("fresh", run, incomplete=incomplete, replaced=changed_fields(
                recorded, mine))  # a start that trained nothing: nothing to keep
        raise ConfigError(f"{run}: holds a run with other values of "
                          f"{', '.join(changed_fields(recorded, mine))}", hint=hint)
    if recorded is None:
        raise ConfigError(f"{run}: holds files of a run whose config.yaml is missing or "
                          f"unreadable, so it cannot be resumed safely", hint=hint)
    return RunPlan("fresh", run, incomplete=incomplete)


def clear_other_run(config, data: dict | None = None, say=print) -> None:
    """For folders headway itself manages (the demo's and experiments' intermediate runs):
    delete a run with other settings that :func:`plan_run` would refuse, so that it is
    computed anew. Never used on a folder the user named."""
    from .config import ConfigError

    try:
        plan_run(config, data)
    except ConfigError:
        shutil.rmtree(config.output_dir)
        say(f"  {config.output_dir}: held a run with other settings; starting it again")


def _aside(run: Path) -> Path:
    """A free sibling name for an old run: ``NAME.old-YYYYmmddTHHMMSS[-n]``."""
    stem = f"{run.name}.old-{time.strftime('%Y%m%dT%H%M%S')}"
    target, n = run.with_name(stem), 1
    while target.exists():
        target, n = run.with_name(f"{stem}-{n}"), n + 1
    return target


def _read_yaml(path: Path) -> dict | None:
    try:
        value = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None


def prepare_run(plan: RunPlan, config, data: dict | None = None, say=print) -> None:
    """Carry the plan out (main process only): move an old run aside, remove checkpoints cut
    short or an abandoned start, write ``config.yaml`` and ``identity.json``, and keep only
    the records up to the resumed step."""
    from ..storage import atomic_write_bytes, atomic_write_json
    from .records import truncate_metrics

    run = plan.run
    if plan.action == "move_aside":
        os.replace(run, plan.moved_to)
        say(f"headway: moved the previous run in {run} to {plan.moved_to}")
    for path in plan.incomplete:
        shutil.rmtree(path, ignore_errors=True)
        say(f"headway: removed {path}: the process was stopped while writing it")
    if plan.replaced:
        for name in RUN_CONTENT:
            target = run / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
        say(f"headway: replaced the start of a run with other values of "
            f"{', '.join(plan.replaced)} in {run}: it had trained no step")
    run.mkdir(parents=True, exist_ok=True)
    if plan.action == "resume":
        truncate_metrics(run / "metrics.jsonl", plan.resume_from.step)
    else:
        (run / "metrics.jsonl").unlink(missing_ok=True)
    # a finished manifest beside a new config would make the run look finished
    (run / "manifest.json").unlink(missing_ok=True)
    from .config import settings_dict

    atomic_write_bytes(run / "config.yaml",
                       yaml.safe_dump(settings_dict(config, changed_only=True),
                                      sort_keys=False).encode())
    atomic_write_json(run / IDENTITY, identity(config, data))


class RunMarker(TrainerCallback):
    """Marks each checkpoint complete (``headway_run.json``: the run's identity and the
    seconds spent so far), writes only the scheduled checkpoints (not transformers 5's extra
    one at the last step), and asks the Trainer to log the loss at every checkpoint and at the
    last step, so that the whole run's mean loss can be rebuilt from ``log_history`` after a
    resume (:func:`mean_train_loss`)."""

    def __init__(self, config, prior: dict, tracker=None, is_main: bool = True,
                 data: dict | None = None):
        self.settings = identity(config, data)
        self.prior = {"train_seconds": prior.get("train_seconds", 0.0),
                      "tracking_seconds": prior.get("tracking_seconds", 0.0),
                      "sessions": prior.get("sessions", 0) + 1}
        self.tracker = tracker
        self.is_main = is_main
        self.start = time.perf_counter()

    def seconds(self) -> dict:
        """Cumulative seconds over every session of this run, up to now."""
        return {"train_seconds": round(self.prior["train_seconds"]
                                       + time.perf_counter() - self.start, 2),
                "tracking_seconds": round(self.prior["tracking_seconds"]
                                          + (self.tracker.seconds if self.tracker else 0.0), 2),
                "sessions": self.prior["sessions"]}

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        from ..stopping import stop_requested
        from .config import json_safe

        last = state.global_step >= state.max_steps
        scheduled = (json_safe(args.save_strategy) == "steps" and state.save_steps > 0
                     and state.global_step % state.save_steps == 0)
        if last and control.should_save and not scheduled and not stop_requested():
            # transformers 5 saves a checkpoint at the last step as well; a finished run's
            # end is in final/ and its records, so only scheduled checkpoints are written
            control.should_save = False
        if control.should_save or last:
            control.should_log = True

    def on_save(self, args, state, control, **kwargs):
        if not self.is_main:
            return
        from ..storage import atomic_write_json

        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if folder.is_dir():
            atomic_write_json(folder / MARKER, {"settings": self.settings,
                                                "prior": self.seconds()})


def mean_train_loss(log_history: list[dict]) -> float | None:
    """Mean training loss over all steps of a run from the Trainer's ``log_history`` (each
    ``loss`` entry is the mean over the steps since the previous one), across resumes."""
    total, last = 0.0, 0
    for entry in log_history:
        if "loss" in entry and entry.get("step", 0) > last:
            total += entry["loss"] * (entry["step"] - last)
            last = entry["step"]
    return total / last if last else None
