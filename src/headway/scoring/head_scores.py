"""Head scores of one batch: s_b[l,h] = <Γ_lh, ∂L/∂Γ_lh> by the gate fast path or the eager
reference (see :mod:`headway.scoring` for the method and the loss conventions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..errors import HeadwayError
from ..models.architectures import text_config, unwrap_model
from .hooks import head_gates
from .loss import response_token_losses

CONVENTIONS = ("sample", "paper")
METHODS = ("gate", "reference")
PAPER_BATCH_SIZE = 4


def default_batch_size(convention: str) -> int:
    """4 for the paper convention (the released script's batch), else 8."""
    return PAPER_BATCH_SIZE if convention == "paper" else 8


class ScoringError(HeadwayError, ValueError):
    """Bad scoring arguments (unknown convention or method, empty input)."""


def check_batch_size(batch_size: int | None, convention: str) -> int:
    """``batch_size``, or the convention's default for None; an error below 1."""
    if batch_size is None:
        return default_batch_size(convention)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScoringError(f"batch_size is {batch_size!r}: rows per batch must be an integer "
                           f">= 1 (None: {default_batch_size(convention)}, the default)")
    return batch_size


def objective(loss_sum: torch.Tensor, n_tokens: torch.Tensor, convention: str) -> torch.Tensor:
    """The scalar L whose gradient defines the scores (see the module docstring)."""
    if convention == "sample":
        return (loss_sum / n_tokens.clamp(min=1)).sum()
    if convention == "paper":
        return loss_sum.sum() / n_tokens.sum().clamp(min=1)
    raise ScoringError(f"unknown loss convention {convention!r}; choose one of {CONVENTIONS}")


@contextlib.contextmanager
def frozen_weights(model: nn.Module) -> Iterator[None]:
    """Turn off weight gradients for the duration (the fast path needs none)."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


FP16_LOSS_SCALE = 2.0 ** 16  # the first scale tried in float16; halved on overflow


def gate_scores(model: nn.Module, batch: dict, n_heads: int, convention: str,
                per_token: list | None = None):
    """Fast path on one batch: ``(scores [B, L, H] signed float32, loss_sum [B], n_tokens [B])``
    (see :class:`headway.scoring.hooks.HeadGate`). With a list ``per_token``, each row's
    contribution of every token position to every head's score is appended to it as one
    ``[B, T, L, H]`` float32 tensor (summed over T it is ``scores``).

    When float16 computes (float16 weights, or float16 autocast: the dtype that reaches the
    output projections decides), the backward pass runs on the loss times a scale (2^16,
    halved while any gradient overflows) so that small gradients do not underflow to zero;
    the scores are divided by it again in float32."""
    scale = None
    while True:
        with torch.enable_grad(), frozen_weights(model), \
                head_gates(model, batch["input_ids"].shape[0], n_heads,
                           per_token is not None) as gates:
            loss_sum, n_tokens, _ = response_token_losses(model, batch)
            if scale is None:  # the compute dtype is known once the forward pass has run
                half = torch.float16 in gates.dtypes
                scale = FP16_LOSS_SCALE if half else 1.0
            grads = torch.autograd.grad(objective(loss_sum, n_tokens, convention) * scale,
                                        gates)
        device = loss_sum.device
        scores = torch.stack([g.to(device) for g in grads], 1)
        if not half or scale <= 1.0 or _finite_everywhere(model, scores):
            if per_token is not None:
                per_token.append(torch.stack([t.to(device) for t in gates.tokens], 2) / scale)
            return scores / scale, loss_sum.detach(), n_tokens
        scale /= 2


def _finite_everywhere(model: nn.Module, scores: torch.Tensor) -> bool:
    """No overflow in ``scores``; of a sharded model, in no process's scores (so that every
    process retries together: each forward is a collective)."""
    from ..models.sharding import is_sharded, sum_over_processes

    overflow = torch.tensor([float(not bool(torch.isfinite(scores).all()))],
                            device=scores.device)
    if is_sharded(model):
        overflow = sum_over_processes(overflow)
    return float(overflow) == 0


@contextlib.contextmanager
def eager_attention(model: nn.Module) -> Iterator[None]:
    """Switch the model to eager attention (which can return Γ) and back. Some families
    (Falcon) keep SDPA through ``set_attn_implementation``; their configs are switched
    directly, so that the attention mask is built for the eager kernel too."""
    model = unwrap_model(model)
    configs = list({id(c): c for c in (model.config, text_config(model.config))}.values())
    previous = [c._attn_implementation for c in configs]
    if all(p == "eager" for p in previous):
        yield
        return
    model.set_attn_implementation("eager")
    for config in configs:
        config._attn_implementation = "eager"
    try:
        yield
    finally:
        model.set_attn_implementation(previous[0])
        for config, value in zip(configs, previous):
            config._attn_implementation = value


def reference_scores(model: nn.Module, batch: dict, n_heads: int, convention: str):
    """Eager reference on one batch: ``(scores [B, L, H] signed, loss_sum [B], n_tokens [B])``.

    Weight gradients are computed as in the released script, then discarded.
    """
    with eager_attention(model), torch.enable_grad():
        loss_sum, n_tokens, attentions = response_token_losses(model, batch,
                                                               output_attentions=True)
        if attentions is None or any(a is None for a in attentions):
            raise ScoringError(f"{type(model).__name__} returned no attention probabilities")
        for a in attentions:
            a.retain_grad()
        objective(loss_sum, n_tokens, convention).backward()
        scores = torch.stack([(a * a.grad).sum((-1, -2)).to(loss_sum.device)
                              for a in attentions], 1)  # layers may sit on other devices
    model.zero_grad(set_to_none=True)
    return scores.float().detach(), loss_sum.detach(), n_tokens
