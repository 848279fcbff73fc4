"""Sharded models (FSDP2): which rows of a weight this process holds, and sums over processes.

FSDP2 (``torch.distributed.fsdp.fully_shard``, what Accelerate's ``fsdp_version: 2`` applies)
replaces each parameter by a ``DTensor`` sharded along dim 0: process r holds a contiguous
block of rows (``torch.chunk`` of the full tensor, possibly empty). Every forward pass is a
collective, so all processes must run the same number of them, and per-head weight norms are
computed on each process's rows and summed over processes.

Accelerate turns FSDP on only for accelerators (CUDA, XPU, ...). :func:`fsdp_on_cpu` makes a
Trainer's Accelerator take the FSDP2 path on CPU processes (gloo) as well, which is how the
tests prove the sharded code paths without a GPU.
"""

from __future__ import annotations

import torch
from torch import nn


def is_dtensor(t) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch without distributed
        return False
    return isinstance(t, DTensor)


def is_sharded(model: nn.Module) -> bool:
    """True when any parameter of ``model`` is a ``DTensor`` (FSDP2)."""
    return any(is_dtensor(p) for p in model.parameters())


def local_rows(t: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``(rows this process holds, index of the first of them in the full tensor)``.

    A plain tensor is held whole: ``(t, 0)``. A ``DTensor`` must be sharded along dim 0 (or
    replicated) on a one-dimensional mesh, as FSDP2 shards parameters."""
    if not is_dtensor(t):
        return t, 0
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not all(isinstance(p, Replicate) or (isinstance(p, Shard) and p.dim == 0)
               for p in t.placements):
        raise ValueError(f"a weight sharded as {t.placements}: only dim-0 sharding (FSDP2) "
                         f"is supported")
    _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return t.to_local(), int(offset[0]) if offset else 0


def full(t: torch.Tensor) -> torch.Tensor:
    """The whole tensor (a collective for a ``DTensor``: every process must call it)."""
    return t.full_tensor() if is_dtensor(t) else t


def sum_over_processes(t: torch.Tensor, device: torch.device | str | None = None
                       ) -> torch.Tensor:
    """``t`` summed over all processes (unchanged for one process). ``device``: where the
    sum runs (the weights' device: NCCL process groups reduce only CUDA tensors); the result
    comes back to ``t``'s device."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        work = t.to(device) if device is not None else t
        dist.all_reduce(work)
        return work.to(t.device)
    return t


def max_over_processes(t: torch.Tensor, device: torch.device | str | None = None
                       ) -> torch.Tensor:
    """The elementwise maximum of ``t`` over all processes (``t`` for one process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        work = t.to(device) if device is not None else t.clone()
        dist.all_reduce(work, op=dist.ReduceOp.MAX)
        return work.to(t.device)
    return t


def fsdp_on_cpu(trainer, plugin=None) -> None:
    """Make ``trainer`` (a Hugging Face ``Trainer`` not yet trained) shard its model with
    FSDP2 on CPU processes. Accelerate enables FSDP only on accelerators; everything after
    this switch (``fully_shard``, sharded optimizer state, checkpoints) is Accelerate's own
    FSDP2 path. ``plugin``: a ``FullyShardedDataParallelPlugin`` (default: ``fsdp_version=2``,
    read from the ``FSDP_*`` environment variables as ``accelerate launch`` sets them)."""
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if plugin is None:
        plugin = FullyShardedDataParallelPlugin(fsdp_version=2)
    state = trainer.accelerator.state
    mixed = trainer.accelerator.mixed_precision
    if mixed != "no":
        # Accelerate's FSDP2 computes in low precision by a parameter-dtype policy, which on
        # CPU processes fails to assign its gradients (torch 2.13, gloo); here the model
        # computes under autocast instead, as DDP does
        from types import MethodType

        import torch
        from accelerate.utils import convert_outputs_to_fp32

        model = trainer.model
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[mixed]
        forward = torch.autocast("cpu", dtype=dtype)(model.forward.__func__)
        model.forward = MethodType(convert_outputs_to_fp32(forward), model)
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = plugin
    trainer.is_fsdp_enabled = True
