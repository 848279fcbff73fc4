"""``headway analyze``: pattern files and tracked runs -> the numbers of the three findings.

Writes ``OUT/analysis.json`` (every number, and the paths of the patterns and runs it read);
the figures and the HTML report are drawn from it by :mod:`headway.report`.

- patterns (``--patterns``): concentration and top heads of each, heatmaps, task x task
  similarity (Pearson, Spearman, cosine, top-10 Jaccard) with a clustering order;
- runs (``--runs``): for each run its own task's probe before / after / ΔAP, the dynamics of
  the trajectory, and how concentrated the per-head parameter change is (and its rank
  correlation with |ΔAP|);
- composition (``--complex RUN``): ΔAP of that run's task fitted on the other runs' ΔAP
  (least squares and non-negative), bootstrap intervals over probe samples and heads,
  leave-one-out, a shuffled-heads null, the gain over the shared-component baseline and the
  α of unrelated ``--control`` runs (:mod:`headway.analysis.composition`);
- faithfulness (``--model``): loss increase when ablating each pattern's top-k heads vs k random
  heads drawn from the other heads (a permutation p-value), on rows held out from those the
  pattern was computed on.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import stats
from ..errors import HeadwayError
from ..locks import owning
from ..patterns import ActivationPattern, pattern_paths
from ..storage import atomic_write_json
from ..training.run import read_manifest, run_folder
from . import fitting
from .composition import composition, split_runs

# scoring's resume files beside a pattern (one process, or one per rank)
_PARTIAL = re.compile(r"\.partial(-\d+-of-\d+)?\.safetensors$")


class AnalysisError(HeadwayError, ValueError):
    """Inputs that cannot be analysed together (e.g. an unknown --complex run)."""


# ---------------------------------------------------------------- inputs


def pattern_inputs(paths: list[str]) -> tuple[list[Path], list[str]]:
    """The distinct patterns among ``paths``, and the paths that are no pattern.

    A pattern may be given by its ``.safetensors`` file, its ``.json`` file or their common
    stem; however often it is given, it is one pattern (first position kept; returned as
    stems). Existing files and folders that are no pattern (a heatmap ``.png`` beside it,
    scoring's ``*.partial.safetensors``, another JSON) are ignored, as a shell glob picks them
    up; a path that does not exist is kept, for loading to report.
    """
    stems, seen, ignored = [], set(), []
    for given in paths:
        path = Path(given)
        tensor_file, _ = pattern_paths(path)
        if _PARTIAL.search(path.name) or (path.exists() and not tensor_file.is_file()):
            ignored.append(str(given))
            continue
        stem = tensor_file.with_name(tensor_file.name[:-len(".safetensors")])
        if stem.resolve() not in seen:
            seen.add(stem.resolve())
            stems.append(stem)
    return stems, ignored


def pattern_names(stems: list[Path], patterns: list[ActivationPattern]) -> list[str]:
    """Each pattern's task name; patterns of the same task are told apart by their file stem
    (by their path where stems coincide too): ``"arithmetic (lr-high)"``."""
    tasks = [p.meta.get("task", {}).get("name") or s.name for s, p in zip(stems, patterns)]
    counts = Counter(tasks)
    names = []
    for task, stem in zip(tasks, stems):
        if counts[task] == 1:
            names.append(task)
            continue
        same_stem = sum(t == task and s.name == stem.name for t, s in zip(tasks, stems))
        names.append(f"{task} ({stem.name if same_stem == 1 else stem})")
    return names


def load_patterns(paths: list[str]) -> tuple[dict[str, tuple[Path, ActivationPattern]],
                                             list[str]]:
    """``{name: (stem, pattern)}`` of the distinct patterns among ``paths`` (see
    :func:`pattern_inputs` and :func:`pattern_names`), and the ignored paths."""
    stems, ignored = pattern_inputs(paths)
    if ignored and not stems:
        raise AnalysisError(f"no activation pattern among --patterns {' '.join(ignored)}",
                            hint="give the .safetensors files written by `headway score`")
    patterns = []
    for stem in stems:
        try:
            patterns.append(ActivationPattern.load(stem))
        except ValueError as err:  # a .safetensors file of something else
            raise AnalysisError(str(err)) from err
    return dict(zip(pattern_names(stems, patterns), zip(stems, patterns))), ignored


def _run_summary(run_dir: Path) -> dict:
    """A tracked run's own-task probe: AP before and after, per-sample scores, dynamics."""
    from safetensors.torch import load_file

    from ..training.records import read_metrics, run_trajectory

    run_dir = run_folder(run_dir)
    manifest = read_manifest(run_dir)
    trajectory = run_trajectory(run_dir)
    steps = trajectory["steps"]
    if len(steps) < 2:
        raise AnalysisError(f"{run_dir}: only one probe record (step {steps[0]}): a run needs a "
                            f"record after its start to show a change",
                            hint="let it train, or resume it with the same command")
    if manifest.get("status") == "finished" and manifest.get("global_step", 0) > steps[-1]:
        raise AnalysisError(f"{run_dir / 'metrics.jsonl'}: its records end at step {steps[-1]} "
                            f"but the run finished at step {manifest['global_step']}: the file "
                            f"was cut or edited", hint="restore it, or train the run again")
    task = manifest["train_task"]["name"]
    probe = task if task in trajectory["probes"] else next(iter(trajectory["probes"]))
    first, last = (ActivationPattern.load(run_dir / "patterns" / f"step_{s:06d}" / probe)
                   for s in (steps[0], steps[-1]))
    change_file = run_dir / "param_change" / f"step_{steps[-1]:06d}.safetensors"
    recorded = "param_change" in next(
        (r for r in read_metrics(run_dir / "metrics.jsonl")
         if r["kind"] == "probe" and r["step"] == steps[-1]), {})
    change = load_file(change_file) if recorded and change_file.is_file() else None
    return {"name": task, "probe": probe, "run": str(run_dir), "manifest": manifest,
            "trajectory": trajectory, "before": first, "after": last,
            "delta": (last.scores - first.scores).numpy(), "param_change": change}


def _run_summaries(runs: list[str]) -> list[dict]:
    """The summary of each distinct run among ``runs`` (a folder given twice, or as a
    Trainer's output_dir and its ``headway/`` folder, counts once)."""
    folders = list(dict.fromkeys(run_folder(Path(r)).resolve() for r in runs))
    summaries = [_run_summary(folder) for folder in folders]
    seen = set()
    for s in summaries:  # two runs of one task keep apart by their folder name
        if s["name"] in seen:
            s["name"] = f"{s['name']} ({Path(s['run']).name})"
        seen.add(s["name"])
    return summaries


# ---------------------------------------------------------------- the analysis


FIELDS = ("inputs", "patterns", "similarity", "runs", "composition", "faithfulness")


@dataclass(repr=False)
class Analysis:
    """The numbers of an analysis, field for field those of ``analysis.json``: ``inputs``,
    ``patterns`` (per pattern: Gini, CV, entropy, top heads), ``similarity`` (task x task
    Pearson, Spearman, cosine, top-k Jaccard, clustering order), ``runs`` (per run: ΔAP,
    dynamics, parameter-change concentration), ``composition`` (the fit of the complex run's
    ΔAP, with controls and the shared component) and ``faithfulness`` (ablations). ``path``:
    the folder it was written to, if any (``headway report`` draws it)."""

    inputs: dict = field(default_factory=dict)
    patterns: dict = field(default_factory=dict)
    similarity: dict | None = None
    runs: dict = field(default_factory=dict)
    composition: dict | None = None
    faithfulness: dict | None = None
    path: Path | None = None

    def to_dict(self) -> dict:
        """What ``analysis.json`` holds."""
        return {name: getattr(self, name) for name in FIELDS if getattr(self, name) is not None}

    def save(self, folder: str | Path) -> Path:
        """Write ``folder/analysis.json``; return the folder."""
        folder = Path(folder)
        atomic_write_json(folder / "analysis.json", self.to_dict())
        self.path = folder
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> Analysis:
        """Read ``folder/analysis.json`` (one line naming it when it cannot be read)."""
        import json

        path = Path(folder) / "analysis.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise
        except (OSError, ValueError) as err:
            raise AnalysisError(f"{path}: not a readable analysis.json ({err})") from err
        if not isinstance(data, dict):
            raise AnalysisError(f"{path}: not an analysis (expected a JSON object)")
        return cls(**{name: data[name] for name in FIELDS if name in data}, path=Path(folder))

    def __repr__(self) -> str:
        parts = [f"{len(self.patterns)} patterns", f"{len(self.runs)} runs"]
        if self.composition:
            fit = self.composition["least_squares"]
            parts.append(f"composition of {self.composition['target']}: R² {fit['r2']:.3f}")
        if self.faithfulness:
            parts.append(f"ablation of {len(self.faithfulness)} patterns")
        return f"<Analysis: {', '.join(parts)}>"


def analyze(runs=(), patterns=(), *, complex: str | None = None, control=(),
            model: str | None = None, output_dir: str | Path | None = None, k: int = 10,
            random_draws: int = 20, bootstrap: int = 200, permutations: int = 500,
            seed: int = 0, progress: bool = True) -> Analysis:
    """The findings of tracked ``runs`` (folders) and ``patterns`` (files), as
    ``headway analyze`` computes them: an :class:`Analysis`. ``complex``: the run whose ΔAP
    is fitted on the others' (``control``: unrelated runs that enter the fit apart);
    ``model``: also ablate each pattern's top-``k`` heads on it against ``random_draws``
    random sets. ``output_dir``: also write ``analysis.json`` there (and keep the ablations'
    finished results there for a rerun); ``headway report OUTPUT_DIR`` draws it."""
    import tempfile

    with tempfile.TemporaryDirectory() if output_dir is None else \
            contextlib.nullcontext(output_dir) as folder:
        result = run_analysis(Path(folder), patterns=list(patterns), runs=list(runs),
                              complex_run=complex, controls=list(control), model=model, k=k,
                              n_random=random_draws, n_boot=bootstrap, n_perm=permutations,
                              seed=seed, progress=progress)
    return Analysis(**{name: result[name] for name in FIELDS if name in result},
                    path=None if output_dir is None else Path(output_dir))


def run_analysis(out: Path, patterns: list[str] = (), runs: list[str] = (),
            complex_run: str | None = None, model: str | None = None, k: int = 10,
            n_random: int = 20, n_boot: int = 200, n_perm: int = 500, seed: int = 0,
            ablation_modes: tuple[str, ...] = ("zero", "mean"),
            ablation_rows: int | None = None, progress: bool = True,
            controls: list[str] = ()) -> dict:
    """Compute everything the inputs allow; write ``out/analysis.json``; return its dict.

    ``controls``: runs (task names or folders, among ``runs``) of unrelated basic tasks that
    enter the composition fit of ``complex_run`` and are reported apart
    (:mod:`headway.analysis.composition`).

    ``patterns``: pattern files or stems; each pattern counts once however it is given, and
    files that are no pattern are ignored (:func:`pattern_inputs`). Ablation runs on rows held
    out from each pattern's own (the next ``ablation_rows`` rows of its task, default as many
    as the pattern used), in each of ``ablation_modes``; each finished (pattern, mode) result
    is kept in ``out/.ablation/`` and reused by a rerun with the same settings. ``progress``:
    progress bars on stderr."""
    out = Path(out)
    with owning(out, f"analysis folder {out}"):
        return _analyze(out, patterns, runs, complex_run, model, k, n_random, n_boot, n_perm,
                        seed, ablation_modes, ablation_rows, progress, controls)


def _analyze(out: Path, patterns, runs, complex_run, model, k, n_random, n_boot, n_perm, seed,
             ablation_modes, ablation_rows, progress, controls) -> dict:
    if not patterns and not runs:
        raise AnalysisError("nothing to analyse: give --patterns (pattern files of headway "
                            "score) and/or --runs (run folders of headway train)")
    result: dict = {"inputs": {"patterns": [str(p) for p in patterns],
                               "runs": [str(r) for r in runs]}}
    loaded, ignored = load_patterns(patterns)
    if ignored:
        result["inputs"]["ignored"] = ignored
        print(f"headway analyze: ignoring {len(ignored)} --patterns paths that are not "
              f"pattern files: {', '.join(ignored[:3])}{', ...' if len(ignored) > 3 else ''}",
              file=sys.stderr)
    _patterns_section(result, loaded, k)
    summaries = _run_summaries(runs)
    _runs_section(result, summaries, k)
    if controls and not complex_run:
        raise AnalysisError("--control needs --complex: a control enters the composition fit",
                            hint="name the complex run with --complex")
    if complex_run:
        target, bases, control_runs = split_runs(summaries, complex_run, list(controls))
        result["composition"] = composition(target, bases, control_runs, n_boot, n_perm, seed,
                                            progress)
    if model and loaded:
        result["faithfulness"] = _faithfulness(model, loaded, k, n_random, seed,
                                               ablation_modes, ablation_rows,
                                               out / ".ablation", progress)
    atomic_write_json(out / "analysis.json", result)
    return result


def _patterns_section(result: dict, loaded: dict, k: int) -> None:
    """Concentration and top heads of each pattern; task x task similarity."""
    result["patterns"] = {
        name: {"path": str(path), **stats.concentration(p.scores.numpy()),
               "n": p.meta.get("n_samples"), "model": p.meta.get("model", {}).get("name"),
               "top_heads": [f"{l}.{h}" for l, h, _ in p.top_heads(k)]}
        for name, (path, p) in loaded.items()}
    if len(loaded) < 2:
        return
    arrays = {n: p.scores.numpy() for n, (_, p) in loaded.items()}
    names = list(arrays)
    sims = {m: stats.similarity_matrix(arrays, m) for m in stats.SIMILARITIES}
    order = stats.cluster_order(sims["pearson"])
    jac = np.array([[stats.jaccard_top_k(a, b, k) for b in arrays.values()]
                    for a in arrays.values()])
    result["similarity"] = {"names": names, "cluster_order": [names[i] for i in order],
                            **{m: s.tolist() for m, s in sims.items()},
                            f"jaccard_top{k}": jac.tolist()}


def _runs_section(result: dict, summaries: list[dict], k: int) -> None:
    """ΔAP, dynamics and parameter change of each tracked run."""
    result["runs"] = {}
    for s in summaries:
        d = s["trajectory"]["probes"][s["probe"]]["dynamics"]
        attn = (s["param_change"]["attn"].numpy() if s["param_change"] is not None
                else np.full_like(s["delta"], np.nan))
        result["runs"][s["name"]] = {
            "run": s["run"], "probe": s["probe"], "mode": s["manifest"].get("mode"),
            "steps": s["trajectory"]["steps"],
            "loss": s["trajectory"]["probes"][s["probe"]]["loss"],
            "before": stats.concentration(s["before"].scores.numpy()),
            "after": stats.concentration(s["after"].scores.numpy()),
            "delta_norm": float(np.linalg.norm(s["delta"])),
            "dynamics": {key: d[key] for key in ("change", "corr_start", "corr_prev",
                                                 "mse_prev", "step_50", "step_90")},
            "param_change": None if s["param_change"] is None else {
                "mean": float(np.nanmean(attn)), "max": float(np.nanmax(attn)),
                **fitting.change_concentration(attn, s["delta"])},
            "top_delta_heads": _top_abs(s["delta"], k)}


def _top_abs(delta: np.ndarray, k: int) -> list[str]:
    n_heads = delta.shape[1]
    return [f"{int(i) // n_heads}.{int(i) % n_heads}"
            for i in np.argsort(-np.abs(delta).ravel(), kind="stable")[:k]]


# ---------------------------------------------------------------- faithfulness


def _held_out(p: ActivationPattern, tokenizer, rows: int | None):
    """The held-out rows to ablate ``p`` on: ``(spec, encoded)``; a reason string when there
    are none; None when ``p`` does not record its task spec."""
    from ..data.encoding import encode_examples
    from ..data.rows import TaskError, TaskSpec
    from ..data.tasks import load_task

    spec = dict(p.meta.get("task", {}).get("spec") or {})
    if not spec:
        return None
    spec["offset"] = spec.get("offset", 0) + spec["n"]  # rows the pattern did not see
    spec["n"] = min(spec["n"], rows or spec["n"])
    try:
        task = load_task(TaskSpec(**spec))
    except TaskError as err:
        return f"no held-out rows to ablate on: {err}"
    encoded, _ = encode_examples(task.examples, tokenizer, p.meta.get("template", "qa"),
                                 p.meta.get("max_length", 1024),
                                 p.meta.get("overlong", "truncate"), task.source)
    return spec, encoded


def _faithfulness(model: str, loaded: dict, k: int, n_random: int, seed: int,
                  modes: tuple[str, ...], rows: int | None, keep_in: Path,
                  progress: bool) -> dict:
    """``{name: {mode: faithfulness result}}`` (or ``{name: {"skipped": why}}``) of every
    pattern that records its task; results kept in ``keep_in`` are reused."""
    from ..models.architectures import head_geometry
    from ..models.loading import load_model
    from .ablation import AblationJob, encoded_digest, run_ablations, scores_digest

    lm = load_model(model)
    n_layers, n_heads, _ = head_geometry(lm.model)
    if n_layers * n_heads < 2 * k:
        raise AnalysisError(f"ablation draws {k} random heads from the {n_layers * n_heads - k} "
                            f"heads outside the top {k}: too few", hint="use a smaller --k")
    device = next(lm.model.parameters()).device.type  # cpu and cuda sum in other orders
    out, jobs = {}, []
    for name, (_, p) in loaded.items():
        held_out = _held_out(p, lm.tokenizer, rows)
        if held_out is None:
            continue
        if isinstance(held_out, str):
            out[name] = {"skipped": held_out}
            continue
        spec, encoded = held_out
        identity = {"model": lm.describe(), "device": device, "rows": spec,
                    "encoded": encoded_digest(encoded),
                    "pattern": {"data_hash": p.meta.get("task", {}).get("data_hash"),
                                "scores": scores_digest(p.scores.numpy())}}
        out[name] = {}
        jobs += [AblationJob(name, mode, p.scores.numpy(), encoded, identity) for mode in modes]
    results = run_ablations(lm.model, lm.pad_id, jobs, k, n_random, seed,
                            keep_in, progress)
    for job, r in zip(jobs, results):
        out[job.name][job.mode] = r
    return out
