"""``TrainConfig``: every setting of a tracked SFT run, one dataclass with ``help`` metadata.

The same dataclass is filled from ``headway train`` flags (``HfArgumentParser``, underscores or
hyphens), from a YAML file (``--config``, :func:`load_config`: typed, errors name the file
and the field), and from Python (``TrainConfig(...)`` or ``load_config(None, **fields)``).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..errors import HeadwayError

MODES = ("full", "lora", "heads")


def _f(default, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything a tracked SFT run needs. Field names follow transformers' TrainingArguments
    where one exists."""

    # model and data
    model: str = _f("smollm2-135m", "Built-in alias, local folder or hub id.")
    dtype: str = _f("float32", "Weight dtype of the trained (master) copy: float32 (default) or "
                               "bfloat16 (pure bfloat16 training: small updates round away).")
    quantization: str | None = _f(None, "Load a bitsandbytes 4bit or 8bit base for LoRA on top "
                                        "(QLoRA style; needs a CUDA GPU and bitsandbytes).")
    mixed_precision: str = _f("no", "Compute precision: no, bf16 (autocast, float32 master "
                                    "weights) or fp16 (autocast with loss scaling; needs a GPU).")
    task: str = _f("arithmetic", "Training task: built-in name, rg:<name>, file, folder or hub id.")
    rows: int = _f(256, "Training rows.")
    offset: int = _f(0, "Skip this many rows of the task first.")
    data_seed: int = _f(0, "Generator / shuffle seed of the task rows.")
    split: str = _f("train", "Split for folders and hub datasets.")
    dataset_config: str | None = _f(None, "Hub dataset configuration (e.g. main for gsm8k).")
    prompt_field: str | None = _f(None, "Prompt column (default: auto-detect).")
    response_field: str | None = _f(None, "Response column (default: auto-detect).")
    template: str = _f("qa", "Prompt template: qa, raw, chat or a string with {prompt}.")
    max_length: int = _f(512, "Tokens per row.")
    overlong: str = _f("truncate", "Rows over max_length: truncate or drop.")
    # what to train
    mode: str = _f("full", "full: every weight; lora: PEFT LoRA adapters; heads: only the q/k/v "
                           "rows and o columns of selected heads.")
    heads: list[str] = _f([], "mode=heads: heads as LAYER.HEAD (e.g. 3.1 5.0).")
    heads_from: str | None = _f(None, "mode=heads: take the top_k heads of this pattern file.")
    top_k: int = _f(10, "mode=heads with heads_from: how many heads.")
    head_training: str = _f("adapter", "mode=heads: adapter (only the selected heads' entries "
                                       "exist as trainable deltas; the optimizer holds state for "
                                       "exactly them) or mask (the whole q/k/v/o matrices train "
                                       "with their other entries put back after each step).")
    save_merged: bool = _f(True, "mode=heads with the adapter: final/ holds the merged model "
                                 "(true) or the adapter alone (false: head_adapter.safetensors, "
                                 "a few MB, which loads onto its base).")
    lora_r: int = _f(8, "LoRA rank.")
    lora_alpha: int = _f(16, "LoRA alpha.")
    lora_dropout: float = _f(0.0, "LoRA dropout.")
    lora_target_modules: list[str] = _f(["q_proj", "k_proj", "v_proj", "o_proj"],
                                        "Module names LoRA adapts.")
    # optimisation (TrainingArguments names)
    learning_rate: float = _f(5e-5, "Peak learning rate.")
    lr_scheduler_type: str = _f("linear", "transformers scheduler name.")
    warmup_steps: int = _f(0, "Linear warm-up steps.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    per_device_train_batch_size: int = _f(8, "Rows per step per process.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    max_steps: int = _f(100, "Optimizer steps (<= 0: use num_train_epochs).")
    num_train_epochs: float = _f(1.0, "Epochs when max_steps <= 0.")
    seed: int = _f(0, "Training seed (init of adapters, data order).")
    logging_steps: int = _f(10, "Log the training loss every this many steps.")
    save_steps: int = _f(0, "Checkpoint every this many steps (0: no checkpoints).")
    save_total_limit: int = _f(2, "Checkpoints kept.")
    save_final: bool = _f(True, "Save the trained weights to output_dir/final.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass: less "
                                             "memory, about a third more time per step (TRL's "
                                             "SFTConfig turns it on by default; headway does "
                                             "not).")
    # tracking
    probes: list[str] = _f([], "Probe tasks (default: the training task). Rows of the training "
                               "task are taken after the training rows (held out), unless "
                               "probe_train_rows.")
    probe_rows: int = _f(32, "Rows per probe.")
    probe_train_rows: bool = _f(False, "Probe the training task on its own training rows "
                                       "instead of held-out rows (for scarce data: the ΔAP is "
                                       "then in-sample).")
    track_every: int = _f(25, "Record probe APs and parameter change every this many steps "
                              "(0: only at the start and the end).")
    track_schedule: str = _f("log", "log: as many records as track_every gives, spaced "
                                    "evenly in log(step), dense early (when patterns move "
                                    "most) and sparse later; every: every track_every steps.")
    tracking: bool = _f(True, "Record probe patterns and parameter change (false: plain SFT).")
    tensorboard: bool = _f(False, "Also log to TensorBoard (output_dir/tensorboard).")
    output_dir: str = _f("runs/train", "Run directory.")
    resume: bool = _f(True, "Resume from the last checkpoint in output_dir if there is one.")
    progress: bool = _f(True, "Show a progress bar.")


class ConfigError(HeadwayError, ValueError):
    """A bad training configuration: names the file and the field."""


def load_config(path: str | Path | None = None, **overrides) -> TrainConfig:
    """A TrainConfig from a YAML file (optional), then keyword overrides. Every value is
    converted to its field's type; a value that cannot be is an error naming file and field."""
    values: dict = {}
    if path:
        path = Path(path)
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read the configuration: {err}") from err
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of field: value")
    where = str(path or "arguments")
    types = typing.get_type_hints(TrainConfig)
    merged = {}
    for key, value in [*values.items(), *overrides.items()]:
        if key not in types:
            raise ConfigError(f"{where}: unknown field {key!r}; fields are {sorted(types)}")
        merged[key] = _coerce(value, types[key], f"{where}: field {key!r}")
    config = TrainConfig(**merged)
    validate(config, where)
    return config


def _coerce(value, kind, where: str):
    """``value`` as ``kind`` (str, int, float, bool, list[str], or X | None)."""
    args = typing.get_args(kind)
    if type(None) in args:  # X | None
        if value is None:
            return None
        kind = next(a for a in args if a is not type(None))
    if typing.get_origin(kind) is list:
        items = value if isinstance(value, (list, tuple)) else [value]
        return [_coerce(v, typing.get_args(kind)[0], where) for v in items]
    if kind is str and isinstance(value, float):  # YAML reads 3.10 as 3.1
        raise ConfigError(f"{where}: {value!r} was read as a number; write it in quotes")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "yes", "1", "false", "no", "0"):
            return str(value).lower() in ("true", "yes", "1")
    else:
        try:
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ValueError
            return kind(value) if kind is not str or value is not None else value
        except (TypeError, ValueError):
            pass
    raise ConfigError(f"{where}: expected {getattr(kind, '__name__', kind)}, got {value!r}")


# the values each numeric field accepts (TRL's and PyTorch's ranges, and headway's own):
# (lowest, highest, whether the lowest is allowed)
RANGES = {
    "rows": (1, None, True), "offset": (0, None, True), "max_length": (1, None, True),
    "top_k": (1, None, True), "lora_r": (1, None, True), "lora_alpha": (0, None, False),
    "lora_dropout": (0, 1, True), "learning_rate": (0, None, True),
    "warmup_steps": (0, None, True), "weight_decay": (0, None, True),
    "per_device_train_batch_size": (1, None, True), "gradient_accumulation_steps": (1, None, True),
    "num_train_epochs": (0, None, False), "logging_steps": (1, None, True),
    "save_steps": (0, None, True), "save_total_limit": (1, None, True),
    "probe_rows": (1, None, True), "track_every": (0, None, True),
}


def check_ranges(c, where: str = "config") -> None:
    """Refuse a value outside its field's range (:data:`RANGES`), naming the field, before
    anything is loaded or written; ``max_steps`` <= 0 needs ``num_train_epochs`` > 0."""
    for name, (low, high, inclusive) in RANGES.items():
        value = getattr(c, name, None)
        if value is None:
            continue
        below = value < low if inclusive else value <= low
        if below or (high is not None and value > high):
            bound = (f"{'>=' if inclusive else '>'} {low}" if high is None
                     else f"between {low} and {high}")
            raise ConfigError(f"{where}: {name} is {value}; it must be {bound}")
    if c.max_steps <= 0 and c.num_train_epochs <= 0:
        raise ConfigError(f"{where}: max_steps is {c.max_steps} and num_train_epochs "
                          f"{c.num_train_epochs}: nothing to train")


def validate(c: TrainConfig, where: str = "config") -> None:
    if c.mode not in MODES:
        raise ConfigError(f"{where}: mode {c.mode!r} is not one of {MODES}")
    if c.mode == "heads" and not (c.heads or c.heads_from):
        raise ConfigError(f"{where}: mode 'heads' needs 'heads' (LAYER.HEAD ...) or 'heads_from'")
    if c.mode != "heads" and (c.heads or c.heads_from):
        raise ConfigError(f"{where}: 'heads' / 'heads_from' need mode 'heads' (mode is {c.mode!r})")
    check_ranges(c, where)
    if c.head_training not in ("adapter", "mask"):
        raise ConfigError(f"{where}: head_training {c.head_training!r} is not adapter or mask")
    if c.track_schedule not in ("every", "log"):
        raise ConfigError(f"{where}: track_schedule {c.track_schedule!r} is not every or log")
    check_precision(c, where)
    if c.quantization is not None and c.mode != "lora":
        raise ConfigError(f"{where}: quantization needs mode lora (quantised weights do not "
                          f"train themselves); mode is {c.mode!r}")
    if c.quantization is not None and c.tracking:
        raise ConfigError(f"{where}: tracking a quantised base is not supported yet (its packed "
                          f"weights give no per-head parameter change)",
                          hint="--tracking false, or score the checkpoints afterwards with "
                               "headway trajectory")
    sharding(c, where)


def sharding(c: TrainConfig | None = None, where: str = "config") -> str | None:
    """``"fsdp"`` when the Accelerate configuration (``accelerate launch`` sets ``FSDP_*``
    environment variables) asks for FSDP2, else None. FSDP1 and DeepSpeed are refused: their
    tracking is not built (FSDP2 is; DeepSpeed needs a GPU to be proven on), and so is
    head-selective training by masks under FSDP (it keys its masks by parameter identity,
    which sharding replaces)."""
    import os

    def on(variable: str) -> bool:
        return os.environ.get(variable, "").lower() in ("1", "true", "yes")

    if on("ACCELERATE_USE_DEEPSPEED"):
        raise ConfigError(f"{where}: DeepSpeed (from the Accelerate configuration) is not "
                          f"supported by headway train: its tracking is not proven",
                          hint="use FSDP2 (fsdp_version: 2 in the Accelerate config) or DDP")
    if not on("ACCELERATE_USE_FSDP"):
        return None
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise ConfigError(f"{where}: FSDP version {os.environ.get('FSDP_VERSION', '1')} (from "
                          f"the Accelerate configuration): headway train supports FSDP2 only",
                          hint="set fsdp_version: 2 in the Accelerate config (FSDP_VERSION=2)")
    if c is not None and c.mode == "heads" and c.head_training == "mask":
        raise ConfigError(f"{where}: head_training mask does not work under FSDP (its masks "
                          f"are keyed by parameters that sharding replaces)",
                          hint="--head_training adapter (the default)")
    return "fsdp"


PRECISIONS = ("no", "bf16", "fp16")


def check_precision(c: TrainConfig, where: str = "config") -> None:
    """Refuse, before anything loads, the dtype / mixed-precision pairs that cannot train."""
    import torch

    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(c.dtype, c.dtype)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"{where}: dtype {c.dtype!r} is not float32, bfloat16 or float16")
    if c.mixed_precision not in PRECISIONS:
        raise ConfigError(f"{where}: mixed_precision {c.mixed_precision!r} is not one of "
                          f"{PRECISIONS}")
    if dtype == "float16":
        raise ConfigError(f"{where}: float16 weights cannot be trained (the optimizer's loss "
                          f"scaler refuses float16 gradients)",
                          hint="--dtype float32 --mixed_precision fp16 trains in float16 "
                               "with float32 master weights")
    if c.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError(f"{where}: mixed_precision fp16 needs a GPU",
                          hint="on a CPU use --mixed_precision bf16 or no")
    if dtype == "bfloat16" and c.mixed_precision == "fp16":
        raise ConfigError(f"{where}: bfloat16 weights with float16 compute cannot train",
                          hint="--dtype float32 --mixed_precision fp16, or --mixed_precision "
                               "bf16")


def pure_bfloat16(c: TrainConfig) -> bool:
    """True when the trained weights themselves are bfloat16 (no float32 master copy)."""
    return c.dtype in ("bfloat16", "bf16")
