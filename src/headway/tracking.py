"""Record activation patterns and parameter change while a model trains (a TrainerCallback).

At step 0, every ``every`` optimizer steps and at the end, for each probe task (held-out rows,
the same rows every time) it writes ``patterns/step_SSSSSS/PROBE.{safetensors,json}`` and
``param_change/step_SSSSSS.safetensors`` (tensors q, k, v, o, attn [L, H] and mlp [L]: relative
Frobenius change from the weights at step 0), and appends one line per record to
``metrics.jsonl``. Training-loss lines from the Trainer's logs go to the same file.

Every process takes part in scoring the probes (the rows are split between them); only the
main process writes. Records are keyed by step, so a resumed run drops the lines of
steps after its checkpoint (they belong to the abandoned trajectory) and writes them anew.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from .analysis import concentration
from .heads import HeadWeights
from .patterns import ActivationPattern, pattern_meta
from .scoring import score_encoded
from .storage import atomic_save_tensors, atomic_write_bytes


@dataclass
class Probe:
    """A probe task, already encoded: name, rows (``Encoded``), the task's record
    (:func:`headway.tasks.task_record`) and the scoring settings (convention, method,
    batch_size, template, max_length, overlong)."""

    name: str
    encoded: list
    task: dict
    settings: dict


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
            raise ValueError(f"{path}:{number}: not a JSON record: {err}") from err
    return records


def truncate_metrics(path: Path, last_step: int) -> int:
    """Keep only records of steps <= ``last_step`` (atomically); return how many remain."""
    kept = [r for r in read_metrics(path) if r["step"] <= last_step]
    atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
    return len(kept)


class PatternTracker(TrainerCallback):
    """Records probe APs and per-head parameter change during training.

    ``initial`` holds the step-0 weights (see :meth:`HeadWeights.snapshot`); pass the snapshot
    of the freshly loaded model so a resumed run measures change from the true start.
    """

    def __init__(self, run_dir: Path, probes: list[Probe], every: int, pad_id: int,
                 initial: dict[str, torch.Tensor], model_meta: dict, is_main: bool = True):
        self.run_dir = Path(run_dir)
        self.probes = probes
        self.every = every
        self.pad_id = pad_id
        self.initial = initial
        self.model_meta = model_meta
        self.is_main = is_main
        self.metrics_path = self.run_dir / "metrics.jsonl"
        self.seconds = 0.0  # time spent recording, for the overhead figure
        self.done = {r["step"] for r in read_metrics(self.metrics_path) if r["kind"] == "probe"}

    # -- Trainer events -----------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:
            self.record(model, 0)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every and state.global_step % self.every == 0:
            self.record(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.every or state.global_step % self.every:
            self.record(model, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.is_main and logs and "loss" in logs:
            self._append({"kind": "train", "step": state.global_step,
                          **{k: v for k, v in logs.items() if isinstance(v, (int, float))}})

    # -- recording ------------------------------------------------------------------------
    def _append(self, record: dict) -> None:
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()

    def record(self, model, step: int) -> dict | None:
        """Score every probe (all processes share the work) and, on the main process, write
        the patterns, the parameter change and a metrics line."""
        if step in self.done:  # e.g. the end of a run resumed from its final checkpoint
            return None
        self.done.add(step)
        start = time.perf_counter()
        was_training = model.training
        model.eval()
        weights = HeadWeights(model)
        entry = {"kind": "probe", "step": step, "probes": {}}
        tag = f"step_{step:06d}"
        for probe in self.probes:
            out = score_encoded(model, probe.encoded, weights.n_layers, weights.n_heads,
                                self.pad_id, batch_size=probe.settings["batch_size"],
                                progress=False)
            scores = out["per_sample"].abs().mean(0)
            meta = pattern_meta(self.model_meta, probe.task,
                                probe.settings, n_samples=len(probe.encoded),
                                mean_loss=float(out["loss"].mean()), step=step)
            if self.is_main:
                pattern = ActivationPattern(scores=scores, meta=meta, loss=out["loss"],
                                            per_sample=out["per_sample"])
                pattern.save(self.run_dir / "patterns" / tag / probe.name)
            entry["probes"][probe.name] = {"loss": meta["mean_loss"],
                                           **concentration(scores.numpy())}
        if not self.is_main:
            if was_training:
                model.train()
            return None
        change = weights.relative_change(self.initial)
        atomic_save_tensors(self.run_dir / "param_change" / f"{tag}.safetensors", change)
        entry["param_change"] = {"attn_mean": float(change["attn"].nanmean()),
                                 "attn_max": float(change["attn"].nan_to_num(0).max()),
                                 "mlp_mean": float(change["mlp"].mean())}
        if was_training:
            model.train()
        elapsed = time.perf_counter() - start
        self.seconds += elapsed
        entry["record_s"] = round(elapsed, 3)
        self._append(entry)
        return entry


def run_trajectory(run_dir: str | Path) -> dict:
    """Everything recorded in a run, per probe: steps, APs [T, L, H], losses, and
    :func:`headway.analysis.dynamics`; plus the mean per-head parameter change per step."""
    from .analysis import dynamics

    run_dir = Path(run_dir)
    records = [r for r in read_metrics(run_dir / "metrics.jsonl") if r["kind"] == "probe"]
    if not records:
        raise FileNotFoundError(f"no probe records in {run_dir / 'metrics.jsonl'}")
    steps = [r["step"] for r in records]
    out = {"steps": steps, "param_change": [r["param_change"]["attn_mean"] for r in records],
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
