"""Scores in reduced precision: the gate's sum over tokens is accumulated in float32; float16
runs with loss scaling so that no score underflows to zero."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import spearmanr
from tiny_models import tiny_model

import headway
from headway.scoring.hooks import HeadGate

ROWS = [{"question": f"What is {i} + {2 * i}?", "answer": f"{3 * i}"} for i in range(8)]


def test_gate_backward_sums_in_float32():
    """<x, g> per head over 4096 tokens of bfloat16 values: the float32 accumulation equals
    the float64 sum of the same bfloat16 numbers to float32 precision."""
    torch.manual_seed(0)
    x = torch.randn(2, 4096, 4 * 8, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(2, 4096, 4 * 8, dtype=torch.bfloat16)
    gate = torch.ones(2, 4, requires_grad=True)
    (HeadGate.apply(x, gate) * grad.float()).sum().backward()
    exact = (x.detach().double() * grad.double()).view(2, 4096, 4, 8).sum((1, 3))
    assert gate.grad.dtype == torch.float32
    torch.testing.assert_close(gate.grad.double(), exact, rtol=1e-5, atol=1e-4)
    rounded = (x.detach() * grad).view(2, 4096, 4, 8).sum((1, 3))  # summed in bfloat16
    assert float((rounded.double() - exact).abs().max()) > float(
        (gate.grad.double() - exact).abs().max())


def test_float16_and_bfloat16_scores_agree_with_float32(byte_tokenizer):
    reference = headway.score(tiny_model("llama"), byte_tokenizer, ROWS, per_sample=True,
                              progress=False)
    for dtype in (torch.bfloat16, torch.float16):
        model = tiny_model("llama").to(dtype)
        pattern = headway.score(model, byte_tokenizer, ROWS, per_sample=True, progress=False)
        assert pattern.meta["n_zero_scores"] == 0  # nothing underflowed
        rho = spearmanr(pattern.scores.flatten().numpy(),
                        reference.scores.flatten().numpy()).statistic
        assert rho > 0.95, (dtype, rho)
        rel = float((pattern.scores - reference.scores).abs().max() / reference.scores.max())
        assert rel < 0.1, (dtype, rel)
        assert np.isfinite(pattern.per_sample.numpy()).all()
