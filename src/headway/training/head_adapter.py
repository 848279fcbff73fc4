"""Head-selective training as an adapter: only the selected heads' weights exist as trainable
tensors, so the optimizer holds state for exactly them.

For the selected heads (see :mod:`.heads` for which rows and columns a head owns), each
projection gets a delta that starts at 0 and is added to its frozen base weight:

    q, k, v:  y = base(x) + scatter(rows, x @ Δᵀ)     Δ: [len(rows), in]
    o:        y = base(x) + x[..., cols] @ Δᵀ         Δ: [out, len(cols)]

Training the deltas follows the same trajectory as training the selected entries in place
(``HeadSelection``): the gradient of a delta entry is the gradient of its weight entry and
AdamW is elementwise. Weight decay differs: on a delta it pulls toward the base weight, on the
weight itself toward zero. The adapter saves alone (``head_adapter.safetensors`` + ``.json``,
a few MB) or merged into the weights (:func:`merge`).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.adapters import HEAD_ADAPTER_CONFIG as ADAPTER_CONFIG
from ..models.adapters import HEAD_ADAPTER_FILE as ADAPTER_FILE
from ..models.architectures import _get, is_transposed_linear
from .heads import HeadWeights


class HeadDelta(nn.Module):
    """A linear layer plus a trainable delta on some of its output rows (q/k/v) or input
    columns (o). The base layer is kept as it is (frozen)."""

    def __init__(self, base: nn.Module, index: list[int], along: str):
        super().__init__()
        if is_transposed_linear(base):
            raise ValueError("head adapters support nn.Linear projections (not GPT-2's Conv1D)")
        self.base_layer = base
        self.along = along  # "rows" (output features) or "cols" (input features)
        # saved with the checkpoint, so that a checkpoint can be merged on load
        self.register_buffer("index", torch.tensor(index, dtype=torch.long))
        weight = base.weight
        shape = (len(index), weight.shape[1]) if along == "rows" else (weight.shape[0], len(index))
        self.delta = nn.Parameter(torch.zeros(shape, dtype=weight.dtype, device=weight.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        if self.along == "rows":
            return out.index_add(-1, self.index, F.linear(x, self.delta).to(out.dtype))
        return out + F.linear(x.index_select(-1, self.index), self.delta).to(out.dtype)

    def merged_weight(self) -> torch.Tensor:
        weight = self.base_layer.weight.detach().clone()
        if self.along == "rows":
            weight[self.index] += self.delta.detach().to(weight.dtype)
        else:
            weight[:, self.index] += self.delta.detach().to(weight.dtype)
        return weight


def _targets(weights: HeadWeights, heads: list[tuple[int, int]]) -> dict[tuple[int, str], list]:
    """(layer, role) -> the rows (q/k/v) or columns (o) the selected heads own."""
    d, out = weights.head_dim, {}
    for layer, head in heads:
        for role in "qkv":
            rows = weights.rows(role, head)
            out.setdefault((layer, role), set()).update(range(rows.start, rows.stop))
        out.setdefault((layer, "o"), set()).update(range(head * d, (head + 1) * d))
    return {key: sorted(value) for key, value in out.items()}


def add_head_adapter(model: nn.Module, heads: list[tuple[int, int]]) -> int:
    """Freeze ``model`` and give the selected heads' projections trainable deltas (in place);
    return the number of trainable entries."""
    weights = HeadWeights(model)
    if not weights.has_qkv:
        weights.module(0, "q")  # raises the clear error for fused projections
    for p in weights.model.parameters():
        p.requires_grad_(False)
    n = 0
    for (layer, role), index in _targets(weights, heads).items():
        path = weights.arch.out_proj if role == "o" else weights.arch.qkv["qkv".index(role)]
        parent_path, _, leaf = path.rpartition(".")
        parent = _get(weights.layers[layer], parent_path) if parent_path else weights.layers[layer]
        wrapped = HeadDelta(getattr(parent, leaf), index, "cols" if role == "o" else "rows")
        setattr(parent, leaf, wrapped)
        n += wrapped.delta.numel()
    model.headway_heads = list(heads)
    return n


def _deltas(model: nn.Module) -> dict[str, HeadDelta]:
    return {name: m for name, m in model.named_modules() if isinstance(m, HeadDelta)}


def merge(model: nn.Module) -> nn.Module:
    """Put every delta into its base weight and the plain layers back (in place)."""
    from ..models.sharding import local_rows
    from .weight_change import local_weight

    for name, module in _deltas(model).items():  # sharded: every process merges its rows
        with torch.no_grad():
            local_rows(module.base_layer.weight)[0].copy_(local_weight(module)[0])
        parent_name, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, leaf, module.base_layer)
    return model


def save_adapter(model: nn.Module, folder: str | Path, base: str, write: bool = True) -> Path:
    """Write the deltas alone: ``head_adapter.safetensors`` and ``head_adapter.json`` (base
    model, heads, which rows or columns each delta covers). Of a sharded model every process
    calls it (the deltas are gathered) and the one with ``write`` writes."""
    from ..models.sharding import full
    from ..storage import atomic_save_tensors, atomic_write_json

    folder = Path(folder)
    tensors, layout = {}, {}
    for name, module in _deltas(model).items():
        tensors[f"{name}.delta"] = full(module.delta.detach()).cpu()
        layout[name] = {"along": module.along, "index": module.index.tolist()}
    if not write:
        return folder
    atomic_save_tensors(folder / ADAPTER_FILE, tensors)
    atomic_write_json(folder / ADAPTER_CONFIG, {
        "kind": "headway.HeadAdapter", "base_model_name_or_path": base,
        "heads": [f"{l}.{h}" for l, h in getattr(model, "headway_heads", [])],
        "modules": layout})
    return folder
