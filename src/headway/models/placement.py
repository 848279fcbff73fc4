"""Where a model's parts run: the device a batch goes to, and ``from_pretrained`` keywords
that spread a model over devices (``device_map``)."""

from __future__ import annotations

import json

import torch
from torch import nn

from ..errors import ModelError
from .architectures import unwrap_model
from .builtin import cache_dir


def input_device(model: nn.Module) -> torch.device:
    """Where a batch goes: the device of the input embeddings (the first layer of a model
    spread over devices; the CPU when they are offloaded)."""
    weight = unwrap_model(model).get_input_embeddings().weight
    return torch.device("cpu") if weight.device.type == "meta" else weight.device


def placement_kwargs(device_map, offload_folder) -> dict:
    """``from_pretrained`` keywords for a ``device_map`` (a name, a dict or its JSON text)."""
    if device_map is None:
        return {}
    if isinstance(device_map, str) and device_map.lstrip().startswith("{"):
        try:
            device_map = json.loads(device_map)
        except ValueError as err:
            raise ModelError(f"device_map: not valid JSON ({err})") from None
    if isinstance(device_map, str) and device_map not in (
            "auto", "balanced", "balanced_low_0", "sequential"):
        raise ModelError(f"device_map {device_map!r}: use auto, balanced, balanced_low_0, "
                         f"sequential, or a JSON object of module -> device")
    out = {"device_map": device_map}
    if isinstance(device_map, str) or "disk" in map(str, device_map.values()):
        out["offload_folder"] = str(offload_folder or cache_dir() / "offload")
    return out
