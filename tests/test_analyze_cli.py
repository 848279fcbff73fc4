"""`headway analyze` and `headway report` end to end on tiny models."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from headway.analysis.findings import pattern_names
from headway.cli import main
from headway.patterns import ActivationPattern
from headway.training.config import TrainConfig
from headway.training.trainer import run_train


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, llama_dir):
    root = tmp_path_factory.mktemp("analyze")
    runs = []
    for task in ("arithmetic", "sorting", "chain_sum"):
        run = root / f"run-{task}"
        run_train(TrainConfig(model=str(llama_dir), task=task, rows=16, probe_rows=6,
                              max_steps=4, track_every=2, track_schedule="every",
                              per_device_train_batch_size=4,
                              learning_rate=1e-2, output_dir=str(run), disable_tqdm=True,
                              save_final=False))
        runs.append(run)
    patterns = []
    for task in ("arithmetic", "sorting"):
        out = root / "patterns" / task
        assert main(["score", "--model", str(llama_dir), "--task", task, "--rows", "6",
                     "--per-sample", "-o", str(out), "--no-progress"]) == 0
        patterns.append(out)
    return root, runs, patterns


def test_analyze_and_report(workspace, llama_dir, capsys):
    root, runs, patterns = workspace
    out = root / "analysis"
    assert main(["analyze", "--patterns", *map(str, patterns), "--runs", *map(str, runs),
                 "--complex", "chain_sum", "--model", str(llama_dir), "--k", "3",
                 "--random-draws", "3", "--bootstrap", "20", "--permutations", "20",
                 "-o", str(out)]) == 0
    a = json.loads((out / "analysis.json").read_text())
    assert set(a["patterns"]) == {"arithmetic", "sorting"}
    assert len(a["similarity"]["pearson"]) == 2 and a["similarity"]["pearson"][0][0] == 1.0
    assert set(a["runs"]) == {"arithmetic", "sorting", "chain_sum"}
    comp = a["composition"]
    assert comp["target"] == "chain_sum" and comp["bases"] == ["arithmetic", "sorting"]
    for key in ("least_squares", "nonnegative"):
        assert len(comp[key]["alpha"]) == 2 and len(comp[key]["alpha_ci"]) == 2
        assert 0 <= comp[key]["shuffled_null"]["p_value"] <= 1
    assert min(comp["nonnegative"]["alpha"]) >= 0
    for key in ("least_squares", "nonnegative"):  # the baseline of the shared component
        shared = comp[key]["shared_component"]
        assert {"beta", "r2", "r2_gain", "r2_gain_ci", "beyond_shared"} <= set(shared)
        assert shared["mean_of"] == ["arithmetic", "sorting"] and len(shared["r2_gain_ci"]) == 2
        assert "controls" not in comp[key]
    faith = a["faithfulness"]["arithmetic"]
    assert set(faith) == {"zero", "mean"} and len(faith["zero"]["random_increase"]) == 3
    zero = faith["zero"]
    assert zero["random_interval"]["label"] == "range (min–max) of 3 random draws"
    assert not any(set(d) & set(zero["top_heads"]) for d in zero["random_heads"])
    figures = sorted((out / "figures").glob("*.png"))
    assert len(figures) == 1 + 1 + 3 * 3 + 2 + 1  # patterns, similarity, runs, fit, ablation
    capsys.readouterr()

    assert main(["report", str(out), "--static"]) == 0
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(figures)
    assert "src=\"figures/" not in page and "http" not in page  # self-contained
    r2 = comp["least_squares"]["r2"]
    assert re.search(rf"R² = {r2:.3f}", page), "the report shows the JSON's R²"
    assert "<script" not in page

    assert main(["report", str(out)]) == 0  # interactive: Bokeh inlined, nothing fetched
    page = (out / "report.html").read_text()
    assert "patterns-heatmap" in page and "run-ap" in page and "ablation" in page
    assert not re.search(r"<(script|link)[^>]+(src|href)=", page)
    r2 = comp["least_squares"]["r2"]
    assert re.search(rf"R² = {r2:.3f}", page), "the report shows the JSON's R²"
    assert "Shared component" in page and "range (min–max) of 3 random draws" in page


def test_analyze_with_a_control(workspace, capsys):
    """--control: the control enters the fit as a basic task, its α and interval are reported
    apart, with the verdict and its rule; the report shows them."""
    root, runs, _ = workspace
    out = root / "analysis-control"
    assert main(["analyze", "--runs", *map(str, runs), "--complex", "chain_sum",
                 "--control", "sorting", "--bootstrap", "20", "--permutations", "20",
                 "-o", str(out)]) == 0
    comp = json.loads((out / "analysis.json").read_text())["composition"]
    assert comp["bases"] == ["arithmetic"] and comp["controls"] == ["sorting"]
    for key in ("least_squares", "nonnegative"):
        fit = comp[key]
        assert len(fit["alpha"]) == 1 and len(fit["alpha_ci"]) == 1
        control = fit["controls"]
        assert control["names"] == ["sorting"] and len(control["alpha"]) == 1
        assert len(control["alpha_ci"]) == 1 and isinstance(control["specific"], bool)
        assert "control" in control["rule"]
        assert fit["shared_component"]["mean_of"] == ["arithmetic", "sorting"]
    capsys.readouterr()
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    assert "sorting (control)" in page and "Controls: the composition is" in page


def test_analyze_rejects_an_unknown_control(workspace, capsys):
    root, runs, _ = workspace
    assert main(["analyze", "--runs", *map(str, runs), "--complex", "chain_sum",
                 "--control", "nope", "-o", str(root / "y")]) == 2
    assert "--control 'nope'" in capsys.readouterr().err
    assert main(["analyze", "--runs", *map(str, runs), "--control", "sorting",
                 "-o", str(root / "y")]) == 2
    assert "--control needs --complex" in capsys.readouterr().err


def test_analyze_rejects_an_unknown_complex_run(workspace, capsys):
    root, runs, _ = workspace
    assert main(["analyze", "--runs", *map(str, runs), "--complex", "nope",
                 "-o", str(root / "x")]) == 2
    assert "--complex 'nope'" in capsys.readouterr().err


def test_report_needs_an_analysis(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "no analysis.json" in capsys.readouterr().err


def test_a_glob_of_pattern_files_gives_each_pattern_once(workspace, llama_dir, tmp_path, capsys):
    """`--patterns pat/*` picks up x.safetensors, x.json, the heatmap x.png `headway show`
    writes beside it and scoring's x.partial.safetensors: one pattern x, nothing else."""
    root, _, patterns = workspace
    folder = tmp_path / "pat"
    folder.mkdir()
    for source in patterns:
        for suffix in (".safetensors", ".json"):
            shutil.copy(source.with_suffix(suffix), folder / (source.name + suffix))
    assert main(["show", str(folder / "arithmetic.safetensors")]) == 0
    (folder / "arithmetic.partial.safetensors").write_bytes(b"unfinished")
    assert main(["score", "--model", str(llama_dir), "--task", "arithmetic", "--rows", "4",
                 "-o", str(folder / "arithmetic-4rows"), "--no-progress"]) == 0
    given = sorted(map(str, folder.glob("*"))) + [str(folder / "sorting")]
    out = tmp_path / "analysis"
    assert main(["analyze", "--patterns", *given, "-o", str(out)]) == 0
    a = json.loads((out / "analysis.json").read_text())
    # in order of first mention; two patterns of one task are told apart by their file stem
    names = ["arithmetic (arithmetic-4rows)", "arithmetic (arithmetic)", "sorting"]
    assert set(a["patterns"]) == set(names) and a["similarity"]["names"] == names
    assert len(a["similarity"]["pearson"]) == 3
    assert a["patterns"]["sorting"]["path"] == str(folder / "sorting")
    assert sorted(a["inputs"]["ignored"]) == [str(folder / "arithmetic.partial.safetensors"),
                                              str(folder / "arithmetic.png")]
    assert "ignoring 2 --patterns paths that are not pattern files" in capsys.readouterr().err


def test_patterns_of_one_task_and_stem_are_named_by_path():
    p = ActivationPattern(scores=torch.ones(2, 2), meta={"task": {"name": "arithmetic"}})
    q = ActivationPattern(scores=torch.ones(2, 2), meta={"task": {"name": "sorting"}})
    stems = [Path("a/x"), Path("b/x"), Path("c/y"), Path("d/y")]
    assert pattern_names(stems, [p, p, p, q]) == [
        "arithmetic (a/x)", "arithmetic (b/x)", "arithmetic (y)", "sorting"]


def test_analyze_refuses_patterns_that_are_only_other_files(tmp_path, capsys):
    (tmp_path / "x.png").write_bytes(b"png")
    assert main(["analyze", "--patterns", str(tmp_path / "x.png"), "-o", str(tmp_path)]) == 2
    assert "no activation pattern among --patterns" in capsys.readouterr().err
