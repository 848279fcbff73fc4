"""Several processes (``torchrun``, ``accelerate launch``): who am I, how many are we.

On CPU, start with ``torchrun --nproc_per_node N -m headway.cli ...`` (gloo); on GPUs,
``accelerate launch --multi_gpu ...`` or ``torchrun`` (nccl). A single process needs nothing.
"""

from __future__ import annotations

import os


def launched_distributed() -> bool:
    """True when a launcher started several processes (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def process_state():
    """Accelerate's ``PartialState`` (initialises the process group). On a machine without
    CUDA it is created with ``cpu=True``, which is what makes several CPU processes (gloo)
    count as distributed."""
    import torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def broadcast_from_main(value):
    """The main process's ``value`` on every process (a pickled object; unchanged for one
    process). For what decides how many collective calls each process makes."""
    if rank_world()[1] == 1:
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    """Wait for every process (no-op for a single process)."""
    if rank_world()[1] > 1:
        import torch.distributed as dist

        dist.barrier()


def shutdown() -> None:
    """Destroy the process group if this process created one. The CLI calls this on every
    exit path: a gloo group still alive when Python finalizes can abort the process ("terminate
    called without an active exception", SIGABRT), because its worker thread may free the last
    collective's work object, whose tensors need the GIL, just then. The group's threads stop
    only when nothing else references it (an exception's traceback holding the trainer
    does)."""
    import gc

    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # free what still holds the group (a trainer and its callbacks sit in reference
        # cycles) now, while the interpreter is whole, not at finalization
        gc.collect()
        dist.destroy_process_group()
        gc.collect()
