"""Supervised fine-tuning with activation-pattern tracking (TRL SFTTrainer + PatternCallback).

``headway train [--config run.yaml] [--field value ...]``: every :class:`TrainConfig` field (TRL's
SFTConfig and headway's own) is a YAML key and a command-line flag; flags override the file.
Training uses the same encoding as scoring (``data.encoding.encode_examples``: loss on the
response tokens only, or on every token with ``completion_only_loss`` false), handed to
SFTTrainer as a pre-tokenised ``input_ids`` / ``labels`` dataset; the TrainConfig itself (a
copy whose ``output_dir`` is the checkpoints folder) is the SFTTrainer's ``args``.

Run directory (``output_dir``):
    config.yaml         the resolved configuration
    manifest.json       model identity, data hashes, versions, heads trained, status, timings
    metrics.jsonl       train-loss lines and probe records (see headway.tracking)
    patterns/step_*/    probe activation patterns
    param_change/       per-head relative parameter change
    checkpoints/        Trainer checkpoints (resume), by save_strategy / save_steps
    tensorboard/        with report_to tensorboard (unless TENSORBOARD_LOGGING_DIR says else)
    final/              the trained weights (LoRA: the adapter), unless save_final is false
"""

from __future__ import annotations

import contextlib
import copy
import json
import sys
from pathlib import Path

from transformers import TrainerCallback

from ..progress import quiet_hf_progress
from ..stopping import Terminated, graceful, stop_requested
from .config import (
    ConfigError,
    TrainConfig,
    json_safe,
    pure_bfloat16,
    sharding,
    validate,
)


def _task_spec(c: TrainConfig, source: str, n: int, offset: int):
    from ..data.rows import TaskSpec

    own = source == c.task
    return TaskSpec(source=source, n=n, offset=offset, seed=c.task_seed, split=c.split,
                    config=c.dataset_config if own else None,
                    prompt_field=c.prompt_field if own else None,
                    response_field=c.response_field if own else None)


def build_probes(c: TrainConfig, tokenizer, train_task) -> list:
    """Probe tasks, encoded. The training task's probe rows follow its training rows, or are
    its training rows with ``probe_train_rows``."""
    from ..data.encoding import encode_examples
    from ..data.rows import task_record
    from ..data.tasks import load_task
    from .callback import Probe

    probes = []
    for source in c.probes or [c.task]:
        if source == c.task and c.probe_train_rows:
            task = load_task(_task_spec(c, source, min(c.probe_rows, c.rows), c.offset))
        else:
            offset = c.offset + c.rows if source == c.task else 0
            task = load_task(_task_spec(c, source, c.probe_rows, offset))
        if source == c.task and not c.probe_train_rows:
            overlap = {e.index for e in task.examples} & {e.index for e in train_task.examples}
            if overlap:
                raise ConfigError(f"probe rows of {source} overlap its training rows "
                                  f"{sorted(overlap)[:5]}")
        encoded, _ = encode_examples(task.examples, tokenizer, c.template, c.max_length,
                                     c.overlong, task.source, prompt_field=task.prompt_field)
        settings = {"convention": "sample", "method": "gate", "batch_size": c.probe_batch_size,
                    "template": c.template, "max_length": c.max_length, "overlong": c.overlong}
        if any(p.name == task.name for p in probes):
            raise ConfigError(f"probes: two probes are named {task.name!r} ({source} and an "
                              f"earlier one); their records would overwrite each other",
                              hint="copy or rename one file so that the names differ")
        probes.append(Probe(name=task.name, encoded=encoded, task=task_record(task),
                            settings=settings))
    return probes


def train(config: TrainConfig | None = None, **fields):
    """``headway train`` from Python: tracked SFT of ``config`` (a :class:`TrainConfig`, or
    its fields as keywords), resumed or skipped as the command would; returns the
    :class:`~headway.training.run.Run` in ``config.output_dir``::

        run = headway.train(task="arithmetic", rows=256, max_steps=50,
                            output_dir="runs/arith", report_to="tensorboard")
        run.delta("arithmetic")     # ΔAP from step 0 to the end
    """
    from .run import load_run

    if config is None:
        config = TrainConfig(**fields)
    elif fields:
        raise TypeError("give a TrainConfig or its fields, not both")
    run_train(config)
    return load_run(config.output_dir)


def held_out_rows(c: TrainConfig):
    """The training task's held-out rows: ``probe_rows`` rows after the training rows (the
    training task's probe, and the evaluation rows with ``eval_strategy``)."""
    from ..data.tasks import load_task

    return load_task(_task_spec(c, c.task, c.probe_rows, c.offset + c.rows))


def resolved(c: TrainConfig, train_task) -> TrainConfig:
    """A copy of ``c`` with its template resolved from the task's columns
    (:func:`~headway.data.encoding.template_for`), as the run's identity records it."""
    from ..data.encoding import template_for

    out = copy.copy(c)
    out.template = template_for(train_task, c.template)
    return out


def run_train(c: TrainConfig) -> dict:
    """Train with tracking; return the manifest (also written to the run directory). The run
    folder is locked for the run's life (:func:`headway.locks.owning`): a second process on it
    stops at once, naming the holder."""
    from ..data.tasks import load_task
    from ..distributed import process_state
    from ..locks import owning

    validate(c)
    state = process_state()
    train_task = load_task(_task_spec(c, c.task, c.rows, c.offset))  # a typo fails here, first
    c = resolved(c, train_task)
    with owning(c.output_dir, f"run folder {c.output_dir}"):
        return _train(c, state, train_task)


def _train(c: TrainConfig, state, train_task) -> dict:
    from trl import SFTTrainer

    from ..data.encoding import encode_examples
    from ..data.rows import task_record
    from ..distributed import barrier
    from ..models.loading import load_model
    from ..patterns import library_versions
    from ..storage import atomic_write_json, check_free_space, check_writable
    from .callback import PatternCallback
    from .head_adapter import add_head_adapter
    from .heads import HeadSelection, parse_heads, top_heads_from_file
    from .run_dir import (
        RunMarker,
        data_identity,
        mean_train_loss,
        plan_run,
        prepare_run,
    )
    from .weight_change import describe_start, start_weights

    data = data_identity(train_task)
    plan = plan_run(c, data)  # reads the folder only; refuses another run's checkpoints
    if plan.action == "finished":
        if state.is_main_process:
            print(f"headway: {plan.run} holds this run, finished; nothing to do "
                  f"(--resume false trains again and moves the finished run aside)")
        return json.loads((plan.run / "manifest.json").read_text())
    if state.is_main_process:
        check_writable(plan.run)  # before minutes of work, not after
    resume_from = plan.resume_from.path if plan.resume_from else None
    run = plan.run

    if pure_bfloat16(c) and state.is_main_process:
        print("headway: warning: --dtype bfloat16 trains bfloat16 weights without a float32 "
              "master copy: updates smaller than bfloat16's resolution round away. "
              "--dtype float32 --bf16 keeps them.", file=sys.stderr)
    lm = load_model(c.model, dtype=c.dtype, quantization=c.quantization,
                    trust_remote_code=c.trust_remote_code)
    if c.quantization:
        from peft import prepare_model_for_kbit_training

        lm.model = prepare_model_for_kbit_training(lm.model)
    tied = getattr(lm.model, "all_tied_weights_keys", None)
    if tied and not lm.model._keys_to_ignore_on_save:
        # Trainer's resume reports tied weights (never saved) as "missing keys" unless listed
        # here, and then re-ties them, which is what loading needs
        lm.model._keys_to_ignore_on_save = set(tied)
    encoded, stats = encode_examples(train_task.examples, lm.tokenizer, c.template,
                                     c.max_length, c.overlong, train_task.source,
                                     prompt_field=train_task.prompt_field)
    probes = build_probes(c, lm.tokenizer, train_task) if c.tracking else []
    # W_0: read from the model's own files (a folder, or a hub id's cached files) where they
    # hold it, else a copy in its dtype, on the main process (the others record no parameter
    # change); sharded, the callback takes it after sharding: each process its own rows
    initial = start_weights(lm.model, lm.path) \
        if c.tracking and state.is_main_process and not sharding(c) else None

    selection, heads = None, None
    if c.mode == "heads":
        try:
            heads = (top_heads_from_file(c.heads_from, c.top_k, lm.n_layers, lm.n_heads)
                     if c.heads_from else parse_heads(c.heads, lm.n_layers, lm.n_heads))
        except ValueError as err:
            raise ConfigError(f"{'heads_from' if c.heads_from else 'heads'}: {err}") from err
        if c.head_training == "mask":
            selection = HeadSelection(lm.model, heads).apply()
        else:
            add_head_adapter(lm.model, heads)
    peft_config = None
    if c.mode == "lora":
        from peft import LoraConfig

        peft_config = LoraConfig(r=c.lora_r, lora_alpha=c.lora_alpha,
                                 lora_dropout=c.lora_dropout,
                                 target_modules=c.lora_target_modules, task_type="CAUSAL_LM")

    # everything is validated and loaded: only now may the folder change
    if state.is_main_process:
        trainable = 0 if c.mode == "lora" else sum(
            p.numel() for p in lm.model.parameters() if p.requires_grad)
        check_free_space(run, written_bytes(c, lm.model, trainable),
                         "a checkpoint and the final weights of this run")
        prepare_run(plan, c, data)
    barrier()  # every process reads the same metrics.jsonl below
    args = trainer_args(c, run)
    evaluation = None
    if args.eval_strategy != "no":
        evaluation = as_dataset(encode_examples(
            held_out_rows(c).examples, lm.tokenizer, c.template, c.max_length, c.overlong,
            train_task.source, prompt_field=train_task.prompt_field)[0], c)
    tracker = PatternCallback(probes, lm.tokenizer, c.track_every, schedule=c.track_schedule,
                              output_dir=run, initial_weights=initial, manifest=False,
                              model_info=lm.describe(),
                              checkpoint_layers=c.probe_checkpoint_layers) if c.tracking else None
    marker = RunMarker(c, plan.resume_from.prior if plan.resume_from else {}, tracker,
                       is_main=state.is_main_process, data=data)
    callbacks = [marker]
    if selection is not None:
        callbacks.append(RestoreUnselected(selection))
    with quiet_hf_progress():
        trainer = SFTTrainer(model=lm.model, args=args, train_dataset=as_dataset(encoded, c),
                             eval_dataset=evaluation, processing_class=lm.tokenizer,
                             peft_config=peft_config, callbacks=callbacks)
    if tracker is not None:  # after the report_to integrations, which then see its records
        tracker.attach(trainer)
    _integrations_into(trainer, run)
    if sharding(c) == "fsdp":
        _use_fsdp2(trainer)
    if c.disable_tqdm:  # no bar, and no log dicts printed either: they are in metrics.jsonl
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
    n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    if selection is not None:
        n_trainable = selection.n_trainable

    manifest = {
        "kind": "headway.TrainRun", "format_version": 1, "status": "running",
        "model": lm.describe(), "mode": c.mode,
        "heads": [f"{l}.{h}" for l, h in heads] if heads else None,
        "head_training": c.head_training if heads else None,
        "n_trainable_parameters": n_trainable,
        "n_parameters": sum(p.numel() for p in lm.model.parameters()),
        "train_task": {**task_record(train_task), "n": stats.n_out,
                       "n_truncated": stats.n_truncated, "n_dropped": stats.n_dropped},
        "probes": [{**p.task, "n": len(p.encoded)} for p in probes],
        "world_size": state.num_processes,
        "sharding": "fsdp2" if trainer.is_fsdp_enabled else None,
        "dtype": c.dtype, "mixed_precision": c.mixed_precision,
        "gradient_checkpointing": bool(c.activation_checkpointing),
        "optim": json_safe(c.optim), "report_to": list(c.report_to),
        "track_schedule": c.track_schedule if c.tracking else None,
        "versions": library_versions(),
        "resumed_from": str(resume_from) if resume_from else None,
    }
    if state.is_main_process:
        atomic_write_json(run / "manifest.json", manifest)
    trainer.add_callback(StopOnRequest())
    with quiet_hf_progress() if c.disable_tqdm else contextlib.nullcontext(), graceful():
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if stop_requested():  # SIGTERM: the Trainer saved this step's checkpoint and stopped
        raise Terminated(f"the run saved checkpoint-{trainer.state.global_step} and stopped;")
    loss = mean_train_loss(trainer.state.log_history)
    manifest.update(status="finished", global_step=trainer.state.global_step,
                    **marker.seconds(),  # over every session of the run
                    train_loss=result.training_loss if loss is None else loss,
                    start_weights=describe_start(tracker.initial) if c.tracking else None)
    if c.save_final:
        save_final(trainer, lm, c, run / "final", state.is_main_process)
    if state.is_main_process:
        atomic_write_json(run / "manifest.json", manifest)
    return manifest


def trainer_args(c: TrainConfig, run: Path) -> TrainConfig:
    """The SFTTrainer's ``args``: a copy of ``c`` writing its checkpoints to
    ``run/checkpoints``, its hub repository and run name after the run folder."""
    args = copy.copy(c)
    args.output_dir = str(run / "checkpoints")
    if args.hub_model_id is None and args.push_to_hub:
        args.hub_model_id = run.name
    if args.run_name is None:
        args.run_name = run.name
    return args


def as_dataset(encoded: list, c: TrainConfig):
    """Encoded rows as the Trainer's dataset (``input_ids``, ``labels``); with
    ``completion_only_loss`` false the loss covers the prompt tokens too."""
    from datasets import Dataset

    every_token = c.completion_only_loss is False
    return Dataset.from_dict({"input_ids": [e.input_ids for e in encoded],
                              "labels": [list(e.input_ids) if every_token else e.labels
                                         for e in encoded]})


def _integrations_into(trainer, run: Path) -> None:
    """TensorBoard logs into ``run/tensorboard`` unless ``TENSORBOARD_LOGGING_DIR`` says
    else (the Trainer's default would be inside the checkpoints folder)."""
    from transformers.integrations import TensorBoardCallback

    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, TensorBoardCallback) and callback.logging_dir is None:
            callback.logging_dir = str(run / "tensorboard")


def written_bytes(c: TrainConfig, model, n_trainable: int) -> int:
    """About how much a run writes at once: a checkpoint (the weights in their dtype, the
    trainable ones again as AdamW's two float32 moments) when ``save_strategy`` saves, and
    the final weights when ``save_final``."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    saves = json_safe(c.save_strategy) != "no"
    checkpoint = weights + 2 * 4 * n_trainable if saves else 0
    return checkpoint + (weights if c.save_final else 0)


def save_final(trainer, lm, c: TrainConfig, folder: Path, is_main: bool) -> None:
    """The trained weights: the model (LoRA: its adapter), or for head adapters the merged
    model or, with ``save_merged`` false, the adapter alone."""
    from .head_adapter import merge, save_adapter

    if c.mode == "heads" and c.head_training == "adapter":
        if not c.save_merged:  # every process calls it (a sharded delta is gathered)
            base = lm.name if lm.name.startswith("random:") else lm.path
            save_adapter(lm.model, folder, base=base, write=is_main)
            if is_main:
                lm.tokenizer.save_pretrained(folder)
            return
        merge(lm.model)
    if trainer.is_fsdp_enabled:  # one model folder, gathered one tensor at a time
        _save_sharded(trainer.model, lm.tokenizer, folder, is_main)
        return
    with quiet_hf_progress():  # every process calls it; the main one writes
        trainer.save_model(str(folder))


def _save_sharded(model, tokenizer, folder: Path, is_main: bool) -> None:
    """``save_pretrained`` of a sharded (FSDP2) model: every process takes part in gathering
    each tensor; only the main process keeps the whole tensor and writes."""
    from ..distributed import barrier
    from ..models.sharding import full

    state = {}
    for name, tensor in model.state_dict().items():
        whole = full(tensor.detach())
        if is_main:
            state[name] = whole.cpu()
    if is_main:
        with quiet_hf_progress():
            model.save_pretrained(str(folder), state_dict=state)
        tokenizer.save_pretrained(str(folder))
    barrier()


def _use_fsdp2(trainer) -> None:
    """Check that the Trainer shards with FSDP2; on CPU processes switch it on, since
    Accelerate enables FSDP only on accelerators (:func:`headway.sharding.fsdp_on_cpu`)."""
    import torch
    from accelerate.utils import FullyShardedDataParallelPlugin

    from ..models.sharding import fsdp_on_cpu

    if not trainer.is_fsdp_enabled:
        if torch.cuda.is_available():
            raise ConfigError("the Accelerate configuration asks for FSDP but the Trainer did "
                              "not enable it", hint="start with accelerate launch")
        fsdp_on_cpu(trainer, FullyShardedDataParallelPlugin())  # reads the FSDP_* variables
    if trainer.accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise ConfigError("headway train supports FSDP2 only", hint="fsdp_version: 2")


def train_data(config: TrainConfig) -> dict:
    """The identity of the rows ``config`` trains on (:func:`~.run_dir.data_identity`)."""
    from ..data.tasks import load_task
    from .run_dir import data_identity

    return data_identity(load_task(_task_spec(config, config.task, config.rows, config.offset)))


def finished_run(config: TrainConfig) -> bool:
    """True when ``config.output_dir`` holds a finished run of the same settings and rows
    (fields in :data:`headway.training.run_dir.RESUMABLE_CHANGES` may differ)."""
    from ..data.tasks import load_task
    from .run_dir import changed_fields, data_identity, identity, recorded_identity

    run = Path(config.output_dir)
    before = recorded_identity(run)
    try:
        status = json.loads((run / "manifest.json").read_text()).get("status")
    except (OSError, ValueError):
        return False
    if before is None or status != "finished":
        return False
    task = load_task(_task_spec(config, config.task, config.rows, config.offset))
    return not changed_fields(before, identity(resolved(config, task), data_identity(task)))


class StopOnRequest(TrainerCallback):
    """After a SIGTERM (:mod:`headway.stopping`), save a checkpoint at the end of the current
    step and stop. Every process learns of the request at the same step (a collective), so
    that all of them save and stop together."""

    def on_step_end(self, args, state, control, **kwargs):
        import torch

        from ..models.sharding import max_over_processes

        asked = torch.tensor([float(stop_requested())])
        if args.world_size > 1:
            asked = max_over_processes(asked, args.device)
        if float(asked) > 0:
            control.should_save = True
            control.should_training_stop = True


class RestoreUnselected(TrainerCallback):
    """After each optimizer step, put back every weight entry outside the selected heads."""

    def __init__(self, selection):
        self.selection = selection

    def on_optimizer_step(self, args, state, control, **kwargs):
        self.selection.restore()
