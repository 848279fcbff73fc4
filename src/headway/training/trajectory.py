"""Patterns over saved checkpoints, trained with anything: ``headway trajectory``.

Given a base model (step 0) and checkpoints (a folder of ``checkpoint-*`` folders, as the
Hugging Face Trainer, TRL, Axolotl or LLaMA-Factory write them, or an explicit list of model
folders; PEFT adapter checkpoints load onto their base), score each probe on each checkpoint
and measure each head's parameter change from the base. The result is a run folder in the
format :class:`~headway.training.callback.PatternCallback` writes (``manifest.json``,
``metrics.jsonl``, ``patterns/step_*/``, ``param_change/``), so ``headway analyze --runs`` and
``headway report`` read it. A rerun skips the checkpoints already recorded.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import HeadwayError
from ..locks import owning
from .run import load_run

_STEP = re.compile(r"checkpoint-(\d+)$")


def checkpoint_steps(checkpoints) -> list[tuple[int, Path]]:
    """``[(step, folder), ...]`` sorted by step. ``checkpoints``: a folder holding
    ``checkpoint-N`` folders, or a list of model folders. The step is the Trainer's
    ``global_step`` (``trainer_state.json``), else the N of ``checkpoint-N``."""
    if isinstance(checkpoints, (str, Path)):
        folder = Path(checkpoints)
        if not folder.is_dir():
            raise HeadwayError(f"{folder}: no such folder of checkpoints")
        paths = [p for p in folder.iterdir() if p.is_dir() and _STEP.search(p.name)]
        if not paths:
            raise HeadwayError(f"{folder}: no checkpoint-N folders in it",
                               hint="give the Trainer's output_dir, or a list of folders")
    else:
        paths = [Path(p) for p in checkpoints]
    out = []
    for path in paths:
        if not path.is_dir():
            raise HeadwayError(f"{path}: no such checkpoint folder")
        state = path / "trainer_state.json"
        match = _STEP.search(path.name)
        try:
            step = json.loads(state.read_text()).get("global_step") if state.is_file() else None
        except ValueError:  # torn by a kill: the folder name still tells
            step = None
        if step is None and match:
            step = int(match.group(1))
        elif step is None:
            raise HeadwayError(f"{path}: cannot tell its step (no trainer_state.json and not "
                               f"named checkpoint-N)")
        out.append((int(step), path))
    steps = [s for s, _ in out]
    if len(set(steps)) != len(steps) or 0 in steps:
        raise HeadwayError(f"checkpoints must have distinct steps above 0 (got {sorted(steps)})")
    return sorted(out)


def trajectory(checkpoints, base: str, probes: dict, *, output_dir=None,
               template: str | None = None, max_length: int = 1024,
               overlong: str = "truncate", batch_size: int = 8, dtype: str = "float32",
               device=None, progress: bool = True):
    """Record the probes' patterns and the per-head parameter change at ``base`` (step 0) and
    at every checkpoint, in a run folder (default ``<checkpoints>/headway-trajectory``);
    return it as a :class:`~headway.training.run.Run` (``.path`` is the folder).

    ``base``: the model the checkpoints were trained from (alias, folder or hub id).
    ``probes``: ``{name: data}``, data as for :func:`headway.score`. ``template``: None
    follows each probe's columns, as :func:`headway.score` and the callback do.
    """
    from tqdm.auto import tqdm

    from ..models.loading import load_model
    from ..storage import atomic_write_json, check_writable
    from .callback import PatternCallback
    from .records import read_metrics
    from .weight_change import start_weights

    steps = checkpoint_steps(checkpoints)
    if output_dir is None:
        if not isinstance(checkpoints, (str, Path)):
            raise HeadwayError("trajectory over a list of checkpoints needs output_dir")
        output_dir = Path(checkpoints) / "headway-trajectory"
    out = check_writable(output_dir)
    with owning(out, f"trajectory folder {out}"):
        start = load_model(base, dtype=dtype, device=device)
        recorder = PatternCallback(probes, start.tokenizer, every=0, template=template,
                                   max_length=max_length, overlong=overlong, batch_size=batch_size,
                                   manifest=False)
        recorder.prepare(out, start.tokenizer, start.describe(),
                         initial=start_weights(start.model))
        key = {"base": start.describe(), "probes": [p.task for p in recorder.probes],
               "settings": recorder.settings, "checkpoints": [str(p) for _, p in steps]}
        manifest_file = out / "manifest.json"
        old = json.loads(manifest_file.read_text()) if manifest_file.is_file() else {}
        if old.get("key") == key:  # the same trajectory: keep what it recorded
            recorder.done = {r["step"] for r in read_metrics(out / "metrics.jsonl")
                             if r["kind"] == "probe"}
            recorder._load_first()
        else:
            (out / "metrics.jsonl").unlink(missing_ok=True)
        atomic_write_json(manifest_file, {
            "kind": "headway.TrainRun", "format_version": 1, "status": "running", "key": key,
            "written_by": "headway.trajectory", "model": start.describe(),
            "mode": "lora" if any((p / "adapter_config.json").is_file() for _, p in steps)
            else "full", "train_task": {"name": recorder.probes[0].name},
            "probes": [{**p.task, "n": len(p.encoded)} for p in recorder.probes],
            "checkpoints": [{"step": s, "path": str(p)} for s, p in steps]})
        bar = tqdm(total=len(steps) + 1, desc="trajectory", unit="checkpoint",
                   disable=not progress, dynamic_ncols=True)
        with bar:
            for step, path in [(0, None), *steps]:
                if step not in recorder.done:
                    lm = start if path is None else load_model(
                        str(path), dtype=dtype, device=device, tokenizer=start.tokenizer)
                    recorder.model_info = lm.describe()
                    recorder.record(lm.model, step)
                    del lm
                bar.update(1)
            atomic_write_json(manifest_file, {**json.loads(manifest_file.read_text()),
                                              "status": "finished",
                                              "global_step": steps[-1][0]})
    return load_run(out)
