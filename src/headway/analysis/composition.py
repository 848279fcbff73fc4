"""The composition finding of ``headway analyze``: a complex run's ΔAP fitted on basic runs'
ΔAP, against the two things that can fake it.

- The shared component: most of a short fine-tune's ΔAP can be a change every task shares
  (every head scoring less as the loss falls). Each fit also reports the one-parameter
  baseline ΔAP_complex ≈ β · mean_j ΔAP_j (the mean over every fitted run, controls
  included) and the adjusted R² the full fit gains over it, with a bootstrap interval
  (``shared_component``). A gain whose interval includes 0 means the fit says no more than
  "the complex task shares the common change".
- Controls (``controls``): unrelated basic runs enter the fit like the real ones; their α and
  intervals are reported apart, and the composition is called ``specific`` only when every
  real basic task's α interval lies above every control's |α| (:data:`stats.SPECIFIC_RULE`).
"""

from __future__ import annotations

from pathlib import Path

from ..errors import HeadwayError
from . import fitting


class CompositionError(HeadwayError, ValueError):
    """A --complex or --control run that is not among the runs, or too few basic runs."""


def find_run(summaries: list[dict], given: str) -> dict | None:
    """The run summary ``given`` names: its task name, its folder (as given or resolved, or
    the Trainer's output_dir holding it), or the folder's name."""
    paths = {Path(given).resolve(), (Path(given) / "headway").resolve()}
    return next((s for s in summaries if given in (s["name"], s["run"], Path(s["run"]).name)
                 or Path(s["run"]).resolve() in paths), None)


def split_runs(summaries: list[dict], complex_run: str, controls: list[str]
               ) -> tuple[dict, list[dict], list[dict]]:
    """``(target, basic runs, control runs)``; a clear error for a name that is no run."""
    names = ", ".join(s["name"] for s in summaries)
    target = find_run(summaries, complex_run)
    if target is None:
        raise CompositionError(f"--complex {complex_run!r} is none of the runs ({names})")
    control_runs = []
    for given in controls:
        run = find_run(summaries, given)
        if run is None:
            raise CompositionError(f"--control {given!r} is none of the runs ({names})")
        if run is target:
            raise CompositionError(f"--control {given!r} is the --complex run")
        if all(run is not c for c in control_runs):
            control_runs.append(run)
    bases = [s for s in summaries if s is not target and all(s is not c for c in control_runs)]
    if not bases:
        raise CompositionError("composition needs at least one basic run besides --complex "
                               "and the --control runs")
    return target, bases, control_runs


def _per_sample(s: dict):
    before, after = s["before"].per_sample, s["after"].per_sample
    if before is None or after is None:
        return None
    return before.abs().numpy(), after.abs().numpy()


def composition(target: dict, bases: list[dict], controls: list[dict], n_boot: int,
                n_perm: int, seed: int, progress: bool) -> dict:
    """Least-squares and non-negative fits of the target's ΔAP [L, H] on the basic and control
    runs' ΔAP, each with its shared-component baseline, bootstrap intervals (when every run
    kept per-sample scores), leave-one-out and the shuffled-heads null."""
    fitted = bases + controls
    names = [b["name"] for b in fitted]
    X = [b["delta"] for b in fitted]
    J = len(bases)
    out = {"target": target["name"], "bases": names[:J], "controls": names[J:]}
    pairs = [_per_sample(s) for s in (target, *fitted)]
    for key, nonneg in (("least_squares", False), ("nonnegative", True)):
        fit = fitting.composition_fit(target["delta"], X, nonnegative=nonneg)
        shared = fitting.shared_component(target["delta"], X, nonnegative=nonneg)
        shared.update({"mean_of": names, "r2_gain_ci": None})
        if n_boot > 0 and all(p is not None for p in pairs):  # 0: no intervals
            boot = fitting.bootstrap_composition(pairs[0], pairs[1:], n_boot, seed, nonneg,
                                           progress=progress)
            shared.update(boot.pop("shared_component"))
            fit.update(boot)
        lo = (shared["r2_gain_ci"] or [None])[0]
        shared["beyond_shared"] = None if lo is None else bool(lo > 0)
        fit["shared_component"] = shared
        if controls:
            ci = fit.get("alpha_ci")
            fit["controls"] = {"names": names[J:], "alpha": fit["alpha"][J:],
                               "alpha_ci": ci[J:] if ci else None,
                               "specific": fitting.control_verdict(ci[:J], ci[J:]) if ci else None,
                               "rule": fitting.SPECIFIC_RULE}
            fit["alpha"] = fit["alpha"][:J]
            if ci:
                fit["alpha_ci"] = ci[:J]
        fit["leave_one_out"] = fitting.leave_one_out(target["delta"], X, names, nonneg)
        fit["shuffled_null"] = fitting.shuffled_null(target["delta"], X, n_perm, seed, nonneg)
        out[key] = fit
    return out
