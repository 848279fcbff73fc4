"""The settings dataclasses of the commands: flags in either spelling, the same dataclasses
from Python, --help, and mistyped flags."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import torch

from headway.cli import COMMANDS, command_parser, main, parse
from headway.commands import run
from headway.commands.scoring import score, tasks
from headway.patterns import ActivationPattern
from headway.settings import (
    CompareArgs,
    EvalArgs,
    ScoreArgs,
    SettingsError,
    ShowArgs,
    TasksArgs,
)

SETTINGS = {name: entry[0] for name, entry in COMMANDS.items()
            if entry[0] is not None}  # train: TRL's parser (test_training.py)


def _value(f: dataclasses.Field, kind) -> tuple[list[str], object]:
    """Command-line words for field ``f`` and the value they must parse to (not the default)."""
    if typing.get_origin(kind) is typing.Union or type(None) in typing.get_args(kind):
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is typing.Literal:
        choice = [c for c in typing.get_args(kind) if c != f.default][0]
        return [choice], choice
    if typing.get_origin(kind) is list:
        item = typing.get_args(kind)[0]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else []
        if item in (int, float):
            values = [item(7), item(8)]
        else:  # values the field accepts, other than the default
            values = default[::-1][:2] if len(default) > 1 else ["first", "second"]
        return [str(v) for v in values], values
    if kind is bool:
        return [str(not f.default).lower()], not f.default
    if kind is int:
        value = (f.default if isinstance(f.default, int) else 0) + 3
        return [str(value)], value
    if kind is float:
        return ["0.25"], 0.25
    return ["some-value"], "some-value"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_hyphen_and_underscore_spellings_give_the_same_settings(name):
    cls = SETTINGS[name]
    hints = typing.get_type_hints(cls)
    positional, spelled, expected = [], {"-": [], "_": []}, {}
    for f in dataclasses.fields(cls):
        assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
        words, expected[f.name] = _value(f, hints[f.name])
        if f.metadata.get("positional"):
            positional += words
            continue
        for sep in spelled:
            flag = "--" + f.name.replace("_", sep)
            if f.metadata.get("action") == "append":  # repeated flag, one value each
                spelled[sep] += [a for w in words for a in (flag, w)]
            else:
                spelled[sep] += [flag, *words]
    hyphen = parse([name, *positional, *spelled["-"]])
    underscore = parse([name, *spelled["_"], *positional])
    assert type(hyphen) is cls and hyphen == underscore
    assert dataclasses.asdict(hyphen) == expected


def test_short_options_switches_and_positionals_as_before():
    args = parse(["score", "--task", "t", "-n", "5", "-o", "out", "--per-sample", "--no-progress",
                  "--trust-remote-code"])
    assert args == ScoreArgs(task="t", rows=5, output="out", per_sample=True, progress=False,
                             trust_remote_code=True)
    assert parse(["score", "--task", "t", "--per_sample", "false", "--progress", "false"]) == \
        ScoreArgs(task="t", progress=False)
    # a switch before a positional argument does not take it as its value
    assert parse(["show", "--json", "p.safetensors"]) == ShowArgs(pattern="p.safetensors", json=True)
    assert parse(["compare", "--shuffle", "a", "b", "--task", "t", "--names", "x", "y"]) == \
        CompareArgs(model_a="a", model_b="b", task="t", shuffle=True, names=["x", "y"])
    assert parse(["eval", "--task", "t", "--train-run", "r1", "--train_run", "r2"]).train_run == \
        ["r1", "r2"]
    assert parse(["trajectory", "c1", "c2", "--base", "m", "--probes", "p"]).checkpoints == \
        ["c1", "c2"]
    assert parse(["analyze", "--patterns", "--runs", "r"]).patterns == []
    assert parse(["tasks"]) == TasksArgs()
    from headway.training.config import TrainConfig

    assert isinstance(parse(["train", "--max_steps", "3"]), TrainConfig)


def test_python_settings_name_the_field_of_a_bad_choice():
    with pytest.raises(SettingsError, match="'overlong'"):
        EvalArgs(task="t", overlong="cut")


@pytest.mark.parametrize("name", [None, *COMMANDS])
def test_every_help_exits_0(name, capsys):
    with pytest.raises(SystemExit) as exit:
        main([name, "--help"] if name else ["--help"])
    assert exit.value.code == 0
    out = capsys.readouterr().out
    if name is None:
        assert all(command in out for command in COMMANDS)
    elif name != "train":
        for f in dataclasses.fields(SETTINGS[name]):
            flag = f.name if f.metadata.get("positional") else "--" + f.name.replace("_", "-")
            assert flag in out


def test_unknown_flag_is_an_error_with_a_suggestion_and_no_abbreviation(capsys):
    assert main(["score", "--task", "arithmetic", "--max-lenght", "8"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "headway: error: unknown argument --max-lenght"
    assert err[1].startswith("hint: did you mean --max-length?")
    assert main(["score", "--task", "arithmetic", "--per_sampel"]) == 2
    assert "did you mean --per_sample" in capsys.readouterr().err  # as the flag was typed
    with pytest.raises(SystemExit):  # --max-len is not taken for --max-length ...
        command_parser("score").parse_args(["--task", "t", "--max-len", "8"])
    capsys.readouterr()
    assert main(["mix", "--seed", "1"]) == 2  # ... nor --seed for --seeds
    assert "did you mean --seeds?" in capsys.readouterr().err


def test_score_and_tasks_from_python_settings(llama_dir, tmp_path, capsys):
    out = tmp_path / "python"
    args = ScoreArgs(model=str(llama_dir), task="arithmetic", rows=6, per_sample=True,
                     output=str(out), progress=False)
    assert score(args) == 0
    assert "scored 6 rows" in capsys.readouterr().out
    assert main(["score", "--model", str(llama_dir), "--task", "arithmetic", "-n", "6",
                 "--per-sample", "-o", str(tmp_path / "cli"), "--no-progress"]) == 0
    a, b = ActivationPattern.load(out), ActivationPattern.load(tmp_path / "cli")
    assert torch.equal(a.per_sample, b.per_sample)
    assert run(TasksArgs()) == 0 and tasks(TasksArgs()) == 0
    assert "arithmetic" in capsys.readouterr().out
