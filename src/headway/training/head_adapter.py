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
from ..models.adapters import add_delta
from ..models.architectures import (
    in_features,
    is_transposed_linear,
    out_features,
    resolve,
)
from ..models.sharding import local_rows
from .heads import selected_slices
from .weight_change import Tracked, current_value


class HeadDelta(nn.Module):
    """A linear layer plus a trainable float32 delta on some of its output features (q/k/v
    rows) or input features (o columns), whatever the base's dtype (bf16, or a 4-bit / 8-bit
    base, as PEFT keeps its adapters): the input is cast to float32 for the delta and the sum
    comes back in the output's dtype. The base layer is kept as it is (frozen)."""

    def __init__(self, base: nn.Module, index: list[int], along: str):
        super().__init__()
        self.base_layer = base
        self.along = along  # "rows" (output features) or "cols" (input features)
        # saved with the checkpoint, so that a checkpoint can be merged on load
        self.register_buffer("index", torch.tensor(index, dtype=torch.long))
        self.register_buffer("rows", torch.tensor(along == "rows"))
        shape = ((len(index), in_features(base)) if along == "rows"
                 else (out_features(base), len(index)))
        device = next(base.parameters()).device
        self.delta = nn.Parameter(torch.zeros(shape, dtype=torch.float32, device=device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base_layer(x)
        x = x.to(self.delta.dtype)
        if self.along == "rows":
            return out.index_add(-1, self.index, F.linear(x, self.delta).to(out.dtype))
        return out + F.linear(x.index_select(-1, self.index), self.delta).to(out.dtype)

    def merged_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Base weight + delta, as the base stores it (``[in, out]`` for a Conv1D), in
        ``dtype`` (default the base weight's)."""
        weight = self.base_layer.weight.detach().to(dtype or self.base_layer.weight.dtype,
                                                    copy=True)
        add_delta(weight, self.delta.detach(), self.index, self.along,
                  is_transposed_linear(self.base_layer))
        return weight



def add_head_adapter(model: nn.Module, heads: list[tuple[int, int]]) -> int:
    """Freeze ``model`` and give the selected heads' projections trainable deltas (in place);
    return the number of trainable entries. A fused q/k/v projection gets one delta over the
    union of the selected heads' q, k and v rows."""
    slices = selected_slices(model, heads)
    inner = resolve(model).model
    for p in inner.parameters():
        p.requires_grad_(False)
    names = {id(m): name for name, m in inner.named_modules()}
    n = 0
    for module, (along, index) in slices.items():
        parent_name, _, leaf = names[id(module)].rpartition(".")
        wrapped = HeadDelta(module, index, along)
        setattr(inner.get_submodule(parent_name) if parent_name else inner, leaf, wrapped)
        n += wrapped.delta.numel()
    model.headway_heads = list(heads)
    return n


def _deltas(model: nn.Module) -> dict[str, HeadDelta]:
    return {name: m for name, m in model.named_modules() if isinstance(m, HeadDelta)}


def merge(model: nn.Module) -> nn.Module:
    """Put every delta into its base weight and the plain layers back (in place)."""
    for name, module in _deltas(model).items():  # sharded: every process merges its rows
        with torch.no_grad():
            value, _ = current_value(Tracked(module, "weight", name, 0))
            local_rows(module.base_layer.weight)[0].copy_(value)
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
