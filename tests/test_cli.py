"""End to end through the command line on a tiny local model folder."""

from __future__ import annotations

import json

import pytest
import torch

from headway.cli import main
from headway.patterns import ActivationPattern


@pytest.fixture
def model_dir(llama_dir):
    return llama_dir


@pytest.fixture
def qa_file(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}\n#### {2 * i}"}
            for i in range(7)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_then_show(model_dir, qa_file, tmp_path, capsys):
    out = tmp_path / "runs" / "qa"
    assert main(["score", "--model", str(model_dir), "--task", str(qa_file), "--batch-size", "3", "--per-sample", "-o", str(out), "--no-progress"]) == 0
    assert "scored 7 rows" in capsys.readouterr().out
    pattern = ActivationPattern.load(out)
    assert pattern.scores.shape == (2, 4)
    assert pattern.per_sample.shape == (7, 2, 4)
    torch.testing.assert_close(pattern.scores, pattern.per_sample.abs().mean(0))
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["n_samples"] == 7 and meta["convention"] == "sample"
    assert meta["task"]["data_hash"] == pattern.meta["task"]["data_hash"]
    assert meta["model"]["revision"].startswith("sha256:")

    png = tmp_path / "heat.png"
    assert main(["show", str(out) + ".safetensors", "--top-k", "3", "--heatmap", str(png)]) == 0
    shown = capsys.readouterr().out
    assert "Gini" in shown and "CV" in shown
    assert len([l for l in shown.splitlines() if l.strip().startswith(("1 ", "2 ", "3 "))]) == 3
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    assert main(["show", str(out), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert len(shown["top_heads"]) == 8  # top 10 asked; a 2 x 4 model has 8 heads
    assert 0 <= shown["gini"] <= 1


def test_reference_method_agrees_through_cli(model_dir, qa_file, tmp_path):
    for method in ("gate", "reference"):
        assert main(["score", "--model", str(model_dir), "--task", str(qa_file), "--rows", "5",
                     "--convention", "paper", "--method", method, "-o",
                     str(tmp_path / method), "--no-progress"]) == 0
    fast = ActivationPattern.load(tmp_path / "gate").scores
    ref = ActivationPattern.load(tmp_path / "reference").scores
    assert float((fast - ref).abs().max() / ref.abs().max()) <= 1e-5


def test_bad_inputs_exit_2_with_a_clear_message(model_dir, qa_file, tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    assert main(["score", "--model", str(model_dir), "--task", str(missing)]) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": ""}\n')
    assert main(["score", "--model", str(model_dir), "--task", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.jsonl" in err and "row 0" in err and "'answer'" in err
    assert main(["score", "--model", str(tmp_path), "--task", str(qa_file)]) == 2
    assert "config.json" in capsys.readouterr().err
    assert main(["show", str(tmp_path / "nothing")]) == 2
    assert "no activation pattern" in capsys.readouterr().err


def test_tasks_lists_builtins(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name in ("arithmetic", "sorting", "word_problems"):
        assert name in out
