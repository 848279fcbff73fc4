"""The commands of ``headway``: each takes its settings (a dataclass of :mod:`headway.settings`,
or :class:`~headway.training.config.TrainConfig` for ``train``), does the work through the
library, prints what it did and returns the exit status. :mod:`headway.cli` parses flags into
the settings and calls :func:`run`; Python can do the same::

    from headway.commands import run
    from headway.settings import ScoreArgs

    run(ScoreArgs(task="arithmetic", rows=8))

or call a command directly: ``headway.commands.scoring.score(ScoreArgs(...))``.

| module | commands |
|---|---|
| ``scoring`` | score, show, tasks |
| ``runs`` | train, trajectory |
| ``analysis`` | analyze, report, compare |
| ``experiments`` | eval, mix, select, modes |
| ``demo`` | demo |
| ``estimate`` | estimate |
"""

from __future__ import annotations

from importlib import import_module

# settings class name -> "module:function"
COMMANDS = {
    "ScoreArgs": "scoring:score",
    "ShowArgs": "scoring:show",
    "TasksArgs": "scoring:tasks",
    "TrainConfig": "runs:train",
    "TrajectoryArgs": "runs:trajectory",
    "AnalyzeArgs": "analysis:analyze",
    "ReportArgs": "analysis:report",
    "CompareArgs": "analysis:compare",
    "EvalArgs": "experiments:evaluate",
    "MixArgs": "experiments:mix",
    "SelectArgs": "experiments:select",
    "ModesArgs": "experiments:modes",
    "DemoArgs": "demo:demo",
    "EstimateArgs": "estimate:estimate",
}


def command(settings_type: type):
    """The command function that takes settings of ``settings_type``."""
    for klass in settings_type.__mro__:
        if klass.__name__ in COMMANDS:
            module, name = COMMANDS[klass.__name__].split(":")
            return getattr(import_module(f".{module}", __name__), name)
    raise TypeError(f"{settings_type.__name__} are not the settings of a headway command")


def run(args) -> int:
    """Run the command whose settings ``args`` are; return its exit status."""
    return command(type(args))(args)
