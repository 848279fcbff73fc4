"""Known-answer tests of the analysis functions and of head ablation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_scoring import random_rows
from tiny_models import tiny_model

from headway.analysis import stats as A
from headway.analysis.ablation import ablated, faithfulness, head_means, mean_loss


def test_exact_nonnegative_combination_is_recovered():
    rng = np.random.default_rng(0)
    bases = rng.normal(size=(3, 30, 9))
    alpha = np.array([0.7, 0.0, 1.6])
    target = np.tensordot(alpha, bases, axes=1)
    for nonneg in (False, True):
        fit = A.composition_fit(target, bases, nonnegative=nonneg)
        assert fit["r2"] == pytest.approx(1.0)
        np.testing.assert_allclose(fit["alpha"], alpha, atol=1e-10)
        assert fit["n"] == 270 and fit["adj_r2"] == pytest.approx(1.0)


def test_nonnegative_fit_clips_a_negative_coefficient():
    x1, x2 = np.array([1.0, 0, 0, 1]), np.array([0, 1.0, 0, 1])
    target = 2 * x1 - 1 * x2
    free = A.composition_fit(target, [x1, x2])
    assert free["alpha"] == pytest.approx([2, -1])
    nonneg = A.composition_fit(target, [x1, x2], nonnegative=True)
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
    ci = A.bootstrap_composition(target, bases, n_boot=200, seed=0)
    for (low, high), true in zip(ci["alpha_ci"], (0.4, 1.2)):
        assert low <= true <= high and high - low < 0.3
    assert 0.9 < ci["r2_ci"][0] <= ci["r2_ci"][1] <= 1


def test_shuffled_null_separates_composition_from_chance():
    rng = np.random.default_rng(2)
    bases = rng.normal(size=(2, 10, 9))
    composed = bases[0] + 0.5 * bases[1] + rng.normal(0, 0.1, size=(10, 9))
    real = A.shuffled_null(composed, bases, n_perm=200)
    assert real["observed_r2"] > 0.9 and real["p_value"] < 0.01 and real["null_mean"] < 0.2
    unrelated = A.shuffled_null(rng.normal(size=(10, 9)), bases, n_perm=200)
    assert unrelated["p_value"] > 0.05


def test_leave_one_out_drops_each_basic_task():
    rng = np.random.default_rng(3)
    bases = rng.normal(size=(2, 5, 4))
    out = A.leave_one_out(bases[0] + bases[1], bases, ["a", "b"])
    assert set(out) == {"a", "b"} and len(out["a"]["alpha"]) == 1
    assert out["a"]["r2"] < 1 and out["b"]["r2"] < 1


def test_change_concentration_known_answer():
    change = np.array([[8.0, 1, 1], [0, 0, 0]])  # one head of six holds 80 %
    out = A.change_concentration(change, delta_ap=-change)
    assert out["share_50"] == pytest.approx(1 / 6)
    assert out["share_90"] == pytest.approx(2 / 6)  # 8 + 1 of 10
    assert out["spearman_with_abs_delta_ap"] == pytest.approx(1.0)


def test_similarity_jaccard_and_clustering():
    a = np.array([[3.0, 2, 1, 0]])
    assert A.jaccard_top_k(a, a[:, ::-1], 2) == 0.0
    assert A.jaccard_top_k(a, a * 2, 2) == 1.0
    assert A.cosine(a, 2 * a) == pytest.approx(1.0)
    assert A.spearman(a, a ** 2) == pytest.approx(1.0)
    p = {"x": np.array([1.0, 2, 3, 4]), "y": np.array([1.1, 2, 3, 4.2]),
         "z": np.array([4.0, 1, 3, 2]), "w": np.array([4.1, 1, 3.2, 2])}
    sim = A.similarity_matrix(p)
    assert sim.shape == (4, 4) and np.allclose(np.diag(sim), 1)
    order = A.cluster_order(sim)
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
