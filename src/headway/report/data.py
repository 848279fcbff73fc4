"""What a report shows, read back from an analysis folder: ``analysis.json`` and the arrays of
the patterns and runs it names (each task's pattern, each run's pattern before and after, its
ΔAP and its trajectory over steps)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import HeadwayError
from ..patterns import ActivationPattern


@dataclass
class RunArrays:
    """One run's own-task probe: AP ``[L, H]`` at its first and last record, ΔAP, and
    :func:`headway.training.records.run_trajectory`'s output."""

    before: np.ndarray
    after: np.ndarray
    trajectory: dict

    @property
    def delta(self) -> np.ndarray:
        return self.after - self.before


@dataclass
class AnalysisData:
    result: dict  # analysis.json
    patterns: dict[str, np.ndarray] = field(default_factory=dict)  # task -> AP [L, H]
    runs: dict[str, RunArrays] = field(default_factory=dict)


def read_json(path: Path, what: str) -> dict:
    """A JSON object file, or a one-line HeadwayError naming it."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as err:
        raise HeadwayError(f"{path}: not a readable {what} ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})",
                           hint="write it again with the command that made it") from err
    if not isinstance(value, dict):
        raise HeadwayError(f"{path}: not a {what} (expected a JSON object)")
    return value


def load_analysis(folder: str | Path) -> AnalysisData:
    """``folder/analysis.json`` and the arrays of the patterns and runs it names."""
    from ..training.records import run_trajectory

    folder = Path(folder)
    path = folder / "analysis.json"
    if not path.is_file():
        raise FileNotFoundError(f"no analysis.json in {folder}; run `headway analyze` first")
    result = read_json(path, "analysis.json")
    data = AnalysisData(result)
    for name, p in (result.get("patterns") or {}).items():
        data.patterns[name] = ActivationPattern.load(p["path"]).scores.numpy()
    for name, r in (result.get("runs") or {}).items():
        run, probe, steps = Path(r["run"]), r["probe"], r["steps"]
        before, after = (ActivationPattern.load(run / "patterns" / f"step_{s:06d}" / probe)
                         .scores.numpy() for s in (steps[0], steps[-1]))
        data.runs[name] = RunArrays(before, after, run_trajectory(run))
    return data
