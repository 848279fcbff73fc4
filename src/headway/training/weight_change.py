"""Per-head parameter change without a copy of the model: ‖W_t − W_0‖ / ‖W_0‖.

The starting weights W_0 come from where they already are: the safetensors files of the
checkpoint training started from, read memory-mapped one tensor at a time
(:meth:`StartWeights.from_folder`); a copy in the weights' own dtype is kept only when no such
file exists (a ``random:`` twin, a model changed after loading). The per-head norms are
computed per layer on the weights' device, all heads of a projection at once.

Sharded models (FSDP2, :mod:`headway.sharding`): each process reads only the rows of W_0 it
holds, computes the per-head squared norms of its rows, and the ``[L, H]`` sums are added
over processes; every process must call :func:`relative_change` (it is a collective).

Head h of layer l owns (d = head_dim, g = query heads per key/value head): q rows h*d:(h+1)*d;
k and v rows of its key/value head h // g; o columns h*d:(h+1)*d (see :mod:`.heads`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ..models.architectures import is_transposed_linear, unwrap_model
from ..models.placement import input_device
from ..models.sharding import (
    full,
    is_dtensor,
    is_sharded,
    local_rows,
    sum_over_processes,
)
from .heads import HeadWeights, effective_weight


class StartWeights:
    """W_0 of every tracked module (``"{layer}.{role}"``, ``"{layer}.mlp{i}"``): from files
    (memory-mapped, nothing held) or from a copy in the weights' dtype."""

    def __init__(self, tensors: dict[str, torch.Tensor] | None = None,
                 files: dict[str, tuple[Path, str]] | None = None, source: str = "memory",
                 offsets: dict[str, int] | None = None):
        self.tensors = tensors or {}
        self.files = files or {}
        self.source = source
        self.offsets = offsets or {}  # first row of a copy that holds only a shard's rows
        self._open: dict[Path, object] = {}  # one memory map per file, kept between records

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (0 when read from files)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def __getitem__(self, key: str) -> torch.Tensor:
        if key in self.tensors:
            return self.tensors[key]
        path, name = self.files[key]
        return self._file(path).get_tensor(name)

    def _file(self, path: Path):
        if path not in self._open:
            from safetensors import safe_open

            self._open[path] = safe_open(str(path), framework="pt")
        return self._open[path]

    def rows(self, key: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of W_0 for ``key`` (read from the file alone when memory-mapped)."""
        if key in self.tensors:
            offset = self.offsets.get(key, 0)
            return self.tensors[key][start - offset:stop - offset]
        path, name = self.files[key]
        return self._file(path).get_slice(name)[start:stop]

    @classmethod
    def copy_of(cls, weights: HeadWeights) -> StartWeights:
        """A copy of the current weights in their own dtype, on the CPU (of a sharded model:
        the rows this process holds)."""
        tensors, offsets = {}, {}
        with torch.no_grad():
            for key, m in _tracked(weights).items():
                local, offsets[key] = local_weight(m)
                tensors[key] = local.detach().cpu().clone()
        return cls(tensors=tensors, source="memory", offsets=offsets)

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
    :class:`StartWeights` or a dict of the same keys (:meth:`HeadWeights.snapshot`). Of a
    sharded model, every process must call it (the sums are added over processes)."""
    L, H = weights.n_layers, weights.n_heads
    roles = weights.roles()
    diff2, base2 = torch.zeros(2, 4, L, H)  # role order q, k, v, o
    mlp2 = torch.zeros(2, L, dtype=torch.float64)  # changed, start
    with torch.no_grad():
        for layer in range(L):
            for role in roles:
                module = weights.module(layer, role)
                now, first, row0 = _now_and_start(module, start, f"{layer}.{role}")
                i = "qkvo".index(role)
                diff2[i, layer] = _per_head(now - first, row0, role, weights, module).cpu()
                base2[i, layer] = _per_head(first, row0, role, weights, module).cpu()
            for j, module in enumerate(weights.mlp_modules(layer)):
                now, first, _ = _now_and_start(module, start, f"{layer}.mlp{j}")
                mlp2[0, layer] += float((now - first).pow(2).sum())
                mlp2[1, layer] += float(first.pow(2).sum())
    if is_sharded(weights.model):
        sums = sum_over_processes(torch.cat([diff2.double().flatten(), base2.double().flatten(),
                                             mlp2.flatten()]), input_device(weights.model))
        n = diff2.numel()
        diff2, base2 = sums[:n].view_as(diff2).float(), sums[n:2 * n].view_as(base2).float()
        mlp2 = sums[2 * n:].view_as(mlp2)
    used = ["qkvo".index(r) for r in roles]
    out = {r: (diff2[i] / base2[i]).sqrt() if i in used else torch.full((L, H), float("nan"))
           for i, r in enumerate("qkvo")}
    out["attn"] = (diff2[used].sum(0) / base2[used].sum(0)).sqrt()
    out["mlp"] = torch.where(mlp2[1] > 0, mlp2[0] / mlp2[1].clamp(min=1e-300), 0.0).sqrt().float()
    return out


def local_weight(module: nn.Module) -> tuple[torch.Tensor, int]:
    """``(rows of the module's effective weight this process holds, first row's index)``:
    the whole weight (row 0) unless the model is sharded (:mod:`headway.sharding`). The
    effective weight includes a LoRA adapter's or a head adapter's delta."""
    base = _weight(module)
    if not is_dtensor(base):
        return effective_weight(module), 0
    weight, row0 = local_rows(base)
    stop = row0 + weight.shape[0]
    if hasattr(module, "merged_weight"):  # a head adapter: its delta, gathered (it is small)
        weight, delta, index = weight.clone(), full(module.delta).to(weight.dtype), module.index
        if module.along == "rows":
            mine = (index >= row0) & (index < stop)
            weight[index[mine] - row0] += delta[mine]
        else:
            weight[:, index] += delta[row0:stop]
    elif hasattr(module, "get_delta_weight"):  # LoRA: B's rows of this process times A
        for name in module.active_adapters:
            if name in module.lora_A:
                b, a = full(module.lora_B[name].weight), full(module.lora_A[name].weight)
                rows = (b @ a).T[row0:stop] if getattr(module, "fan_in_fan_out", False) \
                    else b[row0:stop] @ a  # fan_in_fan_out: GPT-2's [in, out] Conv1D
                weight = weight + (rows * module.scaling[name]).to(weight.dtype)
    return weight, row0


def _now_and_start(module: nn.Module, start, key: str):
    """``(W_t rows, W_0 rows, first row)`` of this process, float32 on the weight's device."""
    now, row0 = local_weight(module)
    now = now.float()
    stop = row0 + now.shape[0]
    first = start.rows(key, row0, stop) if isinstance(start, StartWeights) \
        else start[key][row0:stop]
    return now, first.to(device=now.device, dtype=torch.float32), row0


def _per_head(w: torch.Tensor, row0: int, role: str, weights: HeadWeights,
              module) -> torch.Tensor:
    """Squared Frobenius norm of each query head's slice of ``w`` (``[H]``): ``w`` holds
    rows ``row0:row0 + len(w)`` of the projection's weight (all of them unless sharded)."""
    H, d, g = weights.n_heads, weights.head_dim, weights.group
    transposed = is_transposed_linear(module)
    if role == "o" and not transposed:  # heads are columns: every row adds to every head
        return w.reshape(w.shape[0], H, d).pow(2).sum((0, 2))
    units = H if role in "qo" else H // g  # heads are rows (GPT-2's Conv1D o: its input rows)
    row_sums = w.pow(2).sum(1)
    if row0 % d == 0 and len(row_sums) % d == 0:  # whole heads: no scatter needed
        per_unit = torch.zeros(units, device=w.device)
        per_unit[row0 // d:row0 // d + len(row_sums) // d] = row_sums.view(-1, d).sum(1)
    else:
        unit_of_row = torch.arange(row0, row0 + len(row_sums), device=w.device) // d
        per_unit = torch.zeros(units, device=w.device).index_add_(0, unit_of_row, row_sums)
    return per_unit if role in "qo" else per_unit.repeat_interleave(g)


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
    """The files hold exactly the weights the model has now (every tracked tensor; of a
    sharded model, the rows this process holds)."""
    same = True
    with torch.no_grad():
        for key, m in _tracked(weights).items():  # no early exit: a collective per module
            now, row0 = local_weight(m)
            first = start.rows(key, row0, row0 + now.shape[0])
            same &= torch.equal(first.to(torch.float32), now.detach().float().cpu())
    if is_sharded(weights.model):  # the same answer on every process
        flag = torch.tensor([float(not same)])
        same = bool(sum_over_processes(flag, input_device(weights.model)) == 0)
    return same


def _trained_checkpoint(folder: Path) -> bool:
    """A Trainer checkpoint past step 0: not the start of the run that resumed from it."""
    try:
        return json.loads((folder / "trainer_state.json").read_text()).get("global_step", 0) > 0
    except (OSError, ValueError):
        return False
