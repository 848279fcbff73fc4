"""The settings of every ``headway`` command but ``train``: one dataclass each, a ``help`` on
every field (PEFT's and TRL's style).

The command line fills them from flags (:mod:`headway.cli`, ``HfArgumentParser``: ``--max-length``
or ``--max_length``); Python builds them and passes them to the command, which does the same::

    from headway.commands import run
    from headway.settings import ScoreArgs

    run(ScoreArgs(task="arithmetic", rows=8))   # = headway score --task arithmetic -n 8

``headway train`` has :class:`headway.training.config.TrainConfig` (TRL's SFTConfig and
headway's fields; also YAML). Groups of
fields several commands share are base classes: :class:`ModelArgs`, :class:`TaskArgs`,
:class:`ExperimentArgs`. Field metadata besides ``help``: ``aliases`` (short options),
``positional`` (given without a flag), ``nargs`` and ``action`` where a flag takes other than
one or more values, e.g. ``--train-run`` repeated.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Literal

from .errors import HeadwayError
from .experiments.runner import BASIC_TASKS

DEFAULT_MODEL = "smollm2-135m"


class SettingsError(HeadwayError, ValueError):
    """A bad command setting: names the field."""


def _f(default, help: str, **meta):
    """A field with a default (a list is copied for each instance) and ``help``."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **meta})
    return field(default=default, metadata={"help": help, **meta})


def _required(help: str, **meta):
    return field(metadata={"help": help, **meta})


@dataclass(kw_only=True)
class Settings:
    """Base of the command settings: a value outside a field's choices names the field."""

    def __post_init__(self):
        for name, kind in typing.get_type_hints(type(self)).items():
            value = getattr(self, name)
            if typing.get_origin(kind) is Literal and value not in typing.get_args(kind):
                raise SettingsError(f"{type(self).__name__}: field {name!r} is {value!r}, not one "
                                    f"of {', '.join(map(repr, typing.get_args(kind)))}")
        for f in dataclasses.fields(self):
            low, value = f.metadata.get("min"), getattr(self, f.name)
            if low is not None and isinstance(value, (int, float)) and value < low:
                raise SettingsError(f"--{f.name.replace('_', '-')} is {value}; it must be >= "
                                    f"{low}")


# ---------------------------------------------------------------- shared groups

H_OFFSET = "skip this many rows first"
H_SEED = "generator / shuffle seed"
H_SPLIT = "dataset split for folders and hub ids"
H_CONFIG = "hub dataset configuration, e.g. 'main' for gsm8k"
H_PROMPT = "prompt column (default: auto-detect)"
H_RESPONSE = "response column (default: auto-detect)"
H_TEMPLATE = ("qa ('Question: {prompt}\\nAnswer: '), raw, chat (the tokenizer's chat template) "
              "or a custom string containing {prompt} (default: from the columns: "
              "prompt/completion -> raw, messages -> chat, anything else -> qa)")
H_MAX_LENGTH = "tokens per row"
H_OVERLONG = "rows longer than --max-length: truncate the response or drop the row"
H_DTYPE = "float32 (default), bfloat16 or float16"
H_DEVICE = "torch device (default: cuda if available, else cpu)"
H_PROGRESS = "show progress bars"
Overlong = Literal["truncate", "drop"]


@dataclass(kw_only=True)
class ModelArgs(Settings):
    """The model a command loads."""

    _help_group = "model"  # the --help section of the fields declared here (not a field)

    model: str = _f(DEFAULT_MODEL, "built-in alias (smollm2-135m), local model folder, or hub id")
    revision: str | None = _f(None, "hub revision (branch, tag or commit) for hub ids")
    dtype: str = _f("float32", H_DTYPE)
    device: str | None = _f(None, H_DEVICE)
    trust_remote_code: bool = _f(False, "allow the model's own Python code from the hub (off by "
                                        "default)")
    device_map: str | None = _f(None, "spread the model over devices through accelerate: auto, "
                                      "balanced, sequential, or a JSON object of module -> "
                                      "device (cuda:0, cpu, disk); overrides --device")
    offload_folder: str | None = _f(None, "folder for layers offloaded to disk by --device-map "
                                          "(default: a folder in headway's cache)")
    quantization: str | None = _f(None, "load a bitsandbytes 4bit or 8bit base (needs a CUDA "
                                        "GPU and bitsandbytes)")


@dataclass(kw_only=True)
class RowArgs(Settings):
    """Which rows of a task a command reads, and how each becomes tokens."""

    _help_group = "rows"

    rows: int | None = _f(None, "rows to use (default: all rows of a file or dataset, 64 "
                                "generated rows for a built-in task)", aliases=["-n"], min=1)
    offset: int = _f(0, H_OFFSET, min=0)
    seed: int = _f(0, H_SEED)
    shuffle: bool = _f(False, "shuffle file rows (seeded)")
    split: str = _f("train", H_SPLIT)
    config: str | None = _f(None, H_CONFIG)
    prompt_field: str | None = _f(None, H_PROMPT)
    response_field: str | None = _f(None, H_RESPONSE)
    template: str | None = _f(None, H_TEMPLATE)
    max_length: int = _f(1024, H_MAX_LENGTH, min=1)
    overlong: Overlong = _f("truncate", H_OVERLONG)


@dataclass(kw_only=True)
class TaskArgs(RowArgs):
    """The task a command reads (and, from :class:`RowArgs`, which of its rows)."""

    _help_group = "task"

    task: str = _required("built-in task (see `headway tasks`), rg:<reasoning-gym name>, a "
                          ".jsonl/.json/.csv/.parquet file, a dataset folder, or a hub dataset id")


@dataclass(kw_only=True)
class ExperimentArgs(Settings):
    """What the experiments (mix, select, modes) share."""

    _help_group = "experiment"

    output_dir: str = _f("experiments", "experiment folder", aliases=["-o"])
    model: str = _f(DEFAULT_MODEL, "built-in alias, local model folder or hub id")
    target: str = _f("word_problems", "target task, as for --task of score")
    target_rows: int = _f(32, "labelled target rows to train on: rows 0..N-1", min=1)
    eval_rows: int = _f(64, "held-out evaluation rows", min=1)
    eval_offset: int = _f(10_000, "first evaluation row of the target", min=0)
    seeds: list[int] = _f([0, 1, 2], "seeds (default: 0 1 2): each arm runs once per seed. A "
                                     "seed sets the training seed; in mix also the basic rows "
                                     "drawn and the random mixture, in select the random rows. "
                                     "Target and evaluation rows stay the same")
    batch_size: int = _f(8, "rows per step", min=1)
    learning_rate: float = _f(5e-5, "full-SFT learning rate", min=0)
    max_length: int = _f(512, H_MAX_LENGTH, min=1)
    template: str = _f("qa", "prompt template")
    keep_weights: bool = _f(False, "keep every arm's trained weights (default: deleted after "
                                   "evaluation)")
    progress: bool = _f(True, H_PROGRESS)


@dataclass(kw_only=True)
class TwoStageArgs(ExperimentArgs):
    """Stage 1 on basic-task rows, stage 2 on the target rows (mix, select)."""


    basics: list[str] = _f(BASIC_TASKS, "basic tasks")
    stage1_steps: int = _f(16, "steps on the basic-task rows", min=1)
    stage2_steps: int = _f(16, "steps on the target rows after stage 1", min=1)


# ---------------------------------------------------------------- one per command


@dataclass(kw_only=True)
class ScoreArgs(TaskArgs, ModelArgs):
    """``headway score``: a task's activation pattern."""


    convention: Literal["sample", "paper"] = _f(
        "sample", "sample: each sample's own mean loss (default); paper: the released script's "
                  "batch-mean loss, batch 4, file order")
    method: Literal["gate", "reference"] = _f(
        "gate", "gate: fast path (default); reference: eager attention with Γ.grad")
    batch_size: int | None = _f(None, "rows per batch (default 8; 4 with --convention paper)",
                                min=1)
    per_sample: bool = _f(False, "also store every sample's signed L x H scores")
    per_token: bool = _f(False, "also store each token position's signed share of every "
                                "head's score (rows x tokens x L x H; `headway report` and "
                                "pattern.token_view show it)")
    checkpoint_layers: bool | None = _f(None, "recompute each decoder layer in the backward "
                                              "pass: the activations of about one layer are "
                                              "held instead of all, for about a third more "
                                              "time; the scores are the same (default: on "
                                              "only when weights are offloaded)")
    output: str | None = _f(None, "output path without suffix (default runs/TASK)",
                            aliases=["-o"])
    progress: bool = _f(True, H_PROGRESS)


@dataclass(kw_only=True)
class ShowArgs(Settings):
    """``headway show``: top heads, Gini, CV and a heatmap of a pattern file."""

    pattern: str = _required("pattern file (.safetensors, or the path without suffix)",
                             positional=True)
    top_k: int = _f(10, "heads to list", min=1)
    heatmap: str | None = _f(None, "PNG path (default: beside the pattern)")
    json: bool = _f(False, "print JSON instead of a table")


@dataclass(kw_only=True)
class TasksArgs(Settings):
    """``headway tasks``: list the built-in tasks (no settings)."""


@dataclass(kw_only=True)
class EvalArgs(TaskArgs, ModelArgs):
    """``headway eval``: accuracy and response loss on held-out rows."""


    train_run: list[str] = _f([], "a headway train run directory: fail if an evaluation row was "
                                  "one of its training rows (repeatable)", action="append")
    max_new_tokens: int | None = _f(None, "generation length (default: 1.5 x the longest "
                                          "reference + 8)", min=1)
    batch_size: int = _f(16, "rows per batch", min=1)
    output: str | None = _f(None, "write the result (JSON, with every generation)",
                            aliases=["-o"])
    progress: bool = _f(True, H_PROGRESS)


@dataclass(kw_only=True)
class MixArgs(TwoStageArgs):
    """``headway mix``: a pattern-guided basic-task mixture against a random mixture and
    target-only SFT."""

    output_dir: str = _f("experiments/mix", "experiment folder", aliases=["-o"])
    total: int = _f(128, "mixture size N", min=1)
    delta_rows: int = _f(64, "training rows of each basic task's ΔAP run", min=1)
    delta_steps: int = _f(8, "SFT steps of each ΔAP run", min=1)
    probe_rows: int = _f(32, "held-out probe rows of each basic task", min=1)


@dataclass(kw_only=True)
class SelectArgs(TwoStageArgs):
    """``headway select``: the pool rows whose pattern is most like the target's, against random
    rows."""

    output_dir: str = _f("experiments/select", "experiment folder", aliases=["-o"])
    basics: list[str] = _f(BASIC_TASKS, "tasks the pool is drawn from")
    stage1_steps: int = _f(8, "steps on the basic-task rows", min=1)
    pool_rows: int = _f(64, "pool rows per task", min=1)
    top_n: int = _f(64, "rows selected", min=1)
    similarity: Literal["pearson", "cosine"] = _f(
        "pearson", "similarity of a pool row's per-sample pattern to the target pattern")


@dataclass(kw_only=True)
class ModesArgs(ExperimentArgs):
    """``headway modes``: head-selective SFT against LoRA and full SFT at equal steps."""


    output_dir: str = _f("experiments/modes", "experiment folder", aliases=["-o"])
    steps: int = _f(32, "SFT steps", min=1)
    top_k: int = _f(10, "heads trained", min=1)
    lora_r: int = _f(8, "LoRA rank (alpha = 2r)", min=1)
    lr_lora: float = _f(2e-4, "LoRA learning rate", min=0)
    lr_heads: float = _f(5e-4, "head-selective learning rate", min=0)


@dataclass(kw_only=True)
class AnalyzeArgs(Settings):
    """``headway analyze``: the findings from pattern files and tracked runs."""

    patterns: list[str] = _f([], "pattern files (headway score)", nargs="*")
    runs: list[str] = _f([], "run directories (headway train)", nargs="*")
    complex: str | None = _f(None, "the run (task name or directory) whose ΔAP is fitted on the "
                                   "other runs' ΔAP")
    control: list[str] = _f([], "a run (task name or directory) of an unrelated basic task: it "
                                "enters the --complex fit like a basic task and its α is "
                                "reported apart; the composition is called specific only when "
                                "every basic task's α interval lies above every control's |α| "
                                "(repeatable)", action="append")
    model: str | None = _f(None, "also ablate each pattern's top-k heads on this model (held-out "
                                 "rows of the pattern's task)")
    k: int = _f(10, "top heads", min=1)
    random_draws: int = _f(20, "random head sets, each of k heads outside the top k (the "
                               "interval is their 2.5-97.5th percentile from 20 draws, their "
                               "range below)", min=1)
    bootstrap: int = _f(200, "bootstrap replicates (each resamples probe rows and heads); 0: "
                             "no bootstrap intervals", min=0)
    permutations: int = _f(500, "shuffled-null draws", min=1)
    seed: int = _f(0, "seed of the bootstrap, the shuffled null and the random head sets")
    output_dir: str = _f("analysis", "output folder", aliases=["-o"])
    progress: bool = _f(True, H_PROGRESS)


@dataclass(kw_only=True)
class ReportArgs(Settings):
    """``headway report``: one self-contained HTML file from ``headway analyze`` (or compare)."""

    folder: str = _required("output folder of headway analyze", positional=True)
    output: str | None = _f(None, "HTML path (default FOLDER/report.html)", aliases=["-o"])
    static: bool = _f(False, "the static report: PNG figures inline, no script (default: "
                             "interactive figures, Bokeh's JavaScript inlined; both work "
                             "offline)")


@dataclass(kw_only=True)
class TrajectoryArgs(RowArgs):
    """``headway trajectory``: patterns and parameter change over saved checkpoints (the
    rows settings apply to every probe)."""

    checkpoints: list[str] = _required("a folder of checkpoint-N folders (e.g. a Trainer's "
                                       "output_dir), or model folders", positional=True)
    base: str = _required("the model the checkpoints were trained from")
    probes: list[str] = _required("probe tasks: built-in names, files, folders or hub ids, "
                                  "optionally named as NAME=SOURCE")
    dtype: str = _f("float32", H_DTYPE)
    device: str | None = _f(None, H_DEVICE)
    output_dir: str | None = _f(None, "output folder (default: FOLDER/headway-trajectory)",
                                aliases=["-o"])
    progress: bool = _f(True, H_PROGRESS)


@dataclass(kw_only=True)
class CompareArgs(TaskArgs):
    """``headway compare``: ΔAP between two models on the same rows."""


    model_a: str = _required("model A (alias, folder or hub id)", positional=True)
    model_b: str = _required("model B", positional=True)
    names: list[str] = _f(["A", "B"], "labels of the two models", nargs=2)
    top_k: int = _f(10, "heads compared", min=1)
    dtype: str = _f("float32", H_DTYPE)
    device: str | None = _f(None, H_DEVICE)
    output: str | None = _f(None, "output folder (default runs/compare-TASK)", aliases=["-o"])
    progress: bool = _f(True, H_PROGRESS)


@dataclass(kw_only=True)
class EstimateArgs(Settings):
    """``headway estimate``: predicted peak memory from a model's config alone."""

    model: str = _required("model folder, hub id (its config: cached or reachable) or "
                           "built-in alias; no weights are read", positional=True)
    batch_size: int = _f(8, "rows per batch", min=1)
    length: int = _f(1024, "tokens per row (half of them response)", min=2)
    dtype: Literal["float32", "bfloat16", "float16"] = _f("bfloat16", "weight dtype")
    mixed_precision: str | None = _f(None, "bf16 or fp16: training computes in that precision "
                                           "(autocast) over --dtype weights")
    workloads: list[str] = _f(["score", "score-layers", "full", "lora", "heads"],
                              "what to estimate: score, score-layers (with layer "
                              "checkpointing), and headway train with tracking in mode full, "
                              "lora or heads (AdamW; probes of the same size)")
    gradient_checkpointing: bool = _f(False, "training with gradient checkpointing")
    probe_batch_size: int = _f(8, "training: probe rows scored at once by each record (its "
                                  "activations can exceed the training step's)", min=1)
    probe_checkpoint_layers: bool = _f(False, "training: probe records with layer "
                                              "checkpointing")
    device_memory: list[float] = _f([24.0, 80.0, 141.0], "device sizes (GB) to find the "
                                                         "largest batch for")
    trust_remote_code: bool = _f(False, "allow the model's own config code from the hub")
    json: bool = _f(False, "print JSON instead of a table")
    progress: bool = _f(True, H_PROGRESS)

    def __post_init__(self):
        super().__post_init__()
        unknown = set(self.workloads) - {"score", "score-layers", "full", "lora", "heads"}
        if unknown:
            raise SettingsError(f"--workloads {' '.join(sorted(unknown))}: choose among score, "
                                f"score-layers, full, lora, heads")


@dataclass(kw_only=True)
class DemoArgs(Settings):
    """``headway demo``: the whole story on the built-in model."""

    output_dir: str | None = _f(None, "output folder (default: headway-demo, with --full "
                                      "headway-demo-full)")
    model: str = _f(DEFAULT_MODEL, "built-in alias, local model folder or hub id")
    full: bool = _f(False, "the sizes docs/findings.md is measured on (64 rows a task, 24-step "
                           "fine-tunes at batch 4, 20 random head sets; 7 to 15 minutes on 2 "
                           "CPU cores) instead of the first look (16 rows, 6 steps at batch 2, "
                           "8 sets; under 3 minutes)")
    rows: int | None = _f(None, "rows per task (default: 16, with --full 64)", aliases=["-n"],
                          min=1)
    sft_steps: int | None = _f(None, "steps of each tracked fine-tune (0 skips them; default: "
                                     "6, with --full 24)", min=0)
    seed: int = _f(0, "training seed of the fine-tunes (order of their rows) and seed of the "
                      "analysis (bootstrap, null, random head sets); the rows stay the same")
    progress: bool = _f(True, H_PROGRESS)


def help_group(cls: type, name: str) -> str | None:
    """The ``--help`` section of field ``name`` of ``cls``: the ``_help_group`` of the class
    that first declares it (None: the command's own options)."""
    for klass in reversed(cls.__mro__):
        if name in vars(klass).get("__annotations__", {}):
            return vars(klass).get("_help_group")
    return None
