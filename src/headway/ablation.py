"""Faithfulness: does removing a pattern's top heads hurt the task more than removing random
heads? A head is ablated at the input of its layer's output projection (its slice of
``[B, T, H*d]``), set to zero or to its mean output over the probe data.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from .models import attention_output_projections, head_geometry
from .scoring import collate, make_batches, response_token_losses

MODES = ("zero", "mean")


@contextlib.contextmanager
def ablated(model: nn.Module, heads: Sequence[tuple[int, int]], n_heads: int,
            means: torch.Tensor | None = None) -> Iterator[None]:
    """Within the block, the given ``(layer, head)`` outputs are replaced by zero, or by
    ``means[layer, head]`` ([L, H, d]) when given."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)
    projections = attention_output_projections(model)

    def hook_for(layer: int, chosen: list[int]):
        def pre_hook(module, args):
            x = args[0]
            shape = x.shape
            x = x.view(*shape[:-1], n_heads, -1).clone()
            x[..., chosen, :] = 0 if means is None else means[layer, chosen].to(x.dtype)
            return (x.view(shape), *args[1:])
        return pre_hook

    handles = [projections[l].register_forward_pre_hook(hook_for(l, hs))
               for l, hs in by_layer.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def mean_loss(model: nn.Module, encoded: Sequence, pad_id: int, batch_size: int = 8) -> float:
    """Mean over samples of each sample's mean response-token loss (nats)."""
    device = next(model.parameters()).device
    losses = []
    for rows in make_batches([len(e.input_ids) for e in encoded], batch_size, True):
        batch = collate([encoded[i] for i in rows], pad_id, device=device)
        loss_sum, n_tokens, _ = response_token_losses(model, batch)
        losses.append((loss_sum / n_tokens.clamp(min=1)).cpu())
    return float(torch.cat(losses).mean())


@torch.no_grad()
def head_means(model: nn.Module, encoded: Sequence, pad_id: int, batch_size: int = 8
               ) -> torch.Tensor:
    """Mean output of every head over all real (non-padding) tokens: [L, H, d]."""
    n_layers, n_heads, head_dim = head_geometry(model)
    device = next(model.parameters()).device
    sums = torch.zeros(n_layers, n_heads, head_dim, dtype=torch.float64)
    count = 0
    current = {}

    def hook_for(layer: int):
        def pre_hook(module, args):
            x = args[0].view(*args[0].shape[:-1], n_heads, head_dim)  # [B, T, H, d]
            mask = current["mask"][..., None, None].to(x.dtype)
            sums[layer] += (x * mask).sum((0, 1)).double().cpu()
        return pre_hook

    handles = [p.register_forward_pre_hook(hook_for(i))
               for i, p in enumerate(attention_output_projections(model))]
    try:
        for rows in make_batches([len(e.input_ids) for e in encoded], batch_size, True):
            batch = collate([encoded[i] for i in rows], pad_id, device=device)
            current["mask"] = batch["attention_mask"]
            count += int(batch["attention_mask"].sum())
            response_token_losses(model, batch)
    finally:
        for h in handles:
            h.remove()
    return (sums / count).float()


def faithfulness(model: nn.Module, encoded: Sequence, pad_id: int, scores, k: int = 10,
                 n_random: int = 10, mode: str = "zero", seed: int = 0,
                 batch_size: int = 8) -> dict:
    """Loss increase when ablating the ``k`` top heads of ``scores`` [L, H] versus ``k``
    random heads (``n_random`` draws, none of them all-top).

    Returns base loss, top-k loss and increase, each random draw's increase, their mean and a
    95 % percentile interval, and whether the top-k increase lies above that interval.
    """
    if mode not in MODES:
        raise ValueError(f"ablation mode {mode!r} is not one of {MODES}")
    n_layers, n_heads, _ = head_geometry(model)
    scores = np.asarray(scores, dtype=np.float64)
    flat = np.argsort(-scores.ravel(), kind="stable")
    top = [(int(i) // n_heads, int(i) % n_heads) for i in flat[:k]]
    means = head_means(model, encoded, pad_id, batch_size) if mode == "mean" else None
    was_training = model.training
    model.eval()
    base = mean_loss(model, encoded, pad_id, batch_size)

    def loss_without(heads):
        with ablated(model, heads, n_heads, means):
            return mean_loss(model, encoded, pad_id, batch_size)

    top_loss = loss_without(top)
    rng = np.random.default_rng(seed)
    random_increase = []
    for _ in range(n_random):
        pick = rng.choice(n_layers * n_heads, size=k, replace=False)
        heads = [(int(i) // n_heads, int(i) % n_heads) for i in pick]
        random_increase.append(loss_without(heads) - base)
    model.train(was_training)
    low, high = np.percentile(random_increase, [2.5, 97.5])
    return {"k": k, "mode": mode, "base_loss": base, "top_heads": [f"{l}.{h}" for l, h in top],
            "top_loss": top_loss, "top_increase": top_loss - base,
            "random_increase": random_increase,
            "random_increase_mean": float(np.mean(random_increase)),
            "random_increase_ci95": [float(low), float(high)],
            "top_beats_random": bool(top_loss - base > high)}
