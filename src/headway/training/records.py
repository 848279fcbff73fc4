"""What a tracked run recorded: its ``metrics.jsonl`` (read, truncated on resume) and its
trajectory (probe patterns over steps). Recording is :class:`headway.training.callback.PatternCallback`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import HeadwayError
from ..patterns import ActivationPattern
from ..storage import atomic_write_bytes


class RecordsError(HeadwayError, ValueError):
    """A run's records cannot be read: names the file and line."""


def read_metrics(path: Path) -> list[dict]:
    """The records of a ``metrics.jsonl``. A torn last line (a process killed while writing
    it) is ignored; a bad line elsewhere is an error naming the file and line."""
    if not path.is_file():
        return []
    lines = path.read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise RecordsError(f"{path}:{number}: not a JSON record: {err}",
                               hint="the file was edited or damaged; restore it, or delete the "
                                    "run folder and train again") from err
    return records


def truncate_metrics(path: Path, last_step: int) -> int:
    """Keep only records of steps <= ``last_step`` (atomically); return how many remain."""
    kept = [r for r in read_metrics(path) if r["step"] <= last_step]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return len(kept)


def run_trajectory(run_dir: str | Path) -> dict:
    """Everything recorded in a run, per probe: steps, APs [T, L, H], losses, and
    :func:`headway.analysis.stats.dynamics`; plus the mean per-head parameter change per step."""
    from ..stats import dynamics

    run_dir = Path(run_dir)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "probe"]
    if not records:
        raise FileNotFoundError(f"no probe records in {run_dir / 'metrics.jsonl'}")
    steps = [r["step"] for r in records]
    out = {"steps": steps,
           "param_change": [r.get("param_change", {}).get("attn_mean", float("nan"))
                            for r in records],
           "train": [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "train"],
           "probes": {}}
    for name in records[0]["probes"]:
        aps = torch.stack([ActivationPattern.load(
            run_dir / "patterns" / f"step_{s:06d}" / name).scores for s in steps])
        out["probes"][name] = {"patterns": aps, "loss": [r["probes"][name]["loss"]
                                                           for r in records],
                               "gini": [r["probes"][name]["gini"] for r in records],
                               "dynamics": dynamics(steps, aps.numpy())}
    return out
