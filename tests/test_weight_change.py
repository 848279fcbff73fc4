"""Parameter change without a copy of the model: W_0 read memory-mapped from the checkpoint."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from headway.training.heads import HeadWeights
from headway.training.weight_change import StartWeights, relative_change, start_weights


def test_start_read_from_files_gives_the_same_change_as_a_copy_and_holds_nothing(llama_dir):
    model = AutoModelForCausalLM.from_pretrained(llama_dir)
    weights = HeadWeights(model)
    from_files = start_weights(model)  # name_or_path is the folder
    assert from_files.source == str(llama_dir) and from_files.nbytes == 0
    snapshot = weights.snapshot()  # the old float32 copy, for comparison
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    a, b = relative_change(weights, from_files), weights.relative_change(snapshot)
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
    assert isinstance(StartWeights.from_folder(llama_dir, HeadWeights(model)), StartWeights)
