"""A tracked run read back as an object: :func:`load_run` of a folder written by ``headway
train``, :class:`~headway.training.callback.PatternCallback` or ``headway trajectory``."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import HeadwayError
from ..patterns import ActivationPattern
from .records import RecordsError, read_metrics


def run_folder(path: str | Path) -> Path:
    """The folder holding a run's records: ``path`` itself (``headway train``, ``headway
    trajectory``), or ``path/headway`` (a Trainer's output_dir with
    :class:`~headway.training.callback.PatternCallback`)."""
    path = Path(path)
    for candidate in (path, path / "headway"):
        if (candidate / "manifest.json").is_file():
            return candidate
    raise HeadwayError(f"{path}: no manifest.json here or in {path / 'headway'}: not a run "
                       f"folder of headway train, PatternCallback or headway trajectory")


def read_manifest(run: Path) -> dict:
    """A run's ``manifest.json``, or one line naming it when it cannot be read."""
    path = Path(run) / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise RecordsError(f"{path}: not a readable manifest ({type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''})",
                           hint="the file was cut or edited; train the run again") from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("train_task"), dict):
        raise RecordsError(f"{path}: not a run manifest (no 'train_task')")
    return manifest


@dataclass
class Run:
    """What a run recorded.

    ``steps``: the steps of its probe records; ``patterns[probe][step]``: each probe's
    :class:`~headway.patterns.ActivationPattern` (``[L, H]``, with per-sample scores);
    ``param_change[step]``: the per-head relative parameter change (``q``, ``k``, ``v``,
    ``o``, ``attn`` ``[L, H]``, ``mlp`` ``[L]``, ``mlp_experts`` ``[L, E]``) where recorded;
    ``metrics``: ``metrics.jsonl`` as a pandas DataFrame, one row per record, a probe's
    numbers in columns ``probes/<probe>/<number>``; ``manifest``: ``manifest.json``.
    """

    path: Path
    manifest: dict
    steps: list[int]
    patterns: dict[str, dict[int, ActivationPattern]]
    param_change: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    records: list[dict] = field(default_factory=list, repr=False)

    @property
    def probes(self) -> list[str]:
        return list(self.patterns)

    @property
    def train_task(self) -> str:
        """The probe that is the run's own training task."""
        name = self.manifest["train_task"].get("name")
        return name if name in self.patterns else self.probes[0]

    @property
    def metrics(self):
        """``metrics.jsonl`` as a pandas DataFrame (one row per record)."""
        import pandas as pd

        return pd.json_normalize(self.records, sep="/")

    def trajectory(self, probe: str | None = None) -> torch.Tensor:
        """``[T, L, H]``: the probe's pattern at each recorded step."""
        probe = probe or self.train_task
        return torch.stack([self.patterns[probe][s].scores for s in self.steps])

    def delta(self, probe: str | None = None) -> ActivationPattern:
        """ΔAP of the probe: its last record minus its first."""
        probe = probe or self.train_task
        return self.patterns[probe][self.steps[-1]] - self.patterns[probe][self.steps[0]]

    def __repr__(self) -> str:
        return (f"<Run {self.path}: {self.manifest.get('mode', '?')} on "
                f"{self.manifest['train_task'].get('name')}, steps {self.steps}, probes "
                f"{self.probes}, status {self.manifest.get('status')}>")


def load_run(path: str | Path) -> Run:
    """Read a run folder (or a Trainer's output_dir holding ``headway/``) as a :class:`Run`;
    its records are checked as they are read (:func:`~.records.read_metrics`)."""
    from safetensors.torch import load_file

    folder = run_folder(path)
    manifest = read_manifest(folder)
    records = read_metrics(folder / "metrics.jsonl")
    probe_records = [r for r in records if r["kind"] == "probe"]
    if not probe_records:
        raise RecordsError(f"{folder / 'metrics.jsonl'}: no probe records")
    steps = [r["step"] for r in probe_records]
    patterns: dict[str, dict[int, ActivationPattern]] = {}
    for name in probe_records[0]["probes"]:
        patterns[name] = {s: ActivationPattern.load(folder / "patterns" / f"step_{s:06d}" / name)
                          for s in steps}
    change = {}
    for r in probe_records:
        file = folder / "param_change" / f"step_{r['step']:06d}.safetensors"
        if "param_change" in r and file.is_file():
            change[r["step"]] = load_file(str(file))
    return Run(path=folder, manifest=manifest, steps=steps, patterns=patterns,
               param_change=change, records=records)
