"""ActivationPattern storage and the concentration measures (known answers)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from headway.patterns import ActivationPattern
from headway.stats import coefficient_of_variation, entropy, gini


def test_save_load_round_trip(tmp_path):
    per_sample = torch.randn(5, 3, 4)
    p = ActivationPattern(scores=per_sample.abs().mean(0), meta={"task": {"name": "t"}, "n": 5},
                          per_sample=per_sample, loss=torch.rand(5), index=torch.arange(5))
    written = p.save(tmp_path / "sub" / "t")
    assert written.name == "t.safetensors" and (tmp_path / "sub" / "t.json").is_file()
    q = ActivationPattern.load(tmp_path / "sub" / "t.json")  # any suffix names the pair
    assert q.meta == p.meta
    for name in ("scores", "per_sample", "loss", "index"):
        torch.testing.assert_close(getattr(q, name), getattr(p, name))
    assert [f.name for f in (tmp_path / "sub").iterdir() if f.name.startswith(".")] == []


def test_top_heads_order():
    scores = torch.tensor([[0.1, 0.9], [0.5, 0.3]])
    p = ActivationPattern(scores=scores)
    assert [(l, h) for l, h, _ in p.top_heads(3)] == [(0, 1), (1, 0), (1, 1)]


def test_load_rejects_other_files(tmp_path):
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="not a headway activation pattern"):
        ActivationPattern.load(tmp_path / "w.safetensors")


def test_gini_known_answers():
    assert gini(np.ones((4, 5))) == pytest.approx(0.0)
    one_hot = np.zeros(20)
    one_hot[7] = 3.0
    assert gini(one_hot) == pytest.approx(1 - 1 / 20)
    assert gini([1, 2, 3, 4]) == pytest.approx(0.25)  # Σ|xi-xj| / (2 n² mean) = 20 / 80
    with pytest.raises(ValueError):
        gini([1, -1])


def test_cv_and_entropy_known_answers():
    assert coefficient_of_variation(np.full(6, 2.0)) == pytest.approx(0.0)
    assert coefficient_of_variation([1, 3]) == pytest.approx(0.5)  # std 1, mean 2
    assert entropy(np.ones(8)) == pytest.approx(math.log(8))
    assert entropy([0, 0, 5]) == pytest.approx(0.0)


def test_dynamics_on_a_hand_built_trajectory():
    from headway.stats import dynamics

    base = np.arange(1.0, 7.0).reshape(2, 3)
    direction = np.array([[1.0, -1, 0], [0, 1, -1]])
    # moves 3 units of `direction` in the first step, then 1 unit, then nothing
    traj = [base, base + 3 * direction, base + 4 * direction, base + 4 * direction]
    d = dynamics([0, 10, 20, 30], traj)
    assert d["steps"] == [0, 10, 20, 30]
    assert d["mse_prev"] == pytest.approx([0, 9 * 4 / 6, 4 / 6, 0])
    norm0 = np.linalg.norm(base)
    assert d["change"] == pytest.approx([0, 3 * 2 / norm0, 4 * 2 / norm0, 4 * 2 / norm0])
    assert d["step_50"] == 10 and d["step_90"] == 20  # 75 % of the path by step 10
    assert d["corr_prev"][0] == 1.0 and d["corr_final"][-1] == pytest.approx(1.0)
