"""Attention heads as parameters: which heads to train, the weight a (LoRA- or head-adapted)
projection applies, and training only some heads by masks.

Head h of layer l owns (:meth:`headway.models.architectures.ModelHeads.rows`): its rows of the
q projection, the rows of its key/value head in the k and v projections (separate, fused or
MLA's ``kv_b_proj``), and its columns h*d:(h+1)*d of the output projection.

Grouped-query rule for head-selective training: a key/value head is trained when *any* query
head of its group is selected, so a selected head can adapt its keys and values; it then also
changes, through them, the other query heads of that group. Output-projection biases are not
per-head and stay frozen.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from ..models.architectures import ModelHeads, is_transposed_linear, resolve


def parse_heads(spec: Iterable[str] | str, n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """``"3.1,5.0"`` or ``["3.1", "5.0"]`` -> ``[(3, 1), (5, 0)]`` (layer.head), validated."""
    items = spec.split(",") if isinstance(spec, str) else [
        part for item in spec for part in str(item).split(",")]
    heads = []
    for item in (i.strip() for i in items if i.strip()):
        try:
            layer, head = (int(x) for x in item.split("."))
        except ValueError:
            raise ValueError(f"head {item!r}: write heads as LAYER.HEAD, e.g. 3.1") from None
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(f"head {item!r} is outside the model's {n_layers} layers x "
                             f"{n_heads} heads")
        heads.append((layer, head))
    if not heads:
        raise ValueError("no heads given")
    return sorted(set(heads))


def top_heads_from_file(path: str | Path, k: int, n_layers: int, n_heads: int
                        ) -> list[tuple[int, int]]:
    """The ``k`` highest-scoring heads of a saved activation pattern of an
    ``n_layers`` x ``n_heads`` model."""
    from ..patterns import ActivationPattern

    pattern = ActivationPattern.load(path)
    if (pattern.n_layers, pattern.n_heads) != (n_layers, n_heads):
        raise ValueError(f"{path} is a {pattern.n_layers} x {pattern.n_heads} pattern; the "
                         f"model has {n_layers} layers x {n_heads} heads")
    return sorted((l, h) for l, h, _ in pattern.top_heads(k))


def _is_lora(module: nn.Module) -> bool:
    return hasattr(module, "base_layer") and hasattr(module, "get_delta_weight")


def effective_weight(module: nn.Module) -> torch.Tensor:
    """The weight the module applies, as stored: for a PEFT LoRA layer, base + the active
    adapters' delta; for a head adapter (:class:`~headway.training.head_adapter.HeadDelta`),
    base + its delta, in float32 (a small delta on a bfloat16 base would round away)."""
    if hasattr(module, "merged_weight"):
        return module.merged_weight(torch.float32)
    if _is_lora(module):
        weight = module.base_layer.weight.float()
        for name in module.active_adapters:
            if name in module.lora_A:
                weight = weight + module.get_delta_weight(name).float()
        return weight
    return module.weight


def head_index(heads: ModelHeads, role: str, selected: Iterable[int]) -> list[int]:
    """The rows (q/k/v: output features) or columns (o: input features) of ``role``'s
    projection that the ``selected`` query heads own, sorted, each once."""
    rows = heads.rows(role)
    return sorted({int(i) for h in selected for i in rows[h]})


def selected_slices(model: nn.Module, chosen: list[tuple[int, int]]
                    ) -> dict[nn.Module, tuple[str, list[int]]]:
    """``{projection: (along, index)}`` for the chosen ``(layer, head)`` pairs: ``along`` is
    ``"rows"`` (output features, q/k/v) or ``"cols"`` (input features, o); a fused projection
    gets the union of its q, k and v rows."""
    heads = resolve(model)
    if not heads.has_qkv:
        heads.projection(0, "q")  # raises the clear error
    by_layer: dict[int, list[int]] = {}
    for layer, head in chosen:
        by_layer.setdefault(layer, []).append(head)
    out: dict[nn.Module, tuple[str, list[int]]] = {}
    for layer, selected in sorted(by_layer.items()):
        for role in "qkvo":
            module = heads.projection(layer, role)
            along = "cols" if role == "o" else "rows"
            index = head_index(heads, role, selected)
            if module in out:
                index = sorted(set(out[module][1]) | set(index))
            out[module] = (along, index)
    return out


def stored_index(module: nn.Module, along: str, index: list[int]) -> tuple:
    """The index into ``module.weight`` as stored (GPT-2's Conv1D stores ``[in, out]``)."""
    rows = along == "rows"
    if is_transposed_linear(module):
        rows = not rows
    return (index,) if rows else (slice(None), index)


class HeadSelection:
    """Train only the given heads: their q/k/v rows and o columns (see the module docstring).

    :meth:`apply` freezes every other parameter, masks gradients outside the selected slices,
    and keeps a copy of the trainable tensors; :meth:`restore` (after each optimizer step) puts
    back every unselected entry, so weight decay cannot move them: all of them stay
    bit-identical to the start. q/k/v biases of the selected rows train too.
    """

    def __init__(self, model: nn.Module, heads: list[tuple[int, int]]):
        self.model = resolve(model).model
        self.slices = selected_slices(model, heads)
        self.heads = heads
        self.masks: dict[nn.Parameter, torch.Tensor] = {}
        self.originals: dict[nn.Parameter, torch.Tensor] = {}
        self.hooks = []

    def _mark(self, param: nn.Parameter, index) -> None:
        mask = self.masks.setdefault(param, torch.zeros_like(param, dtype=torch.bool))
        mask[index] = True

    def apply(self) -> HeadSelection:
        for p in self.model.parameters():
            p.requires_grad_(False)
        for module, (along, index) in self.slices.items():
            self._mark(module.weight, stored_index(module, along, index))
            if along == "rows" and getattr(module, "bias", None) is not None:
                self._mark(module.bias, (index,))
        for param in self.masks:
            param.requires_grad_(True)
            self.originals[param] = param.detach().clone()
            self.hooks.append(param.register_hook(lambda g, p=param: g * self._on(p, self.masks)))
        return self

    @staticmethod
    def _on(param: torch.Tensor, table: dict) -> torch.Tensor:
        """``table[param]`` on the parameter's device (the Trainer may move the model)."""
        value = table[param]
        if value.device != param.device:
            value = table[param] = value.to(param.device)
        return value

    @torch.no_grad()
    def restore(self) -> None:
        for param in self.masks:
            param.copy_(torch.where(self._on(param, self.masks), param,
                                    self._on(param, self.originals)))

    @property
    def n_trainable(self) -> int:
        """Number of parameter entries that can change."""
        return int(sum(int(m.sum()) for m in self.masks.values()))
