"""Known-answer tests of the analysis functions and of head ablation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_scoring import random_rows
from tiny_models import tiny_model

from headway import stats
from headway.analysis import fitting
from headway.analysis.ablation import (
    faithfulness,
    head_means,
    permutation_p,
    random_interval,
)
from headway.analysis.head_sets import head_set_losses, layers_run, top_and_random_sets
from headway.models.architectures import decoder_layers
from headway.scoring.hooks import ablated
from headway.scoring.loss import mean_loss


def test_exact_nonnegative_combination_is_recovered():
    rng = np.random.default_rng(0)
    bases = rng.normal(size=(3, 30, 9))
    alpha = np.array([0.7, 0.0, 1.6])
    target = np.tensordot(alpha, bases, axes=1)
    for nonneg in (False, True):
        fit = fitting.composition_fit(target, bases, nonnegative=nonneg)
        assert fit["r2"] == pytest.approx(1.0)
        np.testing.assert_allclose(fit["alpha"], alpha, atol=1e-10)
        assert fit["n"] == 270 and fit["adj_r2"] == pytest.approx(1.0)


def test_nonnegative_fit_clips_a_negative_coefficient():
    x1, x2 = np.array([1.0, 0, 0, 1]), np.array([0, 1.0, 0, 1])
    target = 2 * x1 - 1 * x2
    free = fitting.composition_fit(target, [x1, x2])
    assert free["alpha"] == pytest.approx([2, -1])
    nonneg = fitting.composition_fit(target, [x1, x2], nonnegative=True)
    assert min(nonneg["alpha"]) >= 0 and nonneg["r2"] < 1


def test_bootstrap_interval_covers_the_true_alpha():
    rng = np.random.default_rng(1)
    L, H, N = 6, 4, 60
    bases_true = rng.uniform(0.5, 1.5, size=(2, L, H))

    def task(delta):  # per-sample |scores| before and after, with sample noise
        before = rng.uniform(1, 2, size=(L, H)) + rng.normal(0, 0.05, size=(N, L, H))
        return before, before + delta + rng.normal(0, 0.05, size=(N, L, H))

    bases = [task(b) for b in bases_true]
    target = task(0.4 * bases_true[0] + 1.2 * bases_true[1])
    ci = fitting.bootstrap_composition(target, bases, n_boot=200, seed=0)
    for (low, high), true in zip(ci["alpha_ci"], (0.4, 1.2)):
        assert low <= true <= high and high - low < 0.3
    assert 0.9 < ci["r2_ci"][0] <= ci["r2_ci"][1] <= 1


def test_shuffled_null_separates_composition_from_chance():
    rng = np.random.default_rng(2)
    bases = rng.normal(size=(2, 10, 9))
    composed = bases[0] + 0.5 * bases[1] + rng.normal(0, 0.1, size=(10, 9))
    real = fitting.shuffled_null(composed, bases, n_perm=200)
    assert real["observed_r2"] > 0.9 and real["p_value"] < 0.01 and real["null_mean"] < 0.2
    unrelated = fitting.shuffled_null(rng.normal(size=(10, 9)), bases, n_perm=200)
    assert unrelated["p_value"] > 0.05


def test_leave_one_out_drops_each_basic_task():
    rng = np.random.default_rng(3)
    bases = rng.normal(size=(2, 5, 4))
    out = fitting.leave_one_out(bases[0] + bases[1], bases, ["a", "b"])
    assert set(out) == {"a", "b"} and len(out["a"]["alpha"]) == 1
    assert out["a"]["r2"] < 1 and out["b"]["r2"] < 1


def test_change_concentration_known_answer():
    change = np.array([[8.0, 1, 1], [0, 0, 0]])  # one head of six holds 80 %
    out = fitting.change_concentration(change, delta_ap=-change)
    assert out["share_50"] == pytest.approx(1 / 6)
    assert out["share_90"] == pytest.approx(2 / 6)  # 8 + 1 of 10
    assert out["spearman_with_abs_delta_ap"] == pytest.approx(1.0)


def test_similarity_jaccard_and_clustering():
    a = np.array([[3.0, 2, 1, 0]])
    assert stats.jaccard_top_k(a, a[:, ::-1], 2) == 0.0
    assert stats.jaccard_top_k(a, a * 2, 2) == 1.0
    assert stats.cosine(a, 2 * a) == pytest.approx(1.0)
    assert stats.spearman(a, a ** 2) == pytest.approx(1.0)
    p = {"x": np.array([1.0, 2, 3, 4]), "y": np.array([1.1, 2, 3, 4.2]),
         "z": np.array([4.0, 1, 3, 2]), "w": np.array([4.1, 1, 3.2, 2])}
    sim = stats.similarity_matrix(p)
    assert sim.shape == (4, 4) and np.allclose(np.diag(sim), 1)
    order = stats.cluster_order(sim)
    assert abs(order.index(0) - order.index(1)) == 1 and abs(order.index(2) - order.index(3)) == 1


def test_zero_ablation_equals_zeroing_the_output_projection_columns():
    model = tiny_model("llama")
    rows = random_rows(6, seed=7)
    heads = [(0, 1), (1, 3)]
    with ablated(model, heads, n_heads=4):
        hooked = mean_loss(model, rows, pad_id=0)
    with torch.no_grad():
        for layer, head in heads:
            model.model.layers[layer].self_attn.o_proj.weight[:, head * 8:(head + 1) * 8] = 0
    assert hooked == pytest.approx(mean_loss(model, rows, pad_id=0), rel=1e-6)


def test_mean_ablation_and_faithfulness_report():
    model = tiny_model("llama")
    rows = random_rows(8, seed=8)
    means = head_means(model, rows, pad_id=0)
    assert means.shape == (2, 4, 8)
    base = mean_loss(model, rows, pad_id=0)
    with ablated(model, [], 4, means):
        assert mean_loss(model, rows, pad_id=0) == pytest.approx(base)
    scores = np.arange(8.0).reshape(2, 4)
    out = faithfulness(model, rows, 0, scores, k=2, n_random=5, mode="mean")
    assert out["top_heads"] == ["1.3", "1.2"] and len(out["random_increase"]) == 5
    assert out["base_loss"] == pytest.approx(base)
    low, high = out["random_increase_ci95"]
    assert low <= out["random_increase_mean"] <= high


# ---------------------------------------------------------------- beyond the shared component

L, H, N = 10, 9, 32  # 90 heads, 32 probe rows


def _task(rng, delta, noise=0.05):
    """Per-sample |scores| before and after SFT whose ΔAP is ``delta`` [L, H], with sample
    noise."""
    before = rng.uniform(1, 2, size=(L, H)) + rng.normal(0, noise, size=(N, L, H))
    return before, before + delta + rng.normal(0, noise, size=(N, L, H))


def _deltas(tasks):
    return [after.mean(0) - before.mean(0) for before, after in tasks]


def test_shared_component_plus_noise_gains_nothing():
    """Known answer: every basic ΔAP = a shared shrinkage + its own pattern; the target is the
    shared shrinkage + a pattern of its own (noise to the fit). The full fit's R² is high, but
    it gains nothing over the one-parameter baseline β · mean ΔAP: the gain's interval
    includes 0."""
    rng = np.random.default_rng(10)
    shared = -rng.uniform(0, 1.2, size=(L, H))
    bases = [_task(rng, shared + rng.normal(0, 0.15, size=(L, H))) for _ in range(3)]
    target = _task(rng, 0.8 * shared + rng.normal(0, 0.1, size=(L, H)))
    deltas = _deltas([target, *bases])
    assert fitting.composition_fit(deltas[0], deltas[1:])["r2"] > 0.7
    point = fitting.shared_component(deltas[0], deltas[1:])
    ci = fitting.bootstrap_composition(target, bases, n_boot=200, seed=0)["shared_component"]
    low, high = ci["r2_gain_ci"]
    assert low < 0 < high and abs(point["r2_gain"]) < 0.05
    assert point["r2"] > 0.7 and point["beta"] == pytest.approx(0.8, abs=0.1)


def test_specific_composition_gains_and_recovers_alpha_with_a_control_near_zero():
    """Known answer: target = 0.9 ΔAP_a + 0.4 ΔAP_b (each = shared + specific), fitted on a, b
    and an unrelated control c: a clear gain over the shared component, α near the truth,
    the control's α near 0, and the composition is specific."""
    rng = np.random.default_rng(11)
    shared = -rng.uniform(0.2, 0.6, size=(L, H))
    truth = [shared + rng.normal(0, 0.2, size=(L, H)) for _ in range(3)]
    bases = [_task(rng, d) for d in truth]
    target = _task(rng, 0.9 * truth[0] + 0.4 * truth[1] + rng.normal(0, 0.02, size=(L, H)))
    deltas = _deltas([target, *bases])
    fit = fitting.composition_fit(deltas[0], deltas[1:])
    point = fitting.shared_component(deltas[0], deltas[1:])
    boot = fitting.bootstrap_composition(target, bases, n_boot=200, seed=0)
    assert fit["alpha"][0] == pytest.approx(0.9, abs=0.05)
    assert fit["alpha"][1] == pytest.approx(0.4, abs=0.05)
    assert abs(fit["alpha"][2]) < 0.05
    (a_lo, a_hi), (b_lo, b_hi), (c_lo, c_hi) = boot["alpha_ci"]
    assert a_lo <= 0.9 <= a_hi and b_lo <= 0.4 <= b_hi and c_lo <= 0 <= c_hi
    assert point["r2_gain"] > 0.15 and boot["shared_component"]["r2_gain_ci"][0] > 0.1
    assert fitting.control_verdict(boot["alpha_ci"][:2], boot["alpha_ci"][2:]) is True


def test_control_verdict_rule():
    assert fitting.control_verdict([[0.5, 0.8], [0.3, 0.6]], [[-0.1, 0.2]]) is True
    assert fitting.control_verdict([[0.5, 0.8], [0.1, 0.6]], [[-0.1, 0.2]]) is False
    assert fitting.control_verdict([[0.5, 0.8]], [[-0.7, -0.6]]) is False  # a large |α| counts
    assert fitting.control_verdict([[0.5, 0.8]], []) is None


def test_shared_component_baseline_is_the_mean_of_the_bases():
    rng = np.random.default_rng(12)
    bases = rng.normal(size=(2, 5, 4))
    target = 3 * bases.mean(0)
    out = fitting.shared_component(target, bases)
    assert out["beta"] == pytest.approx(3) and out["r2"] == pytest.approx(1)
    assert out["r2_gain_raw"] == pytest.approx(0, abs=1e-12) and out["r2_gain"] <= 1e-12


# ---------------------------------------------------------------- honest ablation intervals


def test_random_head_sets_never_contain_a_top_head():
    rng = np.random.default_rng(13)
    scores = rng.uniform(size=(6, 5))
    for k in (1, 5, 15):
        top, draws = top_and_random_sets(scores, k, n_random=200, seed=k)
        assert len(draws) == 200 and all(len(set(d)) == k for d in draws)
        assert not any(set(top) & set(d) for d in draws)
        assert set(top) == {divmod(int(i), 5) for i in np.argsort(-scores.ravel())[:k]}
    with pytest.raises(ValueError, match="outside the top"):
        top_and_random_sets(scores, 16, n_random=1)


def test_permutation_p_value_hand_built():
    # top hurts 1.0; of 9 draws, two hurt as much or more (1.0 and 2.0): p = (1 + 2) / 10
    draws = [0.1, 0.2, 1.0, 0.3, 2.0, 0.0, -0.1, 0.5, 0.9]
    assert permutation_p(1.0, draws) == pytest.approx(0.3)
    assert permutation_p(5.0, [0.0] * 19) == pytest.approx(1 / 20)  # the smallest it can be
    assert permutation_p(-1.0, [0.0] * 4) == pytest.approx(1.0)


def test_random_interval_is_labelled_by_what_it_is():
    few = random_interval([0.3, 0.1, 0.2])
    assert (few["kind"], few["low"], few["high"]) == ("range", 0.1, 0.3)
    assert few["label"] == "range (min–max) of 3 random draws"
    many = random_interval(list(np.linspace(0, 1, 41)))
    assert many["kind"] == "percentile" and many["low"] == pytest.approx(0.025)
    assert many["label"] == "2.5–97.5th percentile of 41 random draws"


@pytest.mark.parametrize("family", ["llama", "gemma2", "gpt2", "opt"])
def test_reused_prefix_gives_the_losses_of_full_passes(family):
    """Starting each head set at its first ablated layer from the cached residual stream, and
    batching sets, gives every set's loss of a full pass with that set ablated."""
    model = tiny_model(family)
    rows = random_rows(10, seed=9)
    sets = [[(1, 2)], [(0, 1), (1, 3)], [], [(1, 0), (1, 1)], [(0, 0)], [(1, 3)]]
    means = head_means(model, rows, pad_id=0)
    for m in (None, means):
        base, losses = head_set_losses(model, rows, 0, sets, m, batch_size=4, sets_per_pass=3)
        assert base.mean() == pytest.approx(mean_loss(model, rows, 0, 4), rel=1e-5)
        for heads, row_losses in zip(sets, losses):
            with ablated(model, heads, 4, m):
                assert row_losses.mean() == pytest.approx(mean_loss(model, rows, 0, 4), rel=1e-5)
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(model))
    assert layers_run(sets, 2) == 1 + 0 + 2 + 1 + 2 + 1 < layers_run(sets, 2, reuse=False)


def test_faithfulness_reports_p_value_and_excluded_draws():
    model = tiny_model("llama")
    rows = random_rows(8, seed=8)
    scores = np.arange(8.0).reshape(2, 4)
    out = faithfulness(model, rows, 0, scores, k=2, n_random=20)
    assert len(out["random_heads"]) == 20
    assert not any(set(d) & set(out["top_heads"]) for d in out["random_heads"])
    assert out["p_value"] == pytest.approx(permutation_p(out["top_increase"],
                                                         out["random_increase"]))
    assert out["random_interval"]["kind"] == "percentile"
    assert out["top_beats_random"] == (out["p_value"] <= 0.05)
