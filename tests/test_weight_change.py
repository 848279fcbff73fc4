"""Parameter change without a copy of the model: W_0 read memory-mapped from the checkpoint."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from headway.models.architectures import resolve
from headway.training.weight_change import (
    StartWeights,
    relative_change,
    snapshot,
    start_weights,
)


def test_start_read_from_files_gives_the_same_change_as_a_copy_and_holds_nothing(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    weights = resolve(model)
    from_files = start_weights(model)  # name_or_path is the folder
    assert from_files.source == str(llama_dir) and from_files.nbytes == 0
    copy = snapshot(weights)  # a float32 copy, for comparison
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    a, b = relative_change(weights, from_files), relative_change(weights, copy)
    for key in ("q", "k", "v", "o", "attn", "mlp"):
        torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=0)
    assert float(a["attn"].min()) > 0


def test_a_model_changed_after_loading_is_copied_and_a_lost_start_is_none(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
        model.model.layers[0].self_attn.q_proj.weight.mul_(2)
    start = start_weights(model)  # the files no longer hold these weights
    assert start.source == "memory" and start.nbytes > 0
    assert start_weights(model, folder="/nonexistent", now_is_start=False) is None
    assert isinstance(StartWeights.from_folder(llama_dir, resolve(model)), StartWeights)


@pytest.mark.parametrize("role, transposed", [("q", False), ("k", False), ("o", False),
                                              ("o", True)])
def test_per_head_norms_of_any_row_split_add_up_to_the_whole(role, transposed):
    """A sharded weight's per-head norms are summed over processes: any split of its stored
    rows (uneven, an empty one, splits inside a head) must add up to the whole weight's norms.
    4 query heads of 8 dims, 2 key/value heads (grouped-query); o as nn.Linear ([out, H*d],
    heads along the columns) and as GPT-2's Conv1D ([H*d, out], heads along the rows)."""
    from headway.training.weight_change import per_head_sq

    heads = torch.arange(4)
    unit = heads if role in "qo" else heads // 2
    index = unit[:, None] * 8 + torch.arange(8)  # [H, d]
    rows = {"q": 32, "k": 16, "o": 32 if transposed else 24}[role]
    cols = 24 if role in "qk" or transposed else 32
    along_rows = role != "o" or transposed
    w = torch.randn(rows, cols)
    whole = per_head_sq(w, 0, rows, index, along_rows)
    bounds = [0, 3, 3, 13, 16, rows]  # uneven, one empty, boundaries inside heads
    pieces = sum(per_head_sq(w[a:b], a, rows, index, along_rows)
                 for a, b in zip(bounds, bounds[1:]))
    torch.testing.assert_close(pieces, whole, rtol=1e-6, atol=0)
    if role == "k":  # one norm per key/value head, shared by its 2 query heads
        expected = w.view(2, 8, cols).pow(2).sum((1, 2)).repeat_interleave(2)
    elif role == "o" and not transposed:  # heads are columns
        expected = w.view(rows, 4, 8).pow(2).sum((0, 2))
    else:  # heads are rows
        expected = w.view(4, 8, cols).pow(2).sum((1, 2))
    torch.testing.assert_close(whole, expected, rtol=1e-6, atol=0)
