"""Command line: ``headway score | show | train | eval | mix | select | modes | analyze | report |
trajectory | compare | tasks | demo``. ``headway COMMAND --help`` for details.

Parsing and dispatch only. Each command's flags are the fields of its settings dataclass
(:mod:`headway.settings`), parsed by ``HfArgumentParser``; ``train``'s are
:class:`~headway.training.config.TrainConfig` (TRL's SFTConfig and headway's fields), parsed
by TRL's ``TrlParser`` (also from YAML). With either: ``--max-length`` or ``--max_length``, a
mistyped flag is an error with the closest fields (never an abbreviation). The settings then go to
:func:`headway.commands.run`, which Python can call with the same dataclasses.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import typing

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from .settings import (
    AnalyzeArgs,
    CompareArgs,
    DemoArgs,
    EstimateArgs,
    EvalArgs,
    MixArgs,
    ModesArgs,
    ReportArgs,
    ScoreArgs,
    SelectArgs,
    SettingsError,
    ShowArgs,
    TasksArgs,
    TrajectoryArgs,
    help_group,
)

# name: (settings, one line for `headway --help`, description for `headway NAME --help`)
COMMANDS: dict[str, tuple[type, str, str | None]] = {
    "score": (ScoreArgs, "compute a task's activation pattern (L x H)",
              "Score every attention head on a task: AP[l,h] = mean over samples of "
              "|<Γ, ∂L/∂Γ>|, in one forward + backward pass."),
    "show": (ShowArgs, "top heads, Gini, CV and a heatmap of a pattern file", None),
    "eval": (EvalArgs, "accuracy (greedy generation, 95 %% CI) and response loss on held-out "
                       "rows",
             "Greedy generation on held-out rows, answers checked by reasoning-gym's checkers, "
             "the '#### N' convention (GSM8K format) or exact match; plus the mean "
             "response-token loss. --train-run refuses rows that run trained on."),
    "mix": (MixArgs, "pattern-guided basic-task mixture vs random mixture vs target-only SFT, "
                     "over seeds",
            "α from fitting the target's ΔAP on the basic tasks' ΔAPs (NNLS); n_j = N·α_j/Σα "
            "basic rows; stage 1 on them, stage 2 on the scarce target rows; evaluated on "
            "held-out target rows against a uniform random mixture of the same N and "
            "target-only SFT with the same total steps."),
    "select": (SelectArgs, "train on the pool rows whose pattern is most similar to the "
                           "target's, vs random rows, over seeds",
               "Rank a pool (rows of the basic tasks) by the similarity of each row's "
               "per-sample pattern to the target pattern; stage 1 on the top N, stage 2 on the "
               "target rows; against N random pool rows."),
    "modes": (ModesArgs, "head-selective SFT vs LoRA vs full SFT at equal steps",
              "Train the target's top-k heads only (their q/k/v rows and o columns), LoRA "
              "adapters, or every weight, for the same steps on the same rows; accuracy, "
              "response loss, trainable parameters and time. Each mode uses its own learning "
              "rate."),
    "analyze": (AnalyzeArgs, "the three findings from pattern files and tracked runs: numbers "
                             "(analysis.json) and figures",
                "Concentration and similarity of task patterns; ΔAP, dynamics and "
                "parameter-change concentration of runs; composition of a complex run's ΔAP "
                "from basic runs; top-k vs random-k head ablation."),
    "report": (ReportArgs, "one self-contained HTML file from `headway analyze`, `compare` or "
                           "an experiment: interactive figures that work offline",
               "Heatmaps with hover (layer.head, score, rank, task), a task selector, a step "
               "slider over each run's records, a head's trajectory on click, the composition "
               "fit and the ablation draws; everything inlined, no request leaves the page. "
               "--static: the PNG figures instead."),
    "train": (None, "SFT (full, LoRA or selected heads) recording activation patterns "
                           "and parameter change; `headway train --help` for its fields",
              "Supervised fine-tuning (TRL's SFTTrainer) with activation-pattern tracking. "
              "The settings are TRL's SFTConfig plus headway's own fields; every field can be "
              "set in a YAML file (--config) and overridden by its flag."),
    "trajectory": (TrajectoryArgs, "patterns and parameter change over checkpoints trained "
                                   "with anything",
                   "Score probe tasks at a base model and at each checkpoint (a folder of "
                   "checkpoint-N folders, or a list of model folders; PEFT adapters load onto "
                   "their base) and measure each head's parameter change from the base. Writes "
                   "a run folder that `headway analyze --runs` reads."),
    "compare": (CompareArgs, "ΔAP between two models on the same rows",
                "Score the same rows on two models (e.g. base and instruct, or before and "
                "after your SFT): both patterns, ΔAP = B − A, the change of Gini and CV, the "
                "heads gained and lost in the top-k."),
    "tasks": (TasksArgs, "list the built-in tasks", None),
    "estimate": (EstimateArgs, "predicted peak memory of scoring and training, and the "
                               "largest batch that fits, from a model's config alone",
                 "Counts weights, gradients and optimizer states on the meta device and "
                 "measures activations on the same family shrunk in width (docs: "
                 "headway.estimate); no weights are read."),
    "demo": (DemoArgs, "the whole story on the built-in model: patterns of the built-in tasks, "
                       "four short tracked fine-tunes (one a control), analysis and an HTML "
                       "report", None),
}
_BOOL_WORDS = {"yes", "true", "t", "y", "1", "no", "false", "f", "n", "0"}


class HelpFormatter(argparse.HelpFormatter):
    """A flag's help, then its default where the help does not already say it; flags in their
    hyphen spelling only (the epilog says that underscores work too)."""

    def _format_action_invocation(self, action):
        shown = [o for o in action.option_strings if "_" not in o]
        if shown and len(shown) < len(action.option_strings):
            action = copy.copy(action)
            action.option_strings = shown
        return super()._format_action_invocation(action)

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.nargs == 0 or action.default in (None, [],
                                                                         argparse.SUPPRESS):
            return text
        return text + " (default: %(default)s)"


class SettingsParser(HfArgumentParser):
    """``HfArgumentParser`` for the settings of :mod:`headway.settings`. Besides what it reads
    from a field (type, default, ``help``, ``aliases``): ``positional`` fields, ``nargs`` and
    ``action`` from the metadata, a ``--help`` section per group of shared fields, and a
    switch such as ``--per-sample`` takes a value (true / false) only when one follows, so it
    can stand before a positional argument."""

    def __init__(self, dataclass_types=None, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(dataclass_types, **kwargs)
        if any("_" in o for a in self._actions for o in a.option_strings):
            self.epilog = ("Every --flag-name can also be written --flag_name; a switch (shown "
                           "with [{true,false}]) can also take true or false.")

    def _add_dataclass_arguments(self, dtype):
        hints, groups = typing.get_type_hints(dtype), {}
        for f in dataclasses.fields(dtype):
            name = help_group(dtype, f.name)
            if name and name not in groups:
                groups[name] = self.add_argument_group(name)
            self._add_field(groups.get(name, self), f, hints[f.name])

    def _add_field(self, where, f: dataclasses.Field, kind) -> None:
        meta = dict(f.metadata)
        meta["help"] = meta.get("help", "").replace("%", "%%")  # plain text, not a % format
        positional, nargs, action, _ = (meta.pop(k, None) for k in ("positional", "nargs",
                                                                   "action", "min"))
        listed = typing.get_origin(kind) is list
        if positional:
            where.add_argument(f.name, nargs=nargs or ("+" if listed else None), help=meta["help"])
            return
        if action == "append":
            flags = dict.fromkeys([f"--{f.name}", f"--{f.name.replace('_', '-')}"])
            where.add_argument(*flags, *meta.get("aliases", []), action="append",
                               type=typing.get_args(kind)[0], default=f.default_factory(),
                               help=meta["help"])
        else:
            plain = dataclasses.field(default=f.default, default_factory=f.default_factory,
                                      metadata=meta)
            plain.name, plain.type = f.name, kind
            HfArgumentParser._parse_dataclass_field(where, plain)
        added = [a for a in self._actions if a.dest == f.name]
        for a in added:  # short options, then --hyphen-spelling, then --underscore_spelling
            a.option_strings.sort(key=lambda o: (o.startswith("--"), "_" in o))
            if a.type is string_to_bool:
                a.metavar = "{true,false}"
            elif a.nargs == 0 and f.default is True:  # --no-FIELD
                a.help = f"the same as --{f.name.replace('_', '-')} false"
        if nargs is not None:
            added[0].nargs = nargs

    def parse_known_args(self, args=None, namespace=None):
        return super().parse_known_args(self._bare_switches(args), namespace)

    def _bare_switches(self, args):
        """``--switch WORD`` where WORD is no true / false: ``--switch=true WORD``."""
        args = list(sys.argv[1:] if args is None else args)
        switches = {o for a in self._actions if a.nargs == "?" and a.type is string_to_bool
                    for o in a.option_strings}
        for i, arg in enumerate(args[:-1]):
            if arg == "--":
                break
            following = args[i + 1]
            if arg in switches and not following.startswith("-") and \
                    following.lower() not in _BOOL_WORDS:
                args[i] = f"{arg}=true"
        return args


def command_parser(name: str) -> SettingsParser:
    """The parser of ``headway NAME`` (not train)."""
    settings, _, description = COMMANDS[name]
    return SettingsParser(settings, prog=f"headway {name}", description=description)


def build_parser() -> argparse.ArgumentParser:
    """``headway``: ``--debug`` and the commands (``train`` parses its own flags)."""
    parser = argparse.ArgumentParser(
        prog="headway",
        description="Attention-head activation patterns of language models (Zhao et al., "
                    "ACL 2025): which heads a task relies on.")
    parser.add_argument("--debug", action="store_true",
                        help="show Python tracebacks instead of one-line errors (also "
                             "HEADWAY_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=SettingsParser)
    for name, (settings, help, description) in COMMANDS.items():
        if settings is None:  # train: TRL's parser (headway.training.config)
            sub.add_parser(name, add_help=False, help=help)
        else:
            sub.add_parser(name, dataclass_types=settings, help=help, description=description)
    return parser


def _unknown_flags(parser, remaining: list[str], command: str):
    """An error for flags no field has, with the closest flags as a hint (spelled as the
    mistyped flag is)."""
    import difflib

    known = [o for action in parser._actions for o in action.option_strings]
    flags = [a for a in remaining if a.startswith("-")] or remaining
    typed = flags[0].split("=")[0]
    spell = lambda o: o[:2] + (o[2:].replace("-", "_") if "_" in typed  # noqa: E731
                               else o[2:].replace("_", "-"))
    close = list(dict.fromkeys(spell(o) for o in difflib.get_close_matches(typed, known, n=4)))
    return SettingsError(f"unknown argument{'s' if len(flags) > 1 else ''} {' '.join(flags)}",
                         hint=(f"did you mean {' or '.join(close)}? " if close else "")
                         + f"`headway {command} --help` lists every field")


def parse_train(argv: list[str]):
    """``headway train``: a :class:`~headway.training.config.TrainConfig` from flags and
    ``--config`` YAML through TRL's parser (:func:`~headway.training.config.parse_train_config`)."""
    from .training.config import parse_train_config

    return parse_train_config(argv, description=COMMANDS["train"][2])


def parse_command(name: str, argv: list[str]):
    """The settings of ``headway NAME ARGV``."""
    if name == "train":
        return parse_train(argv)
    parser = command_parser(name)
    args, remaining = parser.parse_args_into_dataclasses(
        args=argv, look_for_args_file=False, return_remaining_strings=True)
    if remaining:
        raise _unknown_flags(parser, remaining, name)
    return args


def parse(argv: list[str]):
    """The settings of ``headway ARGV``: a dataclass of :mod:`headway.settings`, or a
    TrainConfig (TRL's SFTConfig and headway's fields). ``--help``, a missing or unknown command and bad values exit (argparse)."""
    if argv and argv[0] in COMMANDS:
        return parse_command(argv[0], argv[1:])
    command = build_parser().parse_args(argv).command
    return parse_command(command, argv[argv.index(command) + 1:])


def _debug(argv: list[str]) -> bool:
    """``--debug`` anywhere before ``--``, or ``HEADWAY_DEBUG`` set to 1, true, yes or on:
    show tracebacks."""
    import os

    flag = os.environ.get("HEADWAY_DEBUG", "").strip().lower()
    return "--debug" in argv or flag in ("1", "true", "yes", "on")


def _output_of(args) -> str | None:
    """The folder or file a command writes, as its settings name it."""
    for name in ("output_dir", "output", "folder"):
        value = getattr(args, name, None)
        if value:
            return str(value)
    return None


def main(argv: list[str] | None = None) -> int:
    """Run one command. A :class:`~headway.errors.HeadwayError` (bad input or setting, a full
    disk, a folder in use) ends in one ``headway: error:`` line (and a ``hint:`` line) with
    exit 2; Ctrl-C in one line saying what was kept, exit 130; SIGTERM likewise, exit 143.
    ``--debug`` (or ``HEADWAY_DEBUG=1``) shows tracebacks instead."""
    from .commands import run
    from .errors import HeadwayError
    from .stopping import Terminated, handling_sigterm
    from .storage import is_no_space, no_space

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = _debug(argv)
    argv = [a for a in argv if a != "--debug"]
    args = None
    try:
        with handling_sigterm():
            args = parse(argv)
            return run(args)
    except HeadwayError as err:
        if debug:
            raise
        _print_error(err)
        return 2
    except FileNotFoundError as err:
        if debug:
            raise
        print(f"headway: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        if debug:
            raise
        how = ("stopped (SIGTERM)" if isinstance(err, Terminated) else "interrupted")
        said = f" {err}" if str(err) else ""
        print(f"\nheadway: {how};{said} finished work is kept (scoring: OUT.partial.safetensors, "
              "training: its checkpoints and records, analyze: OUT/.ablation). Run the same "
              "command again to resume.", file=sys.stderr)
        return 143 if isinstance(err, Terminated) else 130
    except Exception as err:
        if is_no_space(err) and not debug:
            _print_error(no_space(_output_of(args) or getattr(err, "filename", None) or "."))
            return 2
        from .distributed import launched_distributed

        if debug or not launched_distributed():
            raise
        # print now: a traceback held until exit keeps the process group (and its threads)
        # alive past shutdown(), which can abort the process instead of exiting
        import traceback

        traceback.print_exc()
        return 1
    finally:
        from .distributed import shutdown

        shutdown()


def _print_error(err) -> None:
    print(f"headway: error: {err}", file=sys.stderr)
    if getattr(err, "hint", None):
        print(f"hint: {err.hint}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
