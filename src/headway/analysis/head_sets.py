"""The loss of many ablated head sets on the same rows, without running the whole model for
each set.

Ablating heads in layer l changes nothing before layer l, so a set whose first ablated layer
is l needs only layers l..L-1: the unablated pass caches the residual stream entering each
layer a set starts at, and every set's pass starts there (the layers before it do nothing and
hand on the cached tensor). Sets that start at the same layer run several at a time as one
larger batch (each copy of the rows with its own heads ablated). Both are exact: the
layers a set skips would have computed the cached tensor, and a batch row sees only its own
ablation (batched matrix products may round differently, at float precision).

The saving is the share of layers before each set's first ablated layer: for k random heads
of L layers that layer is about L / (k + 1), so ~10 % for k = 10 (see
``benchmarks/bench_ablation.py``); batching the sets helps where one batch leaves the device
idle (a GPU), little on a CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import nn

from ..data.batching import by_length, collate
from ..models.architectures import decoder_layers, head_geometry
from ..models.placement import input_device
from ..scoring.hooks import on_head_slices
from ..scoring.loss import Tick, response_token_losses

Head = tuple[int, int]


def top_and_random_sets(scores, k: int, n_random: int, seed: int = 0
                        ) -> tuple[list[Head], list[list[Head]]]:
    """The ``k`` top heads of ``scores`` [L, H] (ties by index) and ``n_random`` sets of ``k``
    heads, each drawn without replacement from the L·H − k heads that are not top heads."""
    scores = np.asarray(scores, dtype=np.float64)
    n_heads = scores.shape[1]
    order = np.argsort(-scores.ravel(), kind="stable")
    top, others = order[:k], np.sort(order[k:])
    if len(others) < k:
        raise ValueError(f"{k} random heads cannot be drawn from the {len(others)} heads "
                         f"outside the top {k}: use a smaller k")
    rng = np.random.default_rng(seed)

    def heads(flat) -> list[Head]:
        return [(int(i) // n_heads, int(i) % n_heads) for i in flat]

    return heads(top), [heads(rng.choice(others, size=k, replace=False))
                        for _ in range(n_random)]


def first_layer(heads: Sequence[Head], n_layers: int) -> int:
    """The first layer a set ablates (``n_layers`` for an empty set: nothing changes)."""
    return min((layer for layer, _ in heads), default=n_layers)


def layers_run(head_sets: Sequence[Sequence[Head]], n_layers: int, reuse: bool = True) -> int:
    """Decoder layers the ablated passes of ``head_sets`` run per row batch (``reuse``: each
    from its first ablated layer; otherwise all of them): the exact cost, free of timing
    noise."""
    return sum(n_layers - (first_layer(s, n_layers) if reuse else 0) for s in head_sets)


@contextlib.contextmanager
def _starting_at(model: nn.Module, start: int, hidden: torch.Tensor | tuple
                 ) -> Iterator[None]:
    """Within the block, decoder layers before ``start`` compute nothing, and layer
    ``start - 1`` outputs ``hidden`` (a tensor, or a tuple for layers that return one)."""
    layers = decoder_layers(model)[:start]
    saved = [layer.__dict__.get("forward") for layer in layers]

    def skip(last: bool):
        def forward(*args, **kwargs):
            if last:
                return hidden
            return args[0] if args else kwargs["hidden_states"]
        return forward

    for i, layer in enumerate(layers):
        layer.forward = skip(i == start - 1)
    try:
        yield
    finally:
        for layer, forward in zip(layers, saved):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


@contextlib.contextmanager
def _recording(model: nn.Module, after: set[int], store: dict) -> Iterator[None]:
    """Within the block, ``store[l]`` is the output of decoder layer ``l`` for ``l`` in
    ``after`` (the residual stream entering layer l + 1)."""
    layers = decoder_layers(model)

    def hook_for(layer: int):
        def hook(module, args, output):
            store[layer] = output
        return hook

    handles = [layers[i].register_forward_hook(hook_for(i)) for i in sorted(after)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _repeat(output, times: int):
    """A layer output (tensor or tuple whose first item is the hidden state) for ``times``
    copies of the batch."""
    if isinstance(output, tuple):
        return (output[0].repeat(times, *[1] * (output[0].dim() - 1)),)
    return output.repeat(times, *[1] * (output.dim() - 1))


@contextlib.contextmanager
def _ablating(model: nn.Module, head_sets: Sequence[Sequence[Head]], n_heads: int,
              means: torch.Tensor | None) -> Iterator[None]:
    """Within the block, a batch of ``len(head_sets)`` copies of the rows has copy g's heads
    ``head_sets[g]`` replaced by zero (or ``means[layer, head]`` [L, H, d])."""
    masks: dict[int, torch.Tensor] = {}
    for g, heads in enumerate(head_sets):
        for layer, head in heads:
            masks.setdefault(layer, torch.zeros(len(head_sets), n_heads, dtype=torch.bool))
            masks[layer][g, head] = True

    def replace(layer: int, x: torch.Tensor) -> torch.Tensor | None:
        mask = masks.get(layer)
        if mask is None:
            return None
        G = mask.shape[0]
        heads = x.reshape(G, x.shape[0] // G, x.shape[1], n_heads, -1)
        fill = (torch.zeros((), dtype=x.dtype, device=x.device) if means is None
                else means[layer].to(x)[None, None, None])
        out = torch.where(mask.to(x.device)[:, None, None, :, None], fill, heads)
        return out.reshape(x.shape)

    with on_head_slices(model, replace):
        yield


def _row_losses(model: nn.Module, batch: dict) -> torch.Tensor:
    loss_sum, n_tokens, _ = response_token_losses(model, batch)
    return (loss_sum / n_tokens.clamp(min=1)).double().cpu()


@torch.no_grad()
def head_set_losses(model: nn.Module, encoded: Sequence, pad_id: int,
                    head_sets: Sequence[Sequence[Head]], means: torch.Tensor | None = None,
                    batch_size: int = 8, sets_per_pass: int = 4, reuse: bool = True,
                    tick: Tick | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's mean response-token loss (nats) unablated ``[N]`` and with each of
    ``head_sets`` ablated ``[S, N]`` (rows in ``encoded`` order), zero-ablated or, with
    ``means`` [L, H, d], mean-ablated.

    ``reuse``: each set's pass starts at its first ablated layer from the unablated pass's
    cached residual stream, and up to ``sets_per_pass`` sets of the same first layer share one
    batch; otherwise every
    set runs the whole model on its own (the reference). ``tick(1)`` after the unablated
    pass of each row batch and ``tick(n)`` after a pass of ``n`` sets.
    """
    n_layers, n_heads, _ = head_geometry(model)
    device = input_device(model)
    starts = [first_layer(s, n_layers) if reuse else 0 for s in head_sets]
    per_pass = max(1, sets_per_pass if reuse else 1)
    groups, group_start = [], []  # sets of one first layer, up to per_pass at a time
    for start in sorted(set(starts)):
        same = [i for i, s in enumerate(starts) if s == start]
        groups += [same[i:i + per_pass] for i in range(0, len(same), per_pass)]
        group_start += [start] * len(range(0, len(same), per_pass))
    base = np.zeros(len(encoded))
    ablated = np.zeros((len(head_sets), len(encoded)))
    for rows in by_length(encoded, batch_size):
        batch = collate([encoded[i] for i in rows], pad_id, device=device)
        cache: dict = {}
        with _recording(model, {s - 1 for s in group_start if 0 < s <= n_layers}, cache):
            base[rows] = _row_losses(model, batch).numpy()
        if tick:
            tick(1)
        for group, start in zip(groups, group_start):
            if start >= n_layers:  # nothing ablated: the unablated losses
                for i in group:
                    ablated[i, rows] = base[rows]
            else:
                G = len(group)
                repeated = {key: value.repeat(G, 1) for key, value in batch.items()}
                skip = (_starting_at(model, start, _repeat(cache[start - 1], G)) if start
                        else contextlib.nullcontext())
                with skip, _ablating(model, [head_sets[i] for i in group], n_heads, means):
                    losses = _row_losses(model, repeated).numpy().reshape(G, len(rows))
                for i, row_losses in zip(group, losses):
                    ablated[i, rows] = row_losses
            if tick:
                tick(len(group))
    return base, ablated
