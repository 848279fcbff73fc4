"""``TrainConfig``: every setting of a tracked SFT run. It *is* TRL's ``SFTConfig`` (so every
``SFTConfig`` / ``TrainingArguments`` field works: ``optim``, ``warmup_steps``, ``report_to``,
``eval_strategy``, ``push_to_hub``, ``neftune_noise_alpha``, ...) with headway's own fields
added: the model, the task and its rows, what to train (``mode``, heads, LoRA), and what to
track (probes, ``track_every``).

``headway train`` fills it with TRL's ``TrlParser`` (:func:`parse_train_config`): flags,
``--config run.yaml``, or both (flags win). From Python it is built like any ``SFTConfig``::

    TrainConfig(model="smollm2-135m", task="arithmetic", rows=256, output_dir="runs/arith",
                learning_rate=5e-5, report_to="tensorboard")

Where headway decides a field itself it says so in the field's help and refuses a
conflicting value with one line naming the field (:data:`DECIDED`): the rows are encoded by
headway (one row per sequence, loss on the response tokens), so packing, padding-free
batches, a text column or model-init keywords do not apply.

headway's defaults differ from ``SFTConfig``'s for: ``output_dir`` (runs/train; the Trainer's
checkpoints go to ``output_dir/checkpoints``), ``learning_rate`` 5e-5, ``max_steps`` 100,
``num_train_epochs`` 1, ``seed`` 0, ``save_total_limit`` 2, ``max_length`` 512,
``gradient_checkpointing`` off and ``bf16`` off (CPU-friendly, and exact tracking by default).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import functools
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from trl import SFTConfig, TrlParser

from ..errors import HeadwayError

MODES = ("full", "lora", "heads")


class ConfigError(HeadwayError, ValueError):
    """A bad training configuration, naming the field (and the file it came from)."""

    def __init__(self, message: str, hint: str | None = None, field: str | None = None):
        super().__init__(message, hint)
        self.field = field


def _f(default, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


HAS_WARMUP_RATIO = "warmup_ratio" in SFTConfig.__dataclass_fields__


@dataclass
class TrainConfig(SFTConfig):
    """TRL's ``SFTConfig`` plus what a tracked headway run needs (see the module docstring)."""

    # ---- SFTConfig fields whose default or meaning headway sets
    output_dir: str = _f("runs/train", "Run folder: config.yaml, manifest.json, metrics.jsonl, "
                                       "patterns/, param_change/, final/; the Trainer's "
                                       "checkpoints go to OUTPUT_DIR/checkpoints.")
    learning_rate: float = _f(5e-5, "Peak learning rate (SFTConfig's default: 2e-5).")
    max_steps: int = _f(100, "Optimizer steps (<= 0: num_train_epochs decides).")
    num_train_epochs: float = _f(1.0, "Epochs when max_steps <= 0.")
    seed: int = _f(0, "Training seed (adapter init, data order).")
    save_total_limit: int | None = _f(2, "Checkpoints kept (older ones are deleted).")
    max_length: int | None = _f(512, "Tokens per row; longer rows follow `overlong` (headway "
                                     "encodes the rows itself).")
    gradient_checkpointing: bool | None = _f(
        None, "Recompute activations in the backward pass: less memory, about a third more "
              "time per step (SFTConfig turns it on by default; headway does not). Also "
              "--activation_checkpointing.", nargs="?", const=True)
    bf16: bool | None = _f(False, "Compute in bfloat16 (autocast) over the float32 master "
                                  "weights (SFTConfig's default: on where supported).")
    if not HAS_WARMUP_RATIO:  # transformers 5 folded it into warmup_steps
        warmup_ratio: float | None = _f(None, "Fraction of the steps for the linear warm-up "
                                              "(the same as --warmup_steps with a value below "
                                              "1).")

    # ---- model
    model: str = _f("smollm2-135m", "Built-in alias, local folder or hub id.")
    dtype: str = _f("float32", "Weight dtype of the trained (master) copy: float32 (default) or "
                               "bfloat16 (pure bfloat16 training: small updates round away).")
    quantization: str | None = _f(None, "Load a bitsandbytes 4bit or 8bit base for LoRA on top "
                                        "(QLoRA style; needs a CUDA GPU and bitsandbytes).")
    # ---- data
    task: str = _f("arithmetic", "Training task: built-in name, rg:<name>, file, folder or hub "
                                 "id. headway reads its columns (prompt_field, response_field) "
                                 "and encodes one row per sequence.")
    rows: int = _f(256, "Training rows.")
    offset: int = _f(0, "Skip this many rows of the task first.")
    task_seed: int = _f(0, "Generator / shuffle seed of the task's rows (data_seed is the "
                           "Trainer's sampler seed).")
    split: str = _f("train", "Split for folders and hub datasets.")
    dataset_config: str | None = _f(None, "Hub dataset configuration (e.g. main for gsm8k).")
    prompt_field: str | None = _f(None, "Prompt column (default: auto-detect).")
    response_field: str | None = _f(None, "Response column (default: auto-detect).")
    template: str | None = _f(None, "Prompt template: qa, raw, chat or a string with {prompt} "
                                    "(default: from the columns: prompt/completion -> raw, "
                                    "messages -> chat, anything else -> qa).")
    overlong: str = _f("truncate", "Rows over max_length: truncate or drop.")
    # ---- what to train
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
    save_final: bool = _f(True, "Save the trained weights to output_dir/final.")
    # ---- tracking
    probes: list[str] = _f([], "Probe tasks (default: the training task). Rows of the training "
                               "task are taken after the training rows (held out), unless "
                               "probe_train_rows. With eval_strategy, the Trainer evaluates on "
                               "the same held-out rows.")
    probe_rows: int = _f(32, "Rows per probe.")
    probe_batch_size: int = _f(8, "Probe rows per scoring batch. A probe record holds the "
                                  "activations of this many rows at once (an 8B model at 2048 "
                                  "tokens: about 9 GB a row; `headway estimate` says): lower it "
                                  "for big models; the scores stay the same.")
    probe_checkpoint_layers: bool = _f(False, "Probe records recompute each decoder layer in "
                                              "the backward pass: the activations of about one "
                                              "layer instead of all (a tenth at 8B), for about "
                                              "a third more probe time; the same scores.")
    probe_train_rows: bool = _f(False, "Probe the training task on its own training rows "
                                       "instead of held-out rows (for scarce data: the ΔAP is "
                                       "then in-sample).")
    track_every: int = _f(25, "Record probe APs and parameter change every this many steps "
                              "(0: only at the start and the end).")
    track_schedule: str = _f("log", "log: as many records as track_every gives, spaced "
                                    "evenly in log(step), dense early (when patterns move "
                                    "most) and sparse later; every: every track_every steps.")
    tracking: bool = _f(True, "Record probe patterns and parameter change (false: plain SFT).")
    resume: bool = _f(True, "Resume from the last checkpoint in output_dir if there is one "
                            "(false: move an earlier run aside and start again).")

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainConfig:
        """The configuration of a YAML file (e.g. a run folder's ``config.yaml``), read as
        ``headway train --config PATH`` reads it."""
        return parse_train_config(["--config", str(path)])

    def __post_init__(self):
        for name in ("heads", "probes", "lora_target_modules"):  # one value given alone
            if isinstance(getattr(self, name), str):
                setattr(self, name, [getattr(self, name)])
        ratio = getattr(self, "warmup_ratio", None)
        if ratio is not None and not HAS_WARMUP_RATIO:
            if not 0 <= ratio < 1:
                raise ConfigError(f"warmup_ratio is {ratio}; it must be in [0, 1)",
                                  field="warmup_ratio")
            self.warmup_steps = ratio
        sharding(self)  # before TrainingArguments sets DeepSpeed or FSDP up
        check_ranges(self)  # before TrainingArguments' own checks, which name no range
        if not self.use_cpu and not accelerator_available():
            # the CPU, said: processes launched together form a (gloo) group, and bf16
            # autocast runs (TrainingArguments refuses it otherwise)
            self.use_cpu = True
        super().__post_init__()
        validate(self)


# fields of SFTConfig headway decides: field -> (the value it needs, why); a different value
# is refused (:func:`validate`)
DECIDED = {
    "packing": (False, "headway trains one row per sequence (the rows its probes score are "
                       "encoded the same way); packing would join rows"),
    "padding_free": (False, "headway's batches are padded rows (padding-free batches need "
                            "flash-attention kernels)"),
    "dataset_text_field": ("text", "headway reads the task's columns: use prompt_field and "
                                   "response_field"),
    "dataset_kwargs": (None, "headway encodes the rows itself"),
    "model_init_kwargs": (None, "headway loads the model: use model, dtype and quantization"),
    "assistant_only_loss": (False, "the loss is on the response tokens already (the "
                                   "assistant's turn with template chat)"),
    "eos_token": (None, "headway encodes the rows with the tokenizer's own tokens"),
    "chat_template_path": (None, "template chat uses the tokenizer's own chat template"),
    "resume_from_checkpoint": (None, "headway resumes from output_dir/checkpoints by itself "
                                     "(resume true, the default)"),
}

# the values each numeric field accepts (lowest, highest, whether the lowest is allowed)
RANGES = {
    "rows": (1, None, True), "offset": (0, None, True), "max_length": (1, None, True),
    "top_k": (1, None, True), "lora_r": (1, None, True), "lora_alpha": (0, None, False),
    "lora_dropout": (0, 1, True), "learning_rate": (0, None, True),
    "warmup_steps": (0, None, True), "weight_decay": (0, None, True),
    "per_device_train_batch_size": (1, None, True), "gradient_accumulation_steps": (1, None, True),
    "num_train_epochs": (0, None, False), "logging_steps": (0, None, False),
    "save_total_limit": (1, None, True), "probe_rows": (1, None, True),
    "probe_batch_size": (1, None, True),
    "track_every": (0, None, True),
}


def check_ranges(c, where: str | None = None) -> None:
    """Refuse a value outside its field's range (:data:`RANGES`), naming the field, before
    anything is loaded or written; ``max_steps`` <= 0 needs ``num_train_epochs`` > 0."""
    at = f"{where}: " if where else ""
    for name, (low, high, inclusive) in RANGES.items():
        value = getattr(c, name, None)
        if value is None:
            continue
        below = value < low if inclusive else value <= low
        if below or (high is not None and value > high):
            bound = (f"{'>=' if inclusive else '>'} {low}" if high is None
                     else f"between {low} and {high}")
            raise ConfigError(f"{at}{name} is {value}; it must be {bound}", field=name)
    if c.max_steps <= 0 and c.num_train_epochs <= 0:
        raise ConfigError(f"{at}max_steps is {c.max_steps} and num_train_epochs "
                          f"{c.num_train_epochs}: nothing to train", field="max_steps")


def validate(c: TrainConfig) -> None:
    """Refuse what cannot train, naming the field (``ConfigError.field``), before anything
    is loaded or written."""
    for name, (needed, why) in DECIDED.items():
        value = getattr(c, name, needed)
        if value != needed:
            raise ConfigError(f"{name} is {value!r}: {why}",
                              hint=f"leave {name} at {needed!r}", field=name)
    if c.mode not in MODES:
        raise ConfigError(f"mode {c.mode!r} is not one of {MODES}", field="mode")
    if c.mode == "heads" and not (c.heads or c.heads_from):
        raise ConfigError("mode 'heads' needs 'heads' (LAYER.HEAD ...) or 'heads_from'",
                          field="mode")
    if c.mode != "heads" and (c.heads or c.heads_from):
        raise ConfigError(f"'heads' / 'heads_from' need mode 'heads' (mode is {c.mode!r})",
                          field="heads")
    check_ranges(c)
    for name, allowed in (("head_training", ("adapter", "mask")),
                          ("track_schedule", ("every", "log")),
                          ("overlong", ("truncate", "drop"))):
        if getattr(c, name) not in allowed:
            raise ConfigError(f"{name} {getattr(c, name)!r} is not one of {allowed}", field=name)
    check_precision(c)
    if c.quantization is not None and c.mode != "lora":
        raise ConfigError(f"quantization needs mode lora (quantised weights do not train "
                          f"themselves); mode is {c.mode!r}", field="quantization")
    if c.quantization is not None and c.tracking:
        raise ConfigError("tracking a quantised base is not supported yet (its packed weights "
                          "give no per-head parameter change)", field="tracking",
                          hint="--tracking false, or score the checkpoints afterwards with "
                               "headway trajectory")
    sharding(c)


def sharding(c: TrainConfig | None = None) -> str | None:
    """``"fsdp"`` when the Accelerate configuration (``accelerate launch`` sets ``FSDP_*``
    environment variables) asks for FSDP2, else None. FSDP1 and DeepSpeed are refused: their
    tracking is not built (FSDP2 is; DeepSpeed needs a GPU to be proven on), and so is
    head-selective training by masks under FSDP (it keys its masks by parameter identity,
    which sharding replaces)."""
    def on(variable: str) -> bool:
        return os.environ.get(variable, "").lower() in ("1", "true", "yes")

    if on("ACCELERATE_USE_DEEPSPEED") or (c is not None and c.deepspeed):
        raise ConfigError("DeepSpeed is not supported by headway train: its tracking is not "
                          "proven", field="deepspeed",
                          hint="use FSDP2 (fsdp_version: 2 in the Accelerate config) or DDP")
    if not on("ACCELERATE_USE_FSDP"):
        return None
    if os.environ.get("FSDP_VERSION", "1") != "2":
        raise ConfigError(f"FSDP version {os.environ.get('FSDP_VERSION', '1')} (from the "
                          f"Accelerate configuration): headway train supports FSDP2 only",
                          hint="set fsdp_version: 2 in the Accelerate config (FSDP_VERSION=2)")
    if c is not None and c.mode == "heads" and c.head_training == "mask":
        raise ConfigError("head_training mask does not work under FSDP (its masks are keyed "
                          "by parameters that sharding replaces)", field="head_training",
                          hint="--head_training adapter (the default)")
    return "fsdp"


def check_precision(c: TrainConfig) -> None:
    """Refuse, before anything loads, the dtype / mixed-precision pairs that cannot train."""
    import torch

    dtype = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(c.dtype, c.dtype)
    if dtype not in ("float32", "bfloat16", "float16"):
        raise ConfigError(f"dtype {c.dtype!r} is not float32, bfloat16 or float16",
                          field="dtype")
    if dtype == "float16":
        raise ConfigError("float16 weights cannot be trained (the optimizer's loss scaler "
                          "refuses float16 gradients)", field="dtype",
                          hint="--dtype float32 --fp16 trains in float16 with float32 master "
                               "weights")
    if c.bf16 and c.fp16:
        raise ConfigError("bf16 and fp16 are both on; choose one", field="fp16")
    if c.fp16 and not torch.cuda.is_available():
        raise ConfigError("fp16 needs a GPU", field="fp16", hint="on a CPU use --bf16 or "
                                                                 "neither")
    if dtype == "bfloat16" and c.fp16:
        raise ConfigError("bfloat16 weights with float16 compute cannot train", field="fp16",
                          hint="--dtype float32 --fp16, or --bf16")


def accelerator_available() -> bool:
    """A CUDA, XPU or MPS device is there to train on."""
    import torch

    xpu = getattr(torch, "xpu", None)
    return (torch.cuda.is_available() or torch.backends.mps.is_available()
            or bool(xpu and xpu.is_available()))


def pure_bfloat16(c: TrainConfig) -> bool:
    """True when the trained weights themselves are bfloat16 (no float32 master copy)."""
    return c.dtype in ("bfloat16", "bf16")


def precision(c: TrainConfig) -> str:
    """The compute precision asked for: ``"bf16"``, ``"fp16"`` or ``"no"``."""
    return "bf16" if c.bf16 else "fp16" if c.fp16 else "no"


def headway_fields() -> list[str]:
    """The fields headway adds to ``SFTConfig``."""
    return [f.name for f in dataclasses.fields(TrainConfig)
            if f.name not in SFTConfig.__dataclass_fields__ and f.name != "warmup_ratio"]


# ---------------------------------------------------------------- files of earlier versions

# config.yaml written by headway before TrainConfig was an SFTConfig: its fields, renamed
LEGACY_MARK = "mixed_precision"  # in every config.yaml of that version, in none of this one


def upgrade_legacy(values: dict) -> dict:
    """A settings mapping written by an earlier headway (``config.yaml``, ``identity.json``,
    a checkpoint's marker) in this version's fields: ``data_seed`` (then the task's seed) ->
    ``task_seed``, ``mixed_precision`` -> ``bf16`` / ``fp16``, ``tensorboard`` ->
    ``report_to``, ``progress`` -> ``disable_tqdm``, ``save_steps: 0`` -> ``save_strategy:
    no``. A mapping of this version comes back unchanged."""
    if LEGACY_MARK not in values:
        return dict(values)
    out = dict(values)
    if "task_seed" not in out:
        out["task_seed"] = out.pop("data_seed", 0)
    mixed = out.pop("mixed_precision", "no")
    out["bf16"], out["fp16"] = mixed == "bf16", mixed == "fp16"
    if "tensorboard" in out:
        out["report_to"] = "tensorboard" if out.pop("tensorboard") else "none"
    if "progress" in out:
        out["disable_tqdm"] = not out.pop("progress")
    if out.get("save_steps") == 0:
        out["save_strategy"], out["save_steps"] = "no", 500
    return out


# ---------------------------------------------------------------- parsing


def parse_train_config(argv: list[str], description: str | None = None) -> TrainConfig:
    """``headway train ARGV``: TRL's ``TrlParser`` over :class:`TrainConfig` (flags,
    ``--config FILE`` YAML, both: flags override the file). A YAML key no field has, a value
    of the wrong type or out of range, and a value headway cannot honour end in one
    :class:`ConfigError` line naming the file (or flag) and the field."""
    parser = TrainParser(description=description)
    return parser.parse(argv)


class TrainParser(TrlParser):
    """``TrlParser`` for :class:`TrainConfig` whose YAML values are checked against each
    field's flag (so the file and the command line convert a value the same way) and whose
    errors name the file and the field."""

    def __init__(self, description: str | None = None):
        super().__init__(TrainConfig, prog="headway train", allow_abbrev=False,
                         description=description,
                         epilog="Every field can also be written with hyphens (--max-length).")
        self.add_argument("--config", metavar="FILE",
                          help="YAML file of any of these fields (flags given as well override "
                               "it; an env: mapping sets environment variables, as in TRL)")
        self.config_path: str | None = None
        self.from_file: set[str] = set()  # fields the YAML file set
        self._given: set[str] = set()  # flags on the command line

    def _add_dataclass_arguments(self, dtype):
        """headway's fields first, in their own ``--help`` section, then SFTConfig's."""
        hints = typing.get_type_hints(dtype)
        ours = set(headway_fields())
        sections = {True: self.add_argument_group("headway (model, task, what to train and "
                                                  "track)"),
                    False: self.add_argument_group("SFTConfig (TRL) and TrainingArguments "
                                                   "(transformers)")}
        for own in (True, False):
            for f in dataclasses.fields(dtype):
                if f.init and (f.name in ours) == own:
                    f.type = hints[f.name]
                    self._parse_dataclass_field(sections[own], f)

    def error(self, message: str):
        """A bad flag value in one line (argparse would print the whole usage first)."""
        err = ConfigError(message, hint="`headway train --help` lists every field")
        err.located = True
        raise err

    def parse(self, argv: list[str]) -> TrainConfig:
        argv = list(argv)
        for i, arg in enumerate(argv):  # --config=FILE as --config FILE
            if arg.startswith("--config="):
                argv[i:i + 1] = ["--config", arg.split("=", 1)[1]]
        if "--config" in argv:
            at = argv.index("--config")
            if at + 1 >= len(argv):
                raise ConfigError("--config needs a YAML file")
            self.config_path = argv[at + 1]
            if not Path(self.config_path).is_file():
                raise ConfigError(f"{self.config_path}: no such configuration file",
                                  field="config")
        try:
            parsed = self.parse_args_and_config(argv, return_remaining_strings=True)
        except ConfigError as err:
            raise (err if getattr(err, "located", False) else self.located(err)) from None
        except ValueError as err:  # TrainingArguments' own checks; a non-mapping YAML file
            where = self.config_path or "arguments"
            raise ConfigError(f"{where}: {str(err).strip().splitlines()[0]}") from None
        except Exception as err:
            import yaml

            if isinstance(err, yaml.YAMLError):
                raise ConfigError(f"{self.config_path}: not valid YAML: "
                                  f"{' '.join(str(err).split())}") from None
            raise
        config, remaining = parsed[0], parsed[-1]
        if remaining:
            raise unknown_flags(self, remaining)
        return config

    def located(self, err: ConfigError) -> ConfigError:
        """``err`` with where its field came from: the YAML file or the flag."""
        name = err.field
        if name and name in self.from_file and f"--{name}" not in self._given:
            where = f"{self.config_path}: field {name!r}"
        elif name:
            where = f"--{name}"
        else:
            where = self.config_path or "arguments"
        return ConfigError(f"{where}: {err}", hint=err.hint, field=name)

    def parse_args_into_dataclasses(self, args=None, **kwargs):
        self._given = {a.split("=")[0].replace("-", "_").replace("__", "--")
                       for a in (args or []) if a.startswith("--")}
        return super().parse_args_into_dataclasses(args=args, look_for_args_file=False,
                                                   **kwargs)

    def set_defaults_with_config(self, **values) -> list[str]:
        """The YAML file's values as the parser's defaults, each checked against its field."""
        where = self.config_path
        values = upgrade_legacy(values)
        actions = {a.dest: a for a in self._actions if a.option_strings and a.nargs != 0}
        hints = typing.get_type_hints(TrainConfig)
        for key, value in values.items():
            if key not in actions:
                close = difflib.get_close_matches(str(key), list(actions), n=3)
                err = ConfigError(f"{where}: unknown field {key!r}",
                                  hint=(f"did you mean {' or '.join(close)}? " if close else "")
                                  + "`headway train --help` lists every field")
                err.located = True
                raise err
            try:
                checked = yaml_value(actions[key], hints.get(key), value,
                                     f"{where}: field {key!r}")
            except ConfigError as err:
                err.located = True
                raise
            for action in self._actions:  # a field's flags and its --no_ switch share a dest
                if action.dest == key:
                    action.default = checked
                    action.required = False
            self.from_file.add(key)
        return []


def yaml_value(action, kind, value, where: str):
    """``value`` from a YAML file as the field behind ``action`` takes it: strings and numbers
    through the flag's own conversion (and choices), lists and mappings where the field's
    type allows them."""
    args = set(typing.get_args(kind)) | ({kind} if kind else set())
    origins = {typing.get_origin(a) or a for a in args}
    if value is None:
        if type(None) in args or action.default is None:
            return None
        raise ConfigError(f"{where}: is empty (null); it needs a value")
    if isinstance(value, dict):
        if dict in origins:
            return value
        raise ConfigError(f"{where}: expected a single value, got a mapping")
    if isinstance(value, list):
        if action.nargs in ("+", "*") or list in origins:
            return [one_value(action, v, where) for v in value]
        raise ConfigError(f"{where}: expected a single value, got a list")
    one = one_value(action, value, where)
    return [one] if action.nargs in ("+", "*") else one


def one_value(action, value, where: str):
    from transformers.hf_argparser import string_to_bool

    convert = action.type or str
    if _is_bool(convert) or action.const is True:
        if isinstance(value, bool):
            return value
        convert = string_to_bool
    elif isinstance(value, bool):
        raise ConfigError(f"{where}: expected {_kind_name(convert)}, got {value!r}")
    if convert is str and isinstance(value, float):  # YAML reads 3.10 as 3.1
        raise ConfigError(f"{where}: {value!r} was read as a number; write it in quotes")
    try:
        out = convert(value if isinstance(value, str) else str(value))
    except (TypeError, ValueError, KeyError, argparse.ArgumentTypeError):
        raise ConfigError(f"{where}: expected {_kind_name(convert)}, got {value!r}") from None
    if action.choices is not None and out not in action.choices:
        raise ConfigError(f"{where}: {value!r} is not one of "
                          f"{', '.join(map(str, action.choices))}")
    return out


def _is_bool(convert) -> bool:
    return getattr(convert, "__name__", "") == "string_to_bool"


def _kind_name(convert) -> str:
    if _is_bool(convert):
        return "true or false"
    return getattr(convert, "__name__", "one of the choices").replace("<lambda>",
                                                                      "one of the choices")


def unknown_flags(parser, remaining: list[str]) -> ConfigError:
    """An error for flags no field has, with the closest flags as a hint."""
    known = [o for action in parser._actions for o in action.option_strings]
    flags = [a for a in remaining if a.startswith("-")] or remaining
    typed = flags[0].split("=")[0]
    close = list(dict.fromkeys(o.replace("-", "_").replace("__", "--") for o in
                               difflib.get_close_matches(typed, known, n=4)))
    return ConfigError(f"unknown argument{'s' if len(flags) > 1 else ''} {' '.join(flags)}",
                       hint=(f"did you mean {' or '.join(close)}? " if close else "")
                       + "`headway train --help` lists every field")


# ---------------------------------------------------------------- the settings as data


def json_safe(value):
    """``value`` as JSON / YAML takes it (enums by value, objects by their ``to_dict``)."""
    import enum

    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "to_dict"):
        return json_safe(value.to_dict())
    return str(value)


def settings_dict(c: TrainConfig, changed_only: bool = False) -> dict:
    """The configuration's fields as plain data (secrets such as ``hub_token`` left out).
    ``changed_only``: headway's fields and the SFTConfig fields that differ from their
    defaults, which is what ``config.yaml`` holds (``headway train --config`` reads it
    back)."""
    ours = set(headway_fields())
    defaults = field_defaults() if changed_only else {}
    out = {}
    for f in dataclasses.fields(c):
        if not f.init or f.name.endswith("_token"):
            continue
        value = json_safe(getattr(c, f.name))
        if changed_only and f.name not in ours and f.name != "output_dir" and \
                value == defaults.get(f.name, object()):
            continue
        out[f.name] = value
    return out


@functools.lru_cache(maxsize=1)
def _defaults() -> tuple:
    return tuple(settings_dict(TrainConfig()).items())


def field_defaults() -> dict:
    """Each field's value in a default :class:`TrainConfig`, as plain data."""
    return dict(_defaults())
