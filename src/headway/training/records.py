"""What a tracked run recorded: its ``metrics.jsonl`` (read, truncated on resume) and its
trajectory (probe patterns over steps). Recording is :class:`headway.training.callback.PatternCallback`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..errors import HeadwayError
from ..patterns import ActivationPattern
from ..storage import atomic_write_bytes


class RecordsError(HeadwayError, ValueError):
    """A run's records cannot be read: names the file and line."""


_WARNED: set[str] = set()  # torn files already reported in this process


def record_problem(record) -> str | None:
    """What is wrong with one ``metrics.jsonl`` record, or None: a train-loss line has
    ``kind: "train"`` and an integer ``step`` (an evaluation line, ``kind: "eval"``, too);
    a probe record also a non-empty ``probes`` mapping of probe name to its numbers
    (``loss``)."""
    if not isinstance(record, dict):
        return "not a JSON object"
    if record.get("kind") not in ("train", "eval", "probe"):
        return f"'kind' is {record.get('kind')!r}, not 'train', 'eval' or 'probe'"
    step = record.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return f"'step' is {step!r}, not a step number"
    if record["kind"] == "probe":
        probes = record.get("probes")
        if not isinstance(probes, dict) or not probes:
            return "a probe record without 'probes'"
        for name, values in probes.items():
            if not isinstance(values, dict) or not isinstance(values.get("loss"), (int, float)):
                return f"probe {name!r} has no 'loss' number"
    return None


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``, each checked (:func:`record_problem`). The last
    line cut short (a process killed while writing it: not valid JSON) is dropped with a
    warning; any other bad line is an error naming the file and line."""
    if not path.is_file():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise RecordsError(f"{path}: cannot read it ({err})") from err
    last = max((i for i, line in enumerate(lines, 1) if line.strip()), default=0)
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            if number == last:
                if str(path) not in _WARNED:
                    _WARNED.add(str(path))
                    print(f"headway: warning: {path}:{number}: the last record is cut short "
                          f"(the run was stopped while writing it); it is left out",
                          file=sys.stderr)
                break
            raise RecordsError(f"{path}:{number}: not a JSON record ({err.msg})",
                               hint="the file was edited or damaged; restore it, or delete "
                                    "the run folder and train again") from err
        problem = record_problem(record)
        if problem:
            raise RecordsError(f"{path}:{number}: {problem}",
                               hint="the file was edited or damaged; restore it, or delete "
                                    "the run folder and train again")
        records.append(record)
    return records


def truncate_metrics(path: Path, last_step: int) -> int:
    """Keep only records of steps <= ``last_step`` (atomically); return how many remain."""
    kept = [r for r in read_metrics(path) if r["step"] <= last_step]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return len(kept)


def run_trajectory(run_dir: str | Path) -> dict:
    """Everything recorded in a run, per probe: steps, APs [T, L, H], losses, and
    :func:`headway.stats.dynamics`; plus the mean per-head parameter change per step.
    A run whose records disagree with themselves (probes missing from a record, a pattern
    file missing) is a :class:`RecordsError` naming what."""
    from ..stats import dynamics

    run_dir = Path(run_dir)
    metrics = run_dir / "metrics.jsonl"
    everything = read_metrics(metrics)
    records = [r for r in everything if r["kind"] == "probe"]
    if not records:
        raise RecordsError(f"{metrics}: no probe records (missing, empty, or a run stopped "
                           f"before its first record)")
    steps = [r["step"] for r in records]
    names = list(records[0]["probes"])
    for r in records:
        if list(r["probes"]) != names:
            raise RecordsError(f"{metrics}: the record of step {r['step']} holds probes "
                               f"{list(r['probes'])}, step {steps[0]} holds {names}")
    out = {"steps": steps,
           "param_change": [r.get("param_change", {}).get("attn_mean", float("nan"))
                            for r in records],
           "train": [r for r in everything if r["kind"] == "train"],
           "probes": {}}
    for name in names:
        aps = torch.stack([ActivationPattern.load(
            run_dir / "patterns" / f"step_{s:06d}" / name).scores for s in steps])
        out["probes"][name] = {"patterns": aps, "loss": [r["probes"][name]["loss"]
                                                           for r in records],
                               "gini": [r["probes"][name]["gini"] for r in records],
                               "dynamics": dynamics(steps, aps.numpy())}
    return out
