"""Per-head parameter change without a copy of the model: ‖W_t − W_0‖ / ‖W_0‖.

The starting weights W_0 come from where they already are: the safetensors files of the
checkpoint training started from, read memory-mapped one tensor at a time
(:meth:`StartWeights.from_folder`); a copy in the weights' own dtype is kept only when no such
file holds them (a ``random:`` twin, a model changed after loading). The norms are computed
per tensor on the weights' device.

What is measured (:func:`tracked_weights`): each distinct attention projection of each layer
(a fused q/k/v projection once, MLA's ``kv_b_proj`` once for k and v) and every weight of the
layer's MLP: 2-D weights, routers, shared experts and 3-D expert weights ``[E, ...]`` of a
mixture of experts, whose change is also reported per expert.

Sharded models (FSDP2, :mod:`headway.models.sharding`): each process reads only the rows of W_0
it holds, computes the squared norms of its rows, and the sums are added over processes;
every process must call :func:`relative_change` (it is a collective).

Head h of layer l owns the rows and columns :meth:`~headway.models.architectures.ModelHeads.rows`
gives: its q rows, its key/value head's k and v rows, its o columns.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..models.architectures import ModelHeads, is_transposed_linear, resolve
from ..models.placement import input_device
from ..models.sharding import (
    full,
    is_dtensor,
    is_sharded,
    local_rows,
    sum_over_processes,
)
from .heads import _is_lora, effective_weight

ROLES = ("q", "k", "v", "o")
_EXPERT = re.compile(r"(?:^|\.)experts\.(\d+)(?:\.|$)")


@dataclass
class Tracked:
    """One weight tensor whose change is measured."""

    module: nn.Module  # its owner: a plain module, a LoRA layer or a head adapter
    attr: str  # the parameter's name on ``module`` ("weight", "gate_up_proj", ...)
    name: str  # its name in a ``save_pretrained`` checkpoint
    layer: int
    roles: tuple[str, ...] = ()  # the attention roles it serves (q, k, v, o); () for the MLP
    expert: int | None = None  # a module of the ``experts`` list: its index
    per_expert: bool = False  # a 3-D ``[E, ...]`` expert weight

    @property
    def tensor(self) -> torch.Tensor:
        """The stored parameter (the base weight of an adapted layer)."""
        owner = getattr(self.module, "base_layer", self.module) if self.attr == "weight" \
            else self.module
        return getattr(owner, self.attr)


def tracked_weights(heads: ModelHeads) -> dict[str, Tracked]:
    """``{key: Tracked}``: ``"{layer}.{role}"`` for each distinct attention projection (the
    first role it serves names it) and the checkpoint name of every weight of at least two
    dimensions in the layer's MLP modules."""
    names = {id(m): n for n, m in heads.model.named_modules() if not n.endswith(".base_layer")}
    out: dict[str, Tracked] = {}
    for layer in range(heads.n_layers):
        owners: dict[int, Tracked] = {}
        for role in heads.roles():
            module = heads.projection(layer, role)
            if id(module) in owners:
                owners[id(module)].roles += (role,)
                continue
            owners[id(module)] = out[f"{layer}.{role}"] = Tracked(
                module, "weight", f"{names[id(module)]}.weight", layer, (role,))
        for mlp in heads.mlp_modules(layer):
            inside_lora = {id(c) for m in mlp.modules() if _is_lora(m) for c in m.modules()
                           if c is not m}
            for sub_name, sub in mlp.named_modules():
                if id(sub) in inside_lora:
                    continue  # measured as the LoRA layer's weight
                match = _EXPERT.search(sub_name)
                expert = int(match.group(1)) if match else None  # a list of expert modules
                fused = sub_name.rpartition(".")[2] == "experts" and not isinstance(
                    sub, nn.ModuleList)  # fused experts: every tensor is [E, ...]
                params = ([("weight", sub.base_layer.weight)] if _is_lora(sub)
                          else list(sub.named_parameters(recurse=False)))
                for attr, p in params:
                    if p.dim() >= 2:
                        name = f"{names[id(sub)]}.{attr}"
                        out[name] = Tracked(sub, attr, name, layer, expert=expert,
                                            per_expert=fused)
    return out


def current_value(t: Tracked) -> tuple[torch.Tensor, int]:
    """``(rows of the weight's current value this process holds, first row's index)``, in
    float32 for adapted layers: the whole weight (row 0) unless the model is sharded
    (:mod:`headway.models.sharding`). The value includes a LoRA adapter's or a head adapter's
    delta."""
    stored = t.tensor
    module = t.module
    if t.attr != "weight" or not (hasattr(module, "merged_weight") or _is_lora(module)):
        return local_rows(stored)
    if not is_dtensor(stored):
        return effective_weight(module), 0
    weight, row0 = local_rows(stored)
    stop = row0 + weight.shape[0]
    transposed = is_transposed_linear(module)
    if hasattr(module, "merged_weight"):  # a head adapter: its delta, gathered (it is small)
        delta, index = full(module.delta).float(), module.index.to(weight.device)
        weight = weight.float().clone()
        if transposed:  # the delta in the stored orientation
            delta = delta.T
        if (module.along == "rows") != transposed:  # stored rows: those of this shard
            mine = (index >= row0) & (index < stop)
            weight[index[mine] - row0] += delta[mine]
        else:  # stored columns of every row: this shard's rows of the delta
            weight[:, index] += delta[row0:stop]
        return weight, row0
    for name in module.active_adapters:  # LoRA: B's rows of this process times A
        if name in module.lora_A:
            b, a = full(module.lora_B[name].weight), full(module.lora_A[name].weight)
            rows = (b @ a).T[row0:stop] if getattr(module, "fan_in_fan_out", False) \
                else b[row0:stop] @ a  # fan_in_fan_out: GPT-2's [in, out] Conv1D
            weight = weight + (rows * module.scaling[name]).to(weight.dtype)
    return weight, row0


class StartWeights:
    """W_0 of every tracked weight (keys of :func:`tracked_weights`): from files
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
    def copy_of(cls, heads: ModelHeads) -> StartWeights:
        """A copy of the current weights in their own dtype, on the CPU (of a sharded model:
        the rows this process holds)."""
        tensors, offsets = {}, {}
        with torch.no_grad():
            for key, t in tracked_weights(heads).items():
                local, offsets[key] = current_value(t)
                tensors[key] = local.detach().cpu().clone()
        return cls(tensors=tensors, source="memory", offsets=offsets)

    @classmethod
    def from_folder(cls, folder: str | Path, heads: ModelHeads) -> StartWeights | None:
        """The start read from ``folder``'s safetensors files, or None when they do not hold
        every tracked weight with the shape the model has now."""
        from safetensors import safe_open

        folder = Path(folder)
        index = folder / "model.safetensors.index.json"
        try:
            if index.is_file():
                where = {k: folder / v for k, v in
                         json.loads(index.read_text())["weight_map"].items()}
            elif (folder / "model.safetensors").is_file():
                with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
                    where = {k: folder / "model.safetensors" for k in f.keys()}
            else:
                return None
        except (OSError, ValueError, KeyError):
            return None
        files = {}
        for key, t in tracked_weights(heads).items():
            if t.name not in where:
                return None
            with safe_open(str(where[t.name]), framework="pt") as f:
                if tuple(f.get_slice(t.name).get_shape()) != tuple(t.tensor.shape):
                    return None
            files[key] = (where[t.name], t.name)
        return cls(files=files, source=str(folder))


def start_weights(model: nn.Module, folder: str | Path | None = None,
                  now_is_start: bool = True) -> StartWeights | None:
    """W_0 for ``model``: read memory-mapped from ``folder`` (default: where the model was
    loaded from, its ``name_or_path``: a folder, or a hub id's files in the local Hugging Face
    cache) when the files hold the weights; else, when the model's weights are the start
    (``now_is_start``), a copy of them in their own dtype (of a sharded model: the rows this
    process holds); else None (a resumed run whose start is nowhere to be read).

    Of a sharded model every process must call it, and all take the same path (the choice
    is agreed over processes: a node that lacks the files makes every process copy)."""
    heads = resolve(model)
    config = heads.model.config
    candidate = folder or getattr(config, "_name_or_path", None)
    start = None
    if candidate and not Path(candidate).is_dir():  # a hub id: its files in the local cache
        from ..hub import cached_snapshot

        candidate = cached_snapshot(str(candidate), getattr(config, "_commit_hash", None))
    if candidate and Path(candidate).is_dir() and not (
            not now_is_start and _trained_checkpoint(Path(candidate))):
        start = StartWeights.from_folder(candidate, heads)
    if is_sharded(heads.model):  # the same choice on every process
        missing = torch.tensor([float(start is None)])
        if float(sum_over_processes(missing, input_device(heads.model))) > 0:
            start = None
    if start is not None and (not now_is_start or _same(start, heads)):
        return start
    return StartWeights.copy_of(heads) if now_is_start else None


def describe_start(start: StartWeights | None) -> dict:
    """What a run's manifest says about W_0: where it was read from, or how much a copy
    holds."""
    if start is None:
        return {"source": None, "note": "not recorded: the run resumed and its start is in no "
                                        "file"}
    if start.source == "memory":
        return {"source": "copy", "bytes": start.nbytes,
                "note": "no file holds the starting weights (a random twin, a model changed "
                        "after loading, or a checkpoint layout headway cannot map): a copy "
                        "in the weights' own dtype"}
    return {"source": "files", "folder": start.source, "bytes": 0}


def _now_and_start(t: Tracked, start, key: str):
    """``(W_t rows, W_0 rows, first row)`` of this process, float32 on the weight's device."""
    now, row0 = current_value(t)
    now = now.float()
    stop = row0 + now.shape[0]
    first = start.rows(key, row0, stop) if isinstance(start, StartWeights) \
        else start[key][row0:stop]
    return now, first.to(device=now.device, dtype=torch.float32), row0


def per_head_sq(w: torch.Tensor, row0: int, n_rows: int, index: torch.Tensor,
                along_rows: bool) -> torch.Tensor:
    """Squared Frobenius norm of each head's part of a weight (``[H]``), from the rows
    ``row0:row0 + len(w)`` of it that this process holds (all ``n_rows`` unless sharded).
    ``index`` ``[H, r]``: each head's stored rows (``along_rows``) or columns."""
    if along_rows:
        sums = torch.zeros(n_rows, device=w.device)
        sums[row0:row0 + w.shape[0]] = w.pow(2).sum(1)
    else:  # every stored row adds to every column: this shard's share of each column
        sums = w.pow(2).sum(0)
    return sums[index.to(w.device)].sum(1)


def relative_change(heads: ModelHeads | nn.Module, start) -> dict[str, torch.Tensor]:
    """‖W_t − W_0‖_F / ‖W_0‖_F per head and role, per layer for the MLP and per expert.

    Returns ``{"q","k","v","o","attn": [L, H], "mlp": [L]}`` and, for a mixture of experts,
    ``"mlp_experts": [L, E]`` (float32, CPU); ``attn`` pools a head's q, k, v and o slices;
    q/k/v are NaN where they cannot be sliced per head, ``mlp`` where a layer has no MLP
    weight, ``mlp_experts`` where a layer has no experts. ``start``: a :class:`StartWeights`
    or a dict of the same keys (:func:`snapshot`). Of a sharded model, every process must
    call it (the sums are added over processes)."""
    heads = heads if isinstance(heads, ModelHeads) else resolve(heads)
    L, H = heads.n_layers, heads.n_heads
    tracked = tracked_weights(heads)
    n_experts = max((t.tensor.shape[0] if t.per_expert else (t.expert or 0) + 1
                     for t in tracked.values() if t.per_expert or t.expert is not None),
                    default=0)
    diff2, base2 = torch.zeros(2, 4, L, H)
    mlp2 = torch.zeros(2, L, dtype=torch.float64)  # changed, start
    experts2 = torch.zeros(2, L, max(n_experts, 1), dtype=torch.float64)
    has_mlp = torch.zeros(L, dtype=torch.bool)
    has_experts = torch.zeros(L, dtype=torch.bool)
    with torch.no_grad():
        for key, t in tracked.items():
            now, first, row0 = _now_and_start(t, start, key)
            change, layer = now - first, t.layer
            if t.roles:
                transposed = is_transposed_linear(t.module)
                n_rows = t.tensor.shape[0]
                for role in t.roles:
                    i, index = ROLES.index(role), heads.rows(role)
                    along_rows = (role != "o") != transposed
                    diff2[i, layer] = per_head_sq(change, row0, n_rows, index, along_rows).cpu()
                    base2[i, layer] = per_head_sq(first, row0, n_rows, index, along_rows).cpu()
                continue
            d2, b2 = change.pow(2), first.pow(2)
            has_mlp[layer] = True
            mlp2[0, layer] += float(d2.sum())
            mlp2[1, layer] += float(b2.sum())
            if t.per_expert:
                rows = slice(row0, row0 + d2.shape[0])
                experts2[0, layer, rows] += d2.flatten(1).sum(1).double().cpu()
                experts2[1, layer, rows] += b2.flatten(1).sum(1).double().cpu()
            elif t.expert is not None:
                experts2[0, layer, t.expert] += float(d2.sum())
                experts2[1, layer, t.expert] += float(b2.sum())
            has_experts[layer] |= t.per_expert or t.expert is not None
    if is_sharded(heads.model):
        parts = [diff2.double(), base2.double(), mlp2, experts2]
        sums = sum_over_processes(torch.cat([p.flatten() for p in parts]),
                                  input_device(heads.model))
        out, offset = [], 0
        for p in parts:
            out.append(sums[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
        diff2, base2, mlp2, experts2 = out[0].float(), out[1].float(), out[2], out[3]
    used = [ROLES.index(r) for r in heads.roles()]
    result = {r: (diff2[i] / base2[i]).sqrt() if i in used else torch.full((L, H), float("nan"))
              for i, r in enumerate(ROLES)}
    result["attn"] = (diff2[used].sum(0) / base2[used].sum(0)).sqrt()
    result["mlp"] = _ratio(mlp2, has_mlp[:, None])[:, 0] if L else torch.zeros(0)
    if n_experts:
        result["mlp_experts"] = _ratio(experts2, has_experts[:, None].expand(L, n_experts))
    return result


def _ratio(sums: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """sqrt(changed / start) where ``present`` (0 where the start is 0), NaN elsewhere."""
    changed, first = sums[0].reshape(present.shape), sums[1].reshape(present.shape)
    value = torch.where(first > 0, changed / first.clamp(min=1e-300), 0.0).sqrt().float()
    return torch.where(present, value, torch.tensor(float("nan")))


def snapshot(heads: ModelHeads | nn.Module) -> dict[str, torch.Tensor]:
    """CPU float32 copies of every tracked weight (keys of :func:`tracked_weights`). Not for a
    sharded model (use :meth:`StartWeights.copy_of`, which keeps each process's rows)."""
    heads = heads if isinstance(heads, ModelHeads) else resolve(heads)
    if is_sharded(heads.model):
        raise ValueError("snapshot() of a sharded (FSDP2) model: use "
                         "StartWeights.copy_of(heads), which keeps each process's rows")
    with torch.no_grad():
        return {key: current_value(t)[0].detach().float().cpu().clone()
                for key, t in tracked_weights(heads).items()}


def _same(start: StartWeights, heads: ModelHeads) -> bool:
    """The files hold exactly the weights the model has now (every tracked tensor; of a
    sharded model, the rows this process holds)."""
    same = True
    with torch.no_grad():
        for key, t in tracked_weights(heads).items():  # no early exit: a collective per module
            now, row0 = current_value(t)
            first = start.rows(key, row0, row0 + now.shape[0])
            same &= torch.equal(first.to(torch.float32), now.detach().float().cpu())
    if is_sharded(heads.model):  # the same answer on every process
        flag = torch.tensor([float(not same)])
        same = bool(sum_over_processes(flag, input_device(heads.model)) == 0)
    return same


def _trained_checkpoint(folder: Path) -> bool:
    """A Trainer checkpoint past step 0: not the start of the run that resumed from it."""
    try:
        return json.loads((folder / "trainer_state.json").read_text()).get("global_step", 0) > 0
    except (OSError, ValueError):
        return False
