"""Per-head parameter change without a copy of the model: ‖W_t − W_0‖ / ‖W_0‖.

The starting weights W_0 come from where they already are: the safetensors files of the
checkpoint training started from, read memory-mapped one tensor at a time
(:meth:`StartWeights.from_folder`); a copy in the weights' own dtype is kept only when no such
file exists (a ``random:`` twin, a model changed after loading). The per-head norms are
computed per layer on the weights' device, all heads of a projection at once.

Head h of layer l owns (d = head_dim, g = query heads per key/value head): q rows h*d:(h+1)*d;
k and v rows of its key/value head h // g; o columns h*d:(h+1)*d (see :mod:`.heads`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..architectures import is_transposed_linear, unwrap_model
from .heads import HeadWeights, effective_weight


class StartWeights:
    """W_0 of every tracked module (``"{layer}.{role}"``, ``"{layer}.mlp{i}"``): from files
    (memory-mapped, nothing held) or from a copy in the weights' dtype."""

    def __init__(self, tensors: dict[str, torch.Tensor] | None = None,
                 files: dict[str, tuple[Path, str]] | None = None, source: str = "memory"):
        self.tensors = tensors or {}
        self.files = files or {}
        self.source = source

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (0 when read from files)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self.tensors:
            return self.tensors[key]
        from safetensors import safe_open

        path, name = self.files[key]
        with safe_open(str(path), framework="pt") as f:
            return f.get_tensor(name)

    @classmethod
    def copy_of(cls, weights: HeadWeights) -> StartWeights:
        """A copy of the current weights in their own dtype, on the CPU."""
        with torch.no_grad():
            tensors = {key: effective_weight(m).detach().cpu().clone()
                       for key, m in _tracked(weights).items()}
        return cls(tensors=tensors, source="memory")

    @classmethod
    def from_folder(cls, folder: str | Path, weights: HeadWeights) -> StartWeights | None:
        """The start read from ``folder``'s safetensors files, or None when they do not hold
        every tracked weight with the shape the model has now."""
        from safetensors import safe_open

        folder = Path(folder)
        names = _checkpoint_names(weights)
        index = folder / "model.safetensors.index.json"
        if index.is_file():
            where = {k: folder / v for k, v in json.loads(index.read_text())["weight_map"].items()}
        elif (folder / "model.safetensors").is_file():
            where = {}
            with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
                where = {k: folder / "model.safetensors" for k in f.keys()}
        else:
            return None
        files = {}
        for key, module in _tracked(weights).items():
            name = names.get(id(module))
            if name is None or name not in where:
                return None
            with safe_open(str(where[name]), framework="pt") as f:
                if tuple(f.get_slice(name).get_shape()) != tuple(_weight(module).shape):
                    return None
            files[key] = (where[name], name)
        return cls(files=files, source=str(folder))


def start_weights(model: nn.Module, folder: str | Path | None = None,
                  now_is_start: bool = True) -> StartWeights | None:
    """W_0 for ``model``: read from ``folder`` (default: the folder the model was loaded from,
    its ``name_or_path``) when its files hold the weights; else, when the model's weights
    are the start (``now_is_start``), a copy of them; else None (a resumed run whose start
    is nowhere to be read)."""
    weights = HeadWeights(model)
    candidate = folder or getattr(unwrap_model(model).config, "_name_or_path", None)
    if candidate and Path(candidate).is_dir() and not (
            not now_is_start and _trained_checkpoint(Path(candidate))):
        start = StartWeights.from_folder(candidate, weights)
        if start is not None and (not now_is_start or _same(start, weights)):
            return start
    return StartWeights.copy_of(weights) if now_is_start else None


def relative_change(weights: HeadWeights, start) -> dict[str, torch.Tensor]:
    """‖W_t − W_0‖_F / ‖W_0‖_F per head and role, and per layer for the MLP.

    Returns ``{"q","k","v","o","attn": [L, H], "mlp": [L]}`` (float32, CPU); ``attn`` pools a
    head's q, k, v and o slices; q/k/v are NaN for fused-projection families. ``start``: a
    :class:`StartWeights` or a dict of the same keys (:meth:`HeadWeights.snapshot`)."""
    L, H = weights.n_layers, weights.n_heads
    diff2 = {r: torch.full((L, H), float("nan")) for r in "qkvo"}
    base2 = {r: torch.full((L, H), float("nan")) for r in "qkvo"}
    mlp = torch.zeros(L)
    with torch.no_grad():
        for layer in range(L):
            for role in weights.roles():
                module = weights.module(layer, role)
                now = effective_weight(module).float()
                first = start[f"{layer}.{role}"].to(device=now.device, dtype=torch.float32)
                diff2[role][layer] = _per_head(now - first, role, weights, module).cpu()
                base2[role][layer] = _per_head(first, role, weights, module).cpu()
            d = b = 0.0
            for i, module in enumerate(weights.mlp_modules(layer)):
                now = effective_weight(module).float()
                first = start[f"{layer}.mlp{i}"].to(device=now.device, dtype=torch.float32)
                d += float((now - first).pow(2).sum())
                b += float(first.pow(2).sum())
            mlp[layer] = (d / b) ** 0.5 if b else 0.0
    roles = [r for r in "qkvo" if not torch.isnan(diff2[r]).all()]
    out = {r: (diff2[r] / base2[r]).sqrt() for r in "qkvo"}
    out["attn"] = (sum(diff2[r] for r in roles) / sum(base2[r] for r in roles)).sqrt()
    out["mlp"] = mlp
    return out


def _per_head(w: torch.Tensor, role: str, weights: HeadWeights, module) -> torch.Tensor:
    """Squared Frobenius norm of each query head's slice of ``w`` (``[H]``)."""
    H, d, g = weights.n_heads, weights.head_dim, weights.group
    if role == "o":
        columns = w.T if is_transposed_linear(module) else w  # [out, H*d]
        return columns.reshape(columns.shape[0], H, d).pow(2).sum((0, 2))
    units = H if role == "q" else H // g
    per_unit = w.reshape(units, d, -1).pow(2).sum((1, 2))
    return per_unit if role == "q" else per_unit.repeat_interleave(g)


def _tracked(weights: HeadWeights) -> dict[str, nn.Module]:
    out = {}
    for layer in range(weights.n_layers):
        for role in weights.roles():
            out[f"{layer}.{role}"] = weights.module(layer, role)
        for i, m in enumerate(weights.mlp_modules(layer)):
            out[f"{layer}.mlp{i}"] = m
    return out


def _weight(module: nn.Module) -> torch.Tensor:
    return getattr(module, "base_layer", module).weight


def _checkpoint_names(weights: HeadWeights) -> dict[int, str]:
    """id(module) -> the name of its weight in a ``save_pretrained`` checkpoint."""
    out = {}
    for name, module in weights.model.named_modules():
        if name.endswith(".base_layer"):  # a LoRA wrapper's frozen base: the wrapper's name
            continue
        out[id(module)] = f"{name}.weight"
    return out


def _same(start: StartWeights, weights: HeadWeights) -> bool:
    """The files hold exactly the weights the model has now (every tracked tensor)."""
    with torch.no_grad():
        return all(torch.equal(start[key].to(torch.float32),
                               effective_weight(m).detach().float().cpu())
                   for key, m in _tracked(weights).items())


def _trained_checkpoint(folder: Path) -> bool:
    """A Trainer checkpoint past step 0: not the start of the run that resumed from it."""
    try:
        return json.loads((folder / "trainer_state.json").read_text()).get("global_step", 0) > 0
    except (OSError, ValueError):
        return False
