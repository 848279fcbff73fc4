"""The demo end to end on the real built-in model (few rows, few steps), and its resume."""

from __future__ import annotations

import json

from headway.cli import main
from headway.demo import (
    BASIC_TASKS,
    COMPLEX_TASK,
    CONTROL_TASK,
    DEMO_TASKS,
    QUICK,
)


def test_demo_writes_patterns_runs_analysis_and_report(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["demo", "--output-dir", str(out), "--rows", "4", "--sft-steps", "2", "--no-progress"]
    assert main(args) == 0
    a = json.loads((out / "analysis" / "analysis.json").read_text())
    assert set(a["patterns"]) == set(DEMO_TASKS)
    assert set(a["runs"]) == {*BASIC_TASKS, COMPLEX_TASK, CONTROL_TASK}
    for name, r in a["runs"].items():
        assert r["dynamics"]["change"][-1] > 0, f"{name}: two real steps move the pattern"
        assert r["param_change"]["mean"] > 0
    assert a["composition"]["target"] == COMPLEX_TASK
    assert a["composition"]["controls"] == [CONTROL_TASK]
    fit = a["composition"]["least_squares"]
    assert fit["controls"]["names"] == [CONTROL_TASK] and "r2_gain_ci" in fit["shared_component"]
    assert set(a["faithfulness"]) == set(DEMO_TASKS)
    for modes in a["faithfulness"].values():
        assert len(modes["zero"]["random_increase"]) == QUICK.random_draws
    page = (out / "report.html").read_text()  # interactive, and the PNGs for papers beside it
    assert "patterns-heatmap" in page and "run-step" in page and "tokens-source" in page
    assert (out / "report.html").stat().st_size < 5e6
    assert len(list((out / "analysis" / "figures").glob("*.png"))) > 5
    summary = (out / "summary.md").read_text()
    assert "| arithmetic |" in summary and "Composition" in summary
    assert f"{CONTROL_TASK} (control)" in summary and "Shared component alone" in summary
    assert f"of {QUICK.random_draws} random draws" in summary
    capsys.readouterr()

    # a second run reuses every pattern and run instead of recomputing them
    assert main(args) == 0
    assert capsys.readouterr().out.count("reusing") == len(DEMO_TASKS) + 4  # + the control
