"""Head adapters merged into the model they were trained on: an adapter saved alone
(``head_adapter.safetensors``) and Trainer checkpoints of head-adapter training
(``*.base_layer.weight`` + ``*.delta`` + ``*.index`` + ``*.rows``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from .architectures import is_transposed_linear

HEAD_ADAPTER_FILE = "head_adapter.safetensors"
HEAD_ADAPTER_CONFIG = "head_adapter.json"


def merge_head_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """Add a head adapter saved by ``headway train --mode heads --save_merged false`` to
    ``model`` (its base), merged into the weights: the trained model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    folder = Path(folder)
    try:
        config = json.loads((folder / HEAD_ADAPTER_CONFIG).read_text())
        tensors = load_file(str(folder / HEAD_ADAPTER_FILE))
        _apply_deltas(model, config["modules"], tensors)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RuntimeError,
            SafetensorError) as err:
        raise ModelError(f"{folder}: not a readable head adapter ({type(err).__name__}: "
                         f"{err})", hint="train it again, or use its merged final/") from err
    return model


def add_delta(weight: torch.Tensor, delta: torch.Tensor, index: torch.Tensor, along: str,
              transposed: bool) -> None:
    """``weight`` (as stored: ``[out, in]``, or ``[in, out]`` for GPT-2's Conv1D) += ``delta``
    on the output features (``along="rows"``, delta ``[len(index), in]``) or input features
    (``"cols"``, delta ``[out, len(index)]``) of ``index``, in place."""
    delta = delta.to(device=weight.device, dtype=weight.dtype)
    if transposed:
        delta = delta.T
    if (along == "rows") != transposed:
        weight[index] += delta
    else:
        weight[:, index] += delta


def _apply_deltas(model: nn.Module, modules: dict, tensors: dict) -> None:
    with torch.no_grad():
        for name, spec in modules.items():
            module = model.get_submodule(name)
            add_delta(module.weight, tensors[f"{name}.delta"],
                      torch.tensor(spec["index"], dtype=torch.long), spec["along"],
                      is_transposed_linear(module))


def _weight_keys(folder: Path) -> list[str]:
    from safetensors import safe_open

    keys = []
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            keys += list(f.keys())
    return keys


def has_head_deltas(folder: Path) -> bool:
    """True for a Trainer checkpoint of head-adapter training (``*.delta`` weights)."""
    return any(k.endswith(".delta") for k in _weight_keys(folder))


def merge_head_checkpoint(model: nn.Module, folder: Path) -> nn.Module:
    """Load a head-adapter training checkpoint into ``model`` (in place): each adapted
    projection's weight = its saved base + its delta on the rows or columns of its index."""
    from safetensors.torch import load_file

    tensors = {}
    for file in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(str(file)))
    with torch.no_grad():
        for key in [k for k in tensors if k.endswith(".delta")]:
            name = key[: -len(".delta")]
            module = model.get_submodule(name)
            base, delta = tensors[f"{name}.base_layer.weight"], tensors[key]
            index = tensors[f"{name}.index"].long()
            rows = tensors.get(f"{name}.rows")
            if rows is None:  # checkpoints before the flag: rows are [len(index), in]
                rows = delta.shape[0] == index.numel() and delta.shape[1] == base.shape[1]
            merged = base.to(module.weight).clone()
            add_delta(merged, delta, index, "rows" if bool(rows) else "cols",
                      is_transposed_linear(module))
            module.weight.copy_(merged)
    return model


