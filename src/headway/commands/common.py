"""What several commands do with their settings: load the task and the model they name."""

from __future__ import annotations


def load_task(args):
    """The rows of a :class:`~headway.settings.TaskArgs`."""
    from ..data.rows import TaskSpec
    from ..data.tasks import load_task

    return load_task(TaskSpec(
        source=args.task, n=args.rows, offset=args.offset, seed=args.seed,
        shuffle=args.shuffle, split=args.split, config=args.config,
        prompt_field=args.prompt_field, response_field=args.response_field))


def distributed_state():
    """Accelerate's process state when launched with several processes, else None."""
    from ..distributed import launched_distributed, process_state

    return process_state() if launched_distributed() else None


def load_model(args, state=None):
    """The model of a :class:`~headway.settings.ModelArgs`, on its device (default: this
    process's device when launched with several, else cuda if available, else cpu)."""
    import torch

    from ..errors import HeadwayError
    from ..models.loading import load_model

    if state is not None and args.device_map:
        raise HeadwayError("--device-map spreads one model over this machine's devices; it does "
                           "not combine with several processes (torchrun / accelerate launch), "
                           "which each load the whole model",
                           hint="start one process with --device-map, or several without it")
    device = args.device or (state.device if state else
                             "cuda" if torch.cuda.is_available() else "cpu")
    return load_model(args.model, dtype=args.dtype, revision=args.revision,
                      trust_remote_code=args.trust_remote_code, device=device,
                      device_map=args.device_map, offload_folder=args.offload_folder,
                      quantization=args.quantization)
