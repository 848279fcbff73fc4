"""ActivationPattern: a task's L x H head-activation matrix, with what is needed to trust it.

On disk a pattern is two files that share a stem: ``NAME.safetensors`` (tensors, metadata
also in its header) and ``NAME.json`` (the same metadata, for people and other tools).

Tensors:
    scores       [n_layers, n_heads]      AP[l,h] = mean_i |s_i[l,h]|  (DESIGN.md 1.1, Eq. 2)
    per_sample   [N, n_layers, n_heads]   signed s_i[l,h] = <Γ_lh(x_i), ∂L/∂Γ_lh>   (optional)
    loss         [N]                      each sample's mean response-token loss (nats)
    index        [N]                      each sample's row index in its task source
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from .storage import atomic_save_tensors, atomic_write_json


def pattern_paths(path: str | Path) -> tuple[Path, Path]:
    """``(tensor_file, json_file)`` for a pattern path given with or without its suffix."""
    path = Path(path)
    if path.suffix in {".safetensors", ".json"}:
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


@dataclass
class ActivationPattern:
    scores: torch.Tensor  # [n_layers, n_heads], float32, >= 0
    meta: dict = field(default_factory=dict)
    per_sample: torch.Tensor | None = None  # [N, n_layers, n_heads], signed
    loss: torch.Tensor | None = None  # [N]
    index: torch.Tensor | None = None  # [N], int64

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def n_heads(self) -> int:
        return self.scores.shape[1]

    def top_heads(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring heads as ``(layer, head, score)``, best first."""
        values, flat = self.scores.flatten().topk(min(k, self.scores.numel()))
        return [(int(i) // self.n_heads, int(i) % self.n_heads, float(v))
                for v, i in zip(values, flat)]

    def save(self, path: str | Path) -> Path:
        """Write ``path``.safetensors and ``path``.json atomically; return the tensor file."""
        tensor_file, json_file = pattern_paths(path)
        tensors = {"scores": self.scores.float()}
        for name in ("per_sample", "loss", "index"):
            value = getattr(self, name)
            if value is not None:
                tensors[name] = value
        header = {"headway": json.dumps(self.meta, sort_keys=True)}
        atomic_save_tensors(tensor_file, tensors, metadata=header)
        atomic_write_json(json_file, {**self.meta, "tensors": {
            k: list(v.shape) for k, v in tensors.items()}})
        return tensor_file

    @classmethod
    def load(cls, path: str | Path) -> ActivationPattern:
        """Read a pattern written by :meth:`save` (path with or without suffix)."""
        tensor_file, _ = pattern_paths(path)
        if not tensor_file.is_file():
            raise FileNotFoundError(f"no activation pattern at {tensor_file}")
        with safe_open(str(tensor_file), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if "scores" not in tensors:
            raise ValueError(f"{tensor_file} is not a headway activation pattern (no 'scores')")
        meta = json.loads(header.get("headway", "{}"))
        return cls(scores=tensors["scores"], meta=meta, per_sample=tensors.get("per_sample"),
                   loss=tensors.get("loss"), index=tensors.get("index"))


def library_versions() -> dict[str, str]:
    """Installed versions of headway, torch and transformers, for result metadata."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("headway", "torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def pattern_meta(model: dict, task: dict, settings: dict, n_samples: int, mean_loss: float,
                 **extra) -> dict:
    """The metadata every saved pattern carries: model identity, task (name, source,
    data_hash), scoring settings, N, mean response loss, time and library versions."""
    import time

    return {"kind": "headway.ActivationPattern", "format_version": 1, "model": model,
            "task": task, **settings, "n_samples": n_samples, "mean_loss": mean_loss, **extra,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": library_versions()}
