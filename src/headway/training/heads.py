"""Attention heads as parameters: which weights belong to a head, how much they moved, and
training only some heads.

Head h of layer l owns (``d`` = head_dim, ``g`` = n_heads / n_kv_heads query heads per
key/value head):
    q_proj rows  h*d:(h+1)*d                      (and those bias entries)
    k_proj, v_proj rows  (h//g)*d:(h//g+1)*d      shared by the g query heads of its group
    o_proj columns  h*d:(h+1)*d                   (rows for GPT-2's Conv1D, stored [in, out])

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

from ..errors import ModelError
from ..models.architectures import (
    _get,
    architecture,
    decoder_layers,
    head_geometry,
    is_transposed_linear,
    unwrap_model,
)


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
    """The weight the module applies: for a PEFT LoRA layer, base + the active adapters' delta;
    for a head adapter (:class:`~headway.training.head_adapter.HeadDelta`), base + its delta."""
    if hasattr(module, "merged_weight"):
        return module.merged_weight()
    if _is_lora(module):
        weight = module.base_layer.weight
        for name in module.active_adapters:
            if name in module.lora_A:
                weight = weight + module.get_delta_weight(name)
        return weight
    return module.weight


def _weight_modules(root: nn.Module) -> list[nn.Module]:
    """Leaf modules with a 2-D weight under ``root`` (LoRA layers count as one)."""
    skip, found = set(), []
    for m in root.modules():
        if id(m) in skip:
            continue
        if _is_lora(m):
            found.append(m)
            skip.update(id(c) for c in m.modules())
        elif isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2 \
                and not any(True for _ in m.children()):
            found.append(m)
    return found


class HeadWeights:
    """Per-layer handles on the q/k/v/o projections and MLP of a model."""

    def __init__(self, model: nn.Module):
        self.model = unwrap_model(model)
        self.arch = architecture(self.model)
        self.n_layers, self.n_heads, self.head_dim = head_geometry(self.model)
        self.layers = decoder_layers(self.model)
        config = self.model.config
        self.n_kv = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.group = self.n_heads // self.n_kv

    def module(self, layer: int, role: str) -> nn.Module:
        """``role`` in q, k, v, o."""
        if role == "o":
            return _get(self.layers[layer], self.arch.out_proj)
        if self.arch.qkv is None:
            raise ModelError(f"{type(self.model).__name__} fuses its q/k/v projections; per-head "
                             f"q/k/v weights are supported for: separate q_proj/k_proj/v_proj")
        return _get(self.layers[layer], self.arch.qkv["qkv".index(role)])

    def mlp_modules(self, layer: int) -> list[nn.Module]:
        return [m for path in self.arch.mlp for m in _weight_modules(_get(self.layers[layer], path))]

    def rows(self, role: str, head: int) -> slice:
        """Rows of the q/k/v projection weight that query head ``head`` uses (k and v: those
        of its key/value head)."""
        unit = head if role == "q" else head // self.group
        return slice(unit * self.head_dim, (unit + 1) * self.head_dim)

    def head_slice(self, layer: int, role: str, head: int, weight: torch.Tensor) -> torch.Tensor:
        """The part of ``weight`` (q/k/v/o of ``layer``) that belongs to query head ``head``."""
        if role == "o":
            columns = slice(head * self.head_dim, (head + 1) * self.head_dim)
            transposed = is_transposed_linear(self.module(layer, "o"))
            return weight[columns] if transposed else weight[:, columns]
        return weight[self.rows(role, head)]

    def roles(self) -> tuple[str, ...]:
        """The projections with per-head weights: q, k, v, o (only o for fused families)."""
        return ("q", "k", "v", "o") if self.has_qkv else ("o",)

    @property
    def has_qkv(self) -> bool:
        return self.arch.qkv is not None

    def snapshot(self) -> dict[str, torch.Tensor]:
        """CPU float32 copies of every tracked weight: ``"{layer}.{q|k|v|o}"``, ``"{layer}.mlp{i}"``.
        Not for a sharded model (use :class:`~headway.training.weight_change.StartWeights`)."""
        from ..models.sharding import is_sharded

        if is_sharded(self.model):
            raise ValueError("snapshot() of a sharded (FSDP2) model: use "
                             "StartWeights.copy_of(weights), which keeps each process's rows")
        out = {}
        with torch.no_grad():
            for layer in range(self.n_layers):
                for role in self.roles():
                    out[f"{layer}.{role}"] = effective_weight(self.module(layer, role)) \
                        .detach().float().cpu().clone()
                for i, m in enumerate(self.mlp_modules(layer)):
                    out[f"{layer}.mlp{i}"] = effective_weight(m).detach().float().cpu().clone()
        return out



class HeadSelection:
    """Train only the given heads: their q/k/v rows and o columns (see the module docstring).

    :meth:`apply` freezes every other parameter, masks gradients outside the selected slices,
    and keeps a copy of the trainable tensors; :meth:`restore` (after each optimizer step) puts
    back every unselected entry, so weight decay cannot move them: all of them stay
    bit-identical to the start.
    """

    def __init__(self, model: nn.Module, heads: list[tuple[int, int]]):
        self.weights = HeadWeights(model)
        if not self.weights.has_qkv:
            self.weights.module(0, "q")  # raises the clear error
        self.heads = heads
        self.masks: dict[nn.Parameter, torch.Tensor] = {}
        self.originals: dict[nn.Parameter, torch.Tensor] = {}
        self.hooks = []

    def _mark(self, param: nn.Parameter, index) -> None:
        mask = self.masks.setdefault(param, torch.zeros_like(param, dtype=torch.bool))
        mask[index] = True

    def apply(self) -> HeadSelection:
        w, d = self.weights, self.weights.head_dim
        for p in w.model.parameters():
            p.requires_grad_(False)
        for layer, head in self.heads:
            for role in "qkv":
                module = w.module(layer, role)
                self._mark(module.weight, (w.rows(role, head),))
                if getattr(module, "bias", None) is not None:
                    self._mark(module.bias, (w.rows(role, head),))
            self._mark(w.module(layer, "o").weight, (slice(None), slice(head * d, (head + 1) * d)))
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
