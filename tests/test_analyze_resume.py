"""`headway analyze --model`: an interrupted ablation keeps each finished (pattern, mode) result
and a rerun of the same command computes only the rest."""

from __future__ import annotations

import json

import numpy as np
import pytest

import headway.analysis.ablation
from headway.cli import main
from headway.patterns import ActivationPattern

FAITHFULNESS = headway.analysis.ablation.faithfulness


@pytest.fixture(scope="module")
def patterns(tmp_path_factory, llama_dir):
    root = tmp_path_factory.mktemp("resume-patterns")
    out = []
    for task in ("arithmetic", "sorting"):
        assert main(["score", "--model", str(llama_dir), "--task", task, "--rows", "6",
                     "-o", str(root / task), "--no-progress"]) == 0
        out.append(root / task)
    return out


class CountingAblation:
    """Stands in for :func:`headway.analysis.ablation.faithfulness`: records each call's scores and
    mode; raises KeyboardInterrupt at call number ``interrupt_at`` (Ctrl-C mid-ablation)."""

    def __init__(self, interrupt_at: int | None = None):
        self.calls: list[tuple[np.ndarray, str]] = []
        self.interrupt_at = interrupt_at

    def __call__(self, model, encoded, pad_id, scores, k, n_random, mode, *args, **kwargs):
        if len(self.calls) + 1 == self.interrupt_at:
            raise KeyboardInterrupt
        self.calls.append((np.asarray(scores), mode))
        return FAITHFULNESS(model, encoded, pad_id, scores, k, n_random, mode, *args, **kwargs)


def analyze(out, patterns, llama_dir, monkeypatch, ablation, draws=3) -> int:
    monkeypatch.setattr(headway.analysis.ablation, "faithfulness", ablation)
    return main(["analyze", "--patterns", *map(str, patterns), "--model", str(llama_dir),
                 "--k", "3", "--random-draws", str(draws), "-o", str(out)])


def test_rerun_after_interrupt_recomputes_only_the_unfinished(patterns, llama_dir, tmp_path,
                                                              monkeypatch, capsys):
    first, second = (ActivationPattern.load(p).scores.numpy() for p in patterns)
    whole = CountingAblation()
    assert analyze(tmp_path / "whole", patterns, llama_dir, monkeypatch, whole) == 0
    assert len(whole.calls) == 4  # 2 patterns x (zero, mean)

    out = tmp_path / "interrupted"
    stopped = CountingAblation(interrupt_at=3)  # after the first pattern's two modes
    assert analyze(out, patterns, llama_dir, monkeypatch, stopped) == 130
    assert "interrupted" in capsys.readouterr().err
    assert not (out / "analysis.json").exists()
    assert len(list((out / ".ablation").glob("arithmetic-*.json"))) == 2

    resumed = CountingAblation()
    assert analyze(out, patterns, llama_dir, monkeypatch, resumed) == 0
    assert [mode for _, mode in resumed.calls] == ["zero", "mean"]
    assert all(np.array_equal(scores, second) for scores, _ in resumed.calls)
    assert not any(np.array_equal(scores, first) for scores, _ in resumed.calls)
    assert json.loads((out / "analysis.json").read_text()) == \
        json.loads((tmp_path / "whole" / "analysis.json").read_text())

    again = CountingAblation()  # everything kept: nothing recomputed
    assert analyze(out, patterns, llama_dir, monkeypatch, again) == 0
    assert again.calls == []


def test_changed_setting_does_not_reuse_kept_results(patterns, llama_dir, tmp_path,
                                                     monkeypatch):
    out = tmp_path / "a"
    assert analyze(out, patterns, llama_dir, monkeypatch, CountingAblation()) == 0
    fewer_draws = CountingAblation()
    assert analyze(out, patterns, llama_dir, monkeypatch, fewer_draws, draws=2) == 0
    assert len(fewer_draws.calls) == 4
    faith = json.loads((out / "analysis.json").read_text())["faithfulness"]
    assert len(faith["sorting"]["mean"]["random_increase"]) == 2
    assert len(list((out / ".ablation").glob("*.json"))) == 8  # both settings kept apart
