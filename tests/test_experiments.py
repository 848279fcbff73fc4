"""Applications: mixture arithmetic, selection ranking, answer checking, evaluation, the
no-overlap check, and headway eval | mix | select | modes end to end on a tiny model."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from headway.cli import main
from headway.data.tasks import load_task
from headway.experiments.evaluation import (
    EvalError,
    answer_checker,
    check_disjoint,
    extract_answer,
    gsm_answer,
    wilson_interval,
)
from headway.experiments.mixing import (
    MixingError,
    alpha_to_counts,
    random_counts,
    similarity_ranking,
    top_n,
)

# ---------------------------------------------------------------- mixture arithmetic


def test_alpha_to_counts_known_answers():
    assert alpha_to_counts([0.5, 0.25, 0.25], 10) == [5, 3, 2]  # tie: earlier task
    assert alpha_to_counts([1.0, -1.0, 1.0], 3) == [2, 0, 1]  # negative α clipped to 0
    assert alpha_to_counts([0.0, 2.0], 7) == [0, 7]
    assert alpha_to_counts([1, 1, 1], 0) == [0, 0, 0]


@pytest.mark.parametrize("seed", range(20))
def test_alpha_to_counts_keeps_total_and_stays_within_one(seed):
    rng = np.random.default_rng(seed)
    alpha = rng.normal(size=rng.integers(1, 8))
    alpha[0] = abs(alpha[0]) + 1e-3  # at least one positive weight
    total = int(rng.integers(0, 500))
    counts = alpha_to_counts(alpha, total)
    clipped = np.clip(alpha, 0, None)
    exact = total * clipped / clipped.sum()
    assert sum(counts) == total
    assert all(c >= 0 for c in counts)
    assert np.all(np.abs(np.array(counts) - exact) < 1)
    assert all(c == 0 for c, a in zip(counts, alpha) if a <= 0)


def test_alpha_to_counts_refuses_no_positive_weight():
    with pytest.raises(MixingError, match="no positive weight"):
        alpha_to_counts([-0.2, 0.0], 10)


def test_random_counts_sum_and_seed():
    assert sum(random_counts(5, 128, seed=3)) == 128
    assert random_counts(5, 128, seed=3) == random_counts(5, 128, seed=3)
    assert random_counts(5, 128, seed=3) != random_counts(5, 128, seed=4)


def test_similarity_ranking_hand_built():
    target = np.arange(6, dtype=float).reshape(2, 3)
    samples = np.stack([-2 * target,  # |s| = 2·target: Pearson 1
                        target[::-1],  # reversed rows
                        np.ones((2, 3))])  # constant: no correlation defined -> 0
    sim = similarity_ranking(samples, target)
    assert sim[0] == pytest.approx(1.0)
    assert sim[1] == pytest.approx(np.corrcoef(target[::-1].ravel(), target.ravel())[0, 1])
    assert sim[2] == 0.0
    assert sim[1] < 0 and top_n(sim, 2) == [0, 2]
    assert similarity_ranking(samples, target, "cosine")[0] == pytest.approx(1.0)
    with pytest.raises(MixingError):
        top_n(sim, 4)


# ---------------------------------------------------------------- answers and intervals


def test_gsm_answer_and_extraction():
    assert gsm_answer("She pays 3 + 4 = 7.\n#### 1,234") == 1234
    assert gsm_answer("so the answer is 12.5 dollars") == 12.5
    assert gsm_answer("no number") is None
    assert extract_answer("\n 42 \nQuestion: next", "41") == "42"
    assert extract_answer("a\nb", "x\ny") == "a\nb"  # multi-line references keep everything


@pytest.mark.parametrize("name", ["arithmetic", "chain_sum", "sorting", "syllogism",
                                  "leg_counting", "word_problems"])
def test_reasoning_gym_checker_accepts_reference_and_rejects_wrong(name):
    task = load_task(name, n=4, offset=50)
    kind, check = answer_checker(task)
    assert kind == "reasoning_gym"
    for i, e in enumerate(task.examples):
        assert check(i, e.response, e.response) == 1.0
        assert check(i, e.response + "\nQuestion: and more", e.response) == 1.0
        assert check(i, "I do not know", e.response) < 1.0


def test_gsm_and_exact_checkers(tmp_path):
    gsm = tmp_path / "gsm.jsonl"
    gsm.write_text("".join(json.dumps({"question": f"q{i}", "answer": f"steps\n#### {i * 10}"})
                           + "\n" for i in range(3)))
    kind, check = answer_checker(load_task(str(gsm)))
    assert kind == "gsm8k"
    assert check(0, "reasoning... #### 20", "steps\n#### 20") == 1.0
    assert check(0, "I think 2, no, 20", "steps\n#### 20") == 1.0  # last number
    assert check(0, "#### 21", "steps\n#### 20") == 0.0
    plain = tmp_path / "plain.jsonl"
    plain.write_text(json.dumps({"prompt": "capital of France?", "response": "Paris"}) + "\n")
    kind, check = answer_checker(load_task(str(plain)))
    assert kind == "exact_match"
    assert check(0, " Paris\nmore", "Paris") == 1.0 and check(0, "paris", "Paris") == 0.0


def test_wilson_interval():
    low, high = wilson_interval(0, 32)
    assert low == 0.0 and high == pytest.approx(0.1072, abs=1e-4)
    low, high = wilson_interval(16, 32)
    assert 0.5 - low == pytest.approx(high - 0.5)


# ---------------------------------------------------------------- no overlap


def test_reasoning_gym_rows_alias_across_seeds_and_the_check_sees_it():
    # reasoning-gym builds row i of seed S from Random(S + i): row 0 of seed 1 is row 1 of seed 0
    assert (load_task("arithmetic", n=3, seed=1).examples[0].prompt
            == load_task("arithmetic", n=3, offset=1).examples[0].prompt)
    evaluation = load_task("arithmetic", n=4, seed=1)  # rows 0..3 of seed 1 = rows 1..4 of seed 0
    trained = load_task("arithmetic", n=3)  # rows 0..2 of seed 0
    with pytest.raises(EvalError, match=r"rows \[0, 1\]"):
        check_disjoint(evaluation, [(trained.source, [e.index for e in trained.examples])])


def test_batched_generation_equals_one_row_at_a_time(llama_dir):
    from headway.experiments.evaluation import generate
    from headway.models.loading import load_model

    lm = load_model(str(llama_dir))
    prompts = [f"Question: {e.prompt}\nAnswer: " for e in load_task("chain_sum", n=5).examples]
    batched = generate(lm, prompts, 6, batch_size=5, progress=False)
    single = [generate(lm, [p], 6, batch_size=1, progress=False)[0] for p in prompts]
    assert batched == single and any(batched)


def test_check_disjoint_names_overlapping_rows():
    evaluation = load_task("arithmetic", n=5, offset=10)
    check_disjoint(evaluation, [(evaluation.source, range(10))])  # rows 0..9: fine
    check_disjoint(evaluation, [(load_task("sorting", n=2).source, range(20))])  # other task
    with pytest.raises(EvalError, match=r"rows \[12, 13\]"):
        check_disjoint(evaluation, [(evaluation.source, [12, 13, 40])])


def test_eval_cli_refuses_training_rows_and_evaluates_held_out_rows(llama_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", str(llama_dir), "--task", "arithmetic", "--rows", "8",
                 "--max_steps", "1", "--per_device_train_batch_size", "4", "--tracking",
                 "false", "--save_final", "false", "--disable_tqdm", "true",
                 "--output_dir", str(run)]) == 0
    assert main(["eval", "--model", str(llama_dir), "--task", "arithmetic", "-n", "4",
                 "--offset", "6", "--train-run", str(run), "--no-progress"]) == 2
    assert "rows [6, 7]" in capsys.readouterr().err
    out = tmp_path / "eval.json"
    assert main(["eval", "--model", str(llama_dir), "--task", "arithmetic", "-n", "4",
                 "--offset", "8", "--train-run", str(run), "--no-progress",
                 "-o", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n"] == 4 and [r["index"] for r in result["rows"]] == [8, 9, 10, 11]
    assert 0 <= result["accuracy"] <= 1 and result["checker"] == "reasoning_gym"
    # the response loss is the same per-sample mean loss that scoring reports
    assert main(["score", "--model", str(llama_dir), "--task", "arithmetic", "-n", "4",
                 "--offset", "8", "--no-progress", "-o", str(tmp_path / "p")]) == 0
    meta = json.loads((tmp_path / "p.json").read_text())
    assert result["response_loss"] == pytest.approx(meta["mean_loss"], rel=1e-4)


# ---------------------------------------------------------------- experiments end to end

COMMON = ["--target", "chain_sum", "--target-rows", "8", "--eval-rows", "4", "--batch-size",
          "4", "--learning-rate", "1e-2", "--no-progress"]


def _results(folder):
    return json.loads((folder / "results.json").read_text())


def test_mix_end_to_end_and_resume(llama_dir, tmp_path, capsys):
    out = tmp_path / "mix"
    args = ["mix", "--model", str(llama_dir), *COMMON, "--basics", "arithmetic", "syllogism",
            "--seeds", "0", "1", "--total", "10", "--stage1-steps", "2", "--stage2-steps", "1",
            "--delta-rows", "8", "--delta-steps", "2", "--probe-rows", "4", "-o", str(out)]
    assert main(args) == 0
    target_run = json.loads((out / "alpha" / "chain_sum" / "manifest.json").read_text())
    # the scarce target is probed on its own training rows, the basic tasks on held-out rows
    assert target_run["probes"][0]["data_hash"] == target_run["train_task"]["data_hash"]
    basic_run = json.loads((out / "alpha" / "arithmetic" / "manifest.json").read_text())
    assert basic_run["probes"][0]["data_hash"] != basic_run["train_task"]["data_hash"]
    alpha = json.loads((out / "alpha" / "alpha.json").read_text())
    assert sum(alpha["counts"]) == 10 and alpha["counts"] == alpha_to_counts(alpha["alpha"], 10)
    for seed in (0, 1):
        lines = [json.loads(x) for x in (out / "arms" / f"pattern_mix-seed{seed}" /
                                         "data.jsonl").read_text().splitlines()]
        assert Counter(r["task"] for r in lines) == {
            t: c for t, c in zip(["arithmetic", "syllogism"], alpha["counts"]) if c}
        random_lines = (out / "arms" / f"random_mix-seed{seed}" / "data.jsonl").read_text()
        assert len(random_lines.splitlines()) == 10
    results = _results(out)
    arms = results["summary"]["arms"]
    assert set(arms) == {"base", "pattern_mix", "random_mix", "target_only"}
    assert arms["pattern_mix"]["seeds"] == [0, 1] and arms["pattern_mix"]["steps"] == 3
    assert arms["target_only"]["steps"] == 3  # equal steps
    hashes = {r["task"]["data_hash"] for r in results["results"]}
    assert len(hashes) == 1  # every arm on the same evaluation rows
    assert (out / "table.md").read_text().startswith("| arm |")
    assert not (out / "arms" / "pattern_mix-seed0" / "stage2" / "final").exists()
    capsys.readouterr()
    assert main(args) == 0  # everything is reused
    assert capsys.readouterr().out.count("reusing") == 3 + 1 + 3 * 2


def test_experiment_refuses_evaluation_rows_that_are_training_rows(llama_dir, tmp_path, capsys):
    assert main(["modes", "--model", str(llama_dir), *COMMON, "--eval-offset", "6", "--seeds",
                 "0", "-o", str(tmp_path / "m")]) == 2
    assert "rows [6, 7]" in capsys.readouterr().err
    assert not (tmp_path / "m" / "arms").exists()  # refused before any training


def test_select_end_to_end(llama_dir, tmp_path):
    out = tmp_path / "select"
    assert main(["select", "--model", str(llama_dir), *COMMON, "--basics", "arithmetic",
                 "sorting", "--seeds", "0", "--pool-rows", "6", "--top-n", "4",
                 "--stage1-steps", "1", "--stage2-steps", "1", "-o", str(out)]) == 0
    ranking = json.loads((out / "selection" / "ranking.json").read_text())
    assert len(ranking["ranking"]) == 12
    # the ranking's similarities are those of the stored per-row patterns to the target's
    from headway.patterns import ActivationPattern
    target = ActivationPattern.load(out / "selection" / "target").scores
    for task in ("arithmetic", "sorting"):
        pool = ActivationPattern.load(out / "selection" / "pool" / task)
        expected = dict(zip(pool.index.tolist(), similarity_ranking(pool.per_sample, target)))
        for r in ranking["ranking"]:
            if r["task"] == task:
                assert r["similarity"] == pytest.approx(expected[r["row"]])
    chosen = [json.loads(x) for x in (out / "arms" / "selected-seed0" / "data.jsonl")
              .read_text().splitlines()]
    top = {(r["task"], r["row"]) for r in ranking["ranking"][:4]}
    assert {(r["task"], r["row"]) for r in chosen} == top
    assert set(_results(out)["summary"]["arms"]) == {"base", "selected", "random"}


def test_modes_end_to_end_and_lora_weights_load_merged(llama_dir, tmp_path):
    from headway.models.loading import load_model

    out = tmp_path / "modes"
    assert main(["modes", "--model", str(llama_dir), *COMMON, "--seeds", "0", "--steps", "2",
                 "--top-k", "2", "--keep-weights", "-o", str(out)]) == 0
    arms = _results(out)["summary"]["arms"]
    assert set(arms) == {"base", "full", "lora", "heads"}
    n = {m: arms[m]["n_trainable_parameters"] for m in ("full", "lora", "heads")}
    assert 0 < n["heads"] < n["full"] and 0 < n["lora"] < n["full"]
    base = load_model(str(llama_dir))
    lora = load_model(str(out / "arms" / "lora-seed0" / "stage1" / "final"))
    assert "base_model" in lora.info
    changed = [not torch.equal(a, b) for a, b in zip(base.model.parameters(),
                                                      lora.model.parameters())]
    assert any(changed) and not all(changed)  # adapters merged into the adapted weights only
