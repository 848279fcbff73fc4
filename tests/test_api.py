"""The public API as a researcher reaches for it: rows chosen from Python as on the command
line, mix-ups caught with one line, results as objects (patterns, comparisons, runs),
per-token attribution."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import make_byte_tokenizer
from tiny_models import tiny_model

import headway
from headway.cli import main
from headway.errors import HeadwayError

ROWS = [{"question": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)} for i in range(12)]


@pytest.fixture
def model():
    return tiny_model("llama")


@pytest.fixture
def tokenizer():
    return make_byte_tokenizer()


def test_rows_from_python_are_the_rows_of_the_command_line(llama_dir, tmp_path, capsys):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "cli"
    assert main(["score", "--model", str(llama_dir), "--task", str(data), "--rows", "4",
                 "--offset", "3", "--shuffle", "--seed", "7", "--per-sample", "-o", str(out),
                 "--no-progress"]) == 0
    cli = headway.load_pattern(out)
    ours = headway.score(str(llama_dir), data=str(data), rows=4, offset=3, shuffle=True,
                         seed=7, per_sample=True, progress=False)
    assert torch.equal(ours.index, cli.index) and ours.index.tolist() != [3, 4, 5, 6]
    assert torch.equal(ours.per_sample, cli.per_sample)
    # the same selection from in-memory rows
    inline = headway.score(str(llama_dir), data=ROWS, rows=4, offset=3, shuffle=True, seed=7,
                           per_sample=True, progress=False)
    assert torch.equal(inline.index, cli.index)
    assert torch.allclose(inline.per_sample, cli.per_sample, rtol=1e-5, atol=1e-9)
    capsys.readouterr()


@pytest.mark.parametrize("call, message", [
    (lambda m, t: headway.score(m, ROWS), "the second argument is a list, not a tokenizer"),
    (lambda m, t: headway.score(m, t, ROWS, batch_size=0), "batch_size is 0"),
    (lambda m, t: headway.score(m, t, ROWS, rows=0), "rows is 0"),
    (lambda m, t: headway.PatternCallback(ROWS, t), "probes must be a mapping"),
    (lambda m, t: headway.PatternCallback({"p": ROWS}, ROWS), "not a tokenizer"),
])
def test_mix_ups_are_one_line_errors(model, tokenizer, call, message):
    with pytest.raises(HeadwayError, match=message) as err:
        call(model, tokenizer)
    assert "\n" not in str(err.value)


def test_a_tokenizer_of_another_model_is_refused(tokenizer):
    import transformers as tf

    small = tf.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
    model = tf.AutoModelForCausalLM.from_config(small)
    with pytest.raises(HeadwayError, match="embeddings hold 100 ids"):
        headway.score(model, tokenizer, ROWS, progress=False)


def test_after_minus_before_is_delta_and_warns_on_mixed_dtypes(model, tokenizer):
    before = headway.score(model, tokenizer, ROWS, rows=6, progress=False)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.mul_(1.5)
    after = headway.score(model, tokenizer, ROWS, rows=6, progress=False)
    assert torch.equal((after - before).scores, headway.delta(after, before).scores)
    assert "ΔAP" in repr(after - before)
    other = headway.score(model.to(torch.bfloat16), tokenizer, ROWS, rows=6, progress=False)
    with pytest.warns(UserWarning, match="bfloat16 pattern and a float32 one"):
        other - before
    with pytest.raises(HeadwayError, match="data_hash"):
        headway.score(model, tokenizer, ROWS, rows=5, progress=False) - before


def test_pattern_as_frames_and_arrays(model, tokenizer):
    pattern = headway.score(model, tokenizer, ROWS, rows=3, per_sample=True, progress=False)
    frame = pattern.to_pandas()
    assert list(frame.columns[:4]) == ["layer", "head", "score", "rank"]
    assert len(frame) == 8 and sorted(frame["rank"]) == list(range(1, 9))
    best = frame.sort_values("rank").iloc[0]
    assert (int(best["layer"]), int(best["head"])) == pattern.top_heads(1)[0][:2]
    assert [c for c in frame.columns if c.startswith("sample_")] == ["sample_0", "sample_1",
                                                                     "sample_2"]
    assert pattern.numpy().shape == (2, 4)
    assert "2 layers x 4 heads" in repr(pattern) and "N = 3" in repr(pattern)


def test_comparison_ranks_heads_by_score_best_first(llama_dir, tmp_path):
    """Heads come back as (layer, head, score), ranked numerically (11.6 after 9.7 when it
    scores less), not sorted as text."""
    from headway.analysis.compare import Comparison
    from headway.patterns import ActivationPattern

    a = torch.zeros(12, 8)
    b = torch.zeros(12, 8)
    a[9, 7], a[11, 6], a[2, 2] = 3.0, 2.0, 1.0
    b[11, 6], b[10, 1], b[9, 7], b[0, 0] = 5.0, 4.0, 0.5, 6.0
    meta = {"task": {"data_hash": "x"}, "n_samples": 1}
    comparison = Comparison(ActivationPattern(a, meta), ActivationPattern(b, meta), k=3)
    assert comparison.gained == [(0, 0, 6.0), (10, 1, 4.0)]
    assert comparison.lost == [(9, 7, 3.0), (2, 2, 1.0)]
    assert comparison.summary()["gained"] == ["0.0", "10.1"]
    folder = comparison.save(tmp_path / "cmp")
    assert json.loads((folder / "compare.json").read_text())["lost"] == ["9.7", "2.2"]
    rows = [{"question": "1 + 1 =", "answer": "2"}, {"question": "2 + 2 =", "answer": "4"}]
    result = headway.compare(str(llama_dir), str(llama_dir), data=rows, progress=False)
    assert isinstance(result, Comparison) and float(result.delta.scores.abs().max()) == 0


def test_load_run_metrics_are_the_metrics_file(llama_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--model", str(llama_dir), "--task", "arithmetic", "--rows", "8",
                 "--max_steps", "4", "--per_device_train_batch_size", "4", "--probe_rows", "4",
                 "--track_every", "2", "--track_schedule", "every", "--logging_steps", "1",
                 "--output_dir", str(run_dir), "--disable_tqdm", "true", "--save_final",
                 "false"]) == 0
    capsys.readouterr()
    run = headway.load_run(run_dir)
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    frame = run.metrics
    assert len(frame) == len(lines)
    assert frame["step"].tolist() == [r["step"] for r in lines]
    probes = [r for r in lines if r["kind"] == "probe"]
    assert frame.loc[frame.kind == "probe", "probes/arithmetic/loss"].tolist() == [
        r["probes"]["arithmetic"]["loss"] for r in probes]
    assert run.steps == [0, 2, 4] and run.probes == ["arithmetic"]
    assert torch.equal(run.delta().scores, run.patterns["arithmetic"][4].scores
                       - run.patterns["arithmetic"][0].scores)
    assert set(run.param_change) == {0, 2, 4} and run.param_change[4]["attn"].shape == (2, 4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_per_token_values_sum_to_the_per_sample_scores(family, tokenizer, tmp_path):
    model = tiny_model(family)
    pattern = headway.score(model, tokenizer, ROWS, rows=5, per_token=True, progress=False)
    assert len(pattern.per_token) == 5 and len(pattern.tokens[0]) == pattern.per_token[0].shape[0]
    sums = torch.stack([t.sum(0) for t in pattern.per_token])
    rel = float((sums - pattern.per_sample).abs().max() / pattern.per_sample.abs().max())
    assert rel <= 1e-5
    assert pattern.response[0][-1] and not pattern.response[0][0]  # EOS is the response's
    pattern.save(tmp_path / "p")
    again = headway.load_pattern(tmp_path / "p")
    assert all(torch.equal(a, b) for a, b in zip(again.per_token, pattern.per_token))
    assert again.tokens == pattern.tokens and again.response == pattern.response
    ax = again.token_view(1, 1, 2)
    assert len(ax.texts) == len(pattern.tokens[1])


def test_analyze_returns_the_fields_of_analysis_json(llama_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", "--model", str(llama_dir), "--task", "arithmetic", "--rows", "8",
                 "--max_steps", "2", "--per_device_train_batch_size", "4", "--probe_rows", "4",
                 "--output_dir", str(run_dir), "--disable_tqdm", "true", "--save_final",
                 "false"]) == 0
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis = headway.analyze(runs=[run_dir], output_dir=tmp_path / "a", progress=False)
    saved = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert analysis.to_dict() == json.loads(json.dumps(saved))
    assert list(analysis.runs) == ["arithmetic"] and analysis.path == tmp_path / "a"
    unsaved = headway.analyze(runs=[run_dir], progress=False)
    assert unsaved.path is None and unsaved.runs.keys() == analysis.runs.keys()
    assert headway.Analysis.load(tmp_path / "a").to_dict() == analysis.to_dict()
