"""Scoring within a memory bound, exactly.

- :func:`checkpointed_layers`: activation checkpointing per decoder layer during scoring: the
  forward pass keeps only each layer's input, and the backward pass recomputes one layer at a
  time. The scores are the same (the same operations run again); the activations held drop
  from all layers' to about one layer's, for about a third more time. With weights offloaded
  to the CPU or disk (``device_map``), it also bounds accelerator memory by the layers
  resident at once: without it, the input gradient keeps every layer's device copy of its
  weights alive until the backward pass.
- :class:`PeakMemory`: the peak bytes of tensors alive at once inside a block, on any
  device (on the CPU too, where PyTorch keeps no allocator statistics): what
  ``torch.cuda.max_memory_allocated`` measures on a GPU, for benchmarks and estimates.
- :func:`split_on_oom`: a batch that runs out of accelerator memory is split in halves and
  scored again (in the ``sample`` convention a row's score does not depend on its batch
  mates, so the result is the same); in the ``paper`` convention it is an error naming
  ``--batch-size``, since there the batch is part of the definition.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

from ..models.architectures import decoder_layers, unwrap_model
from .head_scores import ScoringError


@contextlib.contextmanager
def checkpointed_layers(model: nn.Module, enabled: bool = True) -> Iterator[None]:
    """Within the block, each decoder layer of ``model`` runs under activation checkpointing
    whenever gradients are on (a no-op when ``enabled`` is false)."""
    if not enabled:
        yield
        return
    layers = decoder_layers(model)
    saved = [layer.__dict__.get("forward") for layer in layers]

    def wrap(inner: Callable) -> Callable:
        def forward(*args, **kwargs):
            if not torch.is_grad_enabled():
                return inner(*args, **kwargs)
            return checkpoint(inner, *args, use_reentrant=False, **kwargs)
        return forward

    for layer in layers:
        layer.forward = wrap(layer.forward)
    try:
        yield
    finally:
        for layer, forward in zip(layers, saved):
            if forward is None:
                del layer.forward
            else:
                layer.forward = forward


def offloaded(model: nn.Module) -> bool:
    """True when some of the model's weights live on the CPU or disk while others run on an
    accelerator (accelerate's big-model offloading)."""
    placement = getattr(unwrap_model(model), "hf_device_map", None) or {}
    devices = {str(d) for d in placement.values()}
    return bool(devices & {"cpu", "disk"}) and bool(devices - {"cpu", "disk"})


class PeakMemory(TorchDispatchMode):
    """Within the block, count the bytes of every tensor storage an operation creates while
    it is alive (views share their storage; storages are seen going away through weak
    references); ``peak`` is the most alive at once, ``live`` what is alive now. Tensors made
    before the block (the weights) are not counted: add them yourself."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._alive: dict[tuple, tuple] = {}  # (device, data_ptr) -> (weak ref, bytes)

    def _sweep(self) -> None:
        for key in [k for k, (ref, _) in self._alive.items() if ref.expired()]:
            self.live -= self._alive.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.multiprocessing.reductions import StorageWeakRef
        from torch.utils._pytree import tree_flatten

        out = func(*args, **(kwargs or {}))
        self._sweep()
        inputs = {(str(t.device), t.untyped_storage().data_ptr())
                  for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key = (str(t.device), storage.data_ptr())
            # a view or an in-place result shares an input's storage: nothing new
            if storage.nbytes() == 0 or key in self._alive or key in inputs:
                continue
            self._alive[key] = (StorageWeakRef(storage), storage.nbytes())
            self.live += storage.nbytes()
        self.peak = max(self.peak, self.live)
        return out


OutOfMemory = (torch.OutOfMemoryError,)


def split_on_oom(score_rows: Callable[[Sequence[int]], tuple], rows: Sequence[int],
                 convention: str, limit: list[int]) -> list[tuple[Sequence[int], tuple]]:
    """``[(rows, score_rows(rows)), ...]`` for ``rows`` in pieces of at most ``limit[0]``;
    on an out-of-memory error the piece size is halved (and stays so, in ``limit[0]``, for
    the batches that follow) until one row is left."""
    out, start = [], 0
    while start < len(rows):
        piece = rows[start:start + limit[0]]
        try:
            out.append((piece, score_rows(piece)))
        except OutOfMemory as err:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if convention == "paper":
                raise ScoringError(
                    f"out of memory on a batch of {len(piece)} rows; in the paper convention "
                    f"a row's score depends on its batch, so headway does not split it",
                    hint="use a smaller --batch-size (batch_size=), or --convention sample") \
                    from err
            if len(piece) == 1:
                raise ScoringError(
                    "out of memory on a single row",
                    hint="lower --max-length, turn on --checkpoint-layers, or use a smaller "
                         "--dtype (bfloat16)") from err
            limit[0] = (len(piece) + 1) // 2
            print(f"headway: warning: out of memory on a batch of {len(piece)} rows; "
                  f"continuing with batches of {limit[0]} (the scores are the same)",
                  file=sys.stderr)
            continue
        start += len(piece)
    return out
