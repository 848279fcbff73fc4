"""The one mechanism that touches a head's slice: the input of each layer's attention output
projection, ``x`` of shape ``[B, T, H*d]``, where head h owns columns ``h*d:(h+1)*d``.

:func:`on_head_slices` registers a forward pre-hook on every output projection and removes
them on exit; scoring (the gate), ablation (zero or mean) and head means all go through it.

:class:`HeadGate` is the gate of the fast path: an identity in the forward pass whose
backward gives, for every sample and head, s[b, h] = <x_bh, ∂L/∂x_bh> (summed over tokens
and the head's d columns), accumulated in float32 whatever the activation dtype.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

from ..models.architectures import attention_output_projections

SliceFn = Callable[[int, torch.Tensor], "torch.Tensor | None"]


@contextlib.contextmanager
def on_head_slices(model: nn.Module, fn: SliceFn) -> Iterator[list[nn.Module]]:
    """Within the block, every forward pass calls ``fn(layer, x)`` with the head slice ``x``
    ``[B, T, H*d]`` of each layer; a tensor it returns replaces ``x``. Yields the output
    projections (one per layer, on their layer's device)."""
    projections = attention_output_projections(model)

    def hook_for(layer: int):
        def pre_hook(module, args):
            out = fn(layer, args[0])
            return None if out is None else (out, *args[1:])
        return pre_hook

    handles = [p.register_forward_pre_hook(hook_for(i)) for i, p in enumerate(projections)]
    try:
        yield projections
    finally:
        for handle in handles:
            handle.remove()


def split_heads(x: torch.Tensor, n_heads: int) -> torch.Tensor:
    """``[..., H*d]`` -> ``[..., H, d]`` (a view)."""
    return x.view(*x.shape[:-1], n_heads, -1)


class HeadGate(torch.autograd.Function):
    """``y = x`` (``[B, T, H*d]``), with ``∂L/∂gate[b, h] = Σ_t Σ_j x[b,t,h,j] ∂L/∂y[b,t,h,j]``
    computed in float32: exactly what a multiplicative gate g = 1 would receive, without
    rounding the sum to the activation dtype. With a ``tokens`` list, the sum before it runs
    over tokens, ``[B, T, H]`` float32, is put at ``tokens[layer]`` (per-token attribution)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, gate: torch.Tensor, tokens: list | None = None,
                layer: int = 0) -> torch.Tensor:
        ctx.save_for_backward(x)
        ctx.n_heads, ctx.tokens, ctx.layer = gate.shape[-1], tokens, layer
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        per_token = (split_heads(x, ctx.n_heads).float()
                     * split_heads(grad, ctx.n_heads).float()).sum(dim=3)  # [B, T, H]
        if ctx.tokens is not None:
            ctx.tokens[ctx.layer] = per_token
        return grad, per_token.sum(1), None, None


class Gates(list):
    """The gates of one forward pass (one float32 leaf ``[B, H]`` per layer), with the dtypes
    that reached the output projections (the compute dtype: bfloat16 under autocast) and,
    when per-token attribution is on, ``tokens``: per layer ``[B, T, H]`` after the backward
    pass."""

    def __init__(self, per_token: bool = False):
        super().__init__()
        self.dtypes: set[torch.dtype] = set()
        self.tokens: list | None = [] if per_token else None


@contextlib.contextmanager
def head_gates(model: nn.Module, batch_size: int, n_heads: int,
               per_token: bool = False) -> Iterator[Gates]:
    """Gate every layer's head slice; yield the :class:`Gates`, one float32 leaf ``[B, H]``
    per layer whose gradient is the per-sample, per-head score. Each gate is made in the
    forward pass on the device its layer runs on, so a model spread over devices (or
    offloaded) works; the list is filled once the forward pass has run."""
    gates = Gates(per_token)

    def gate(layer: int, x: torch.Tensor) -> torch.Tensor:
        if layer == len(gates):
            gates.append(torch.ones(batch_size, n_heads, device=x.device, requires_grad=True))
            gates.dtypes.add(x.dtype)
            if gates.tokens is not None:
                gates.tokens.append(None)
        return HeadGate.apply(x, gates[layer], gates.tokens, layer)

    with on_head_slices(model, gate):
        yield gates


@contextlib.contextmanager
def ablated(model: nn.Module, heads, n_heads: int,
            means: torch.Tensor | None = None) -> Iterator[None]:
    """Within the block, the given ``(layer, head)`` outputs are replaced by zero, or by
    ``means[layer, head]`` (``[L, H, d]``) when given."""
    by_layer: dict[int, list[int]] = {}
    for layer, head in heads:
        by_layer.setdefault(layer, []).append(head)

    def replace(layer: int, x: torch.Tensor) -> torch.Tensor | None:
        chosen = by_layer.get(layer)
        if not chosen:
            return None
        x = split_heads(x, n_heads).clone()
        x[..., chosen, :] = 0 if means is None else means[layer, chosen].to(x)
        return x.flatten(-2)

    with on_head_slices(model, replace):
        yield
