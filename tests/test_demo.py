"""The demo end to end on the real built-in model (few rows), and its resume."""

from __future__ import annotations

import json

from headway.cli import main
from headway.demo import DEMO_TASKS


def test_demo_writes_patterns_figures_and_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--rows", "4", "--sft-steps", "2",
                 "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    sft = summary["sft"]
    assert sft["steps"] == 2 and set(sft["probes"]) == {"arithmetic", "word_problems"}
    assert sft["probes"]["arithmetic"]["change_end"] > 0  # two real steps move the pattern
    assert sft["param_change_end"] > 0
    assert (out / "figures" / "sft_trajectory.png").read_bytes()[:4] == b"\x89PNG"
    assert set(summary["tasks"]) == set(DEMO_TASKS)
    assert len(summary["pairs"]) == len(DEMO_TASKS) * (len(DEMO_TASKS) - 1) // 2
    for name, stats in summary["tasks"].items():
        assert (out / "patterns" / f"{name}.safetensors").is_file()
        assert (out / "figures" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
        assert 0 < stats["gini"] < 1 and len(stats["top_heads"]) == 5
    assert "| arithmetic |" in (out / "summary.md").read_text()
    capsys.readouterr()

    # a second run reuses every pattern instead of recomputing it
    assert main(["demo", "--output-dir", str(out), "--rows", "4", "--sft-steps", "2",
                 "--no-progress"]) == 0
    assert capsys.readouterr().out.count("reusing") == len(DEMO_TASKS) + 1
