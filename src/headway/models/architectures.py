"""Where each model family keeps its heads: the decoder layers, the attention output
projection whose input is the concatenated head outputs (the *head slice*, ``[B, T, H*d]``,
head h owning columns ``h*d:(h+1)*d``), the q/k/v projections and the MLP; and the head
geometry ``(L, H, d)`` read from the config and module attributes.

To add a family, add one line to :data:`ARCHITECTURES`.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..errors import ModelError


@dataclass(frozen=True)
class Architecture:
    """Where a family keeps its decoder layers and, inside each layer, its attention projections.

    ``qkv`` names the separate query / key / value projections (``nn.Linear``, weight
    ``[heads * head_dim, hidden]``) or is None for families with one fused projection; those
    support scoring but not head-selective training or per-head q/k/v change. ``mlp`` lists the
    layer's feed-forward modules (for parameter-change tracking).
    """

    layers: str  # dotted path from the CausalLM to the list of decoder layers
    out_proj: str  # dotted path from one layer to the module whose input is the head slice
    qkv: tuple[str, str, str] | None = None
    mlp: tuple[str, ...] = ("mlp",)


_LLAMA_LIKE = Architecture("model.layers", "self_attn.o_proj",
                           ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"))

ARCHITECTURES: dict[str, Architecture] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "smollm3": _LLAMA_LIKE,
    "phi3": Architecture("model.layers", "self_attn.o_proj"),  # fused qkv_proj
    "gpt2": Architecture("transformer.h", "attn.c_proj"),  # fused c_attn
    "gpt_neox": Architecture("gpt_neox.layers", "attention.dense"),  # fused query_key_value
    "opt": Architecture("model.decoder.layers", "self_attn.out_proj",
                        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
                        ("fc1", "fc2")),
    "phi": Architecture("model.layers", "self_attn.dense",
                        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers CausalLM inside PEFT and DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):  # DDP
            model = model.module
        else:
            return model


def architecture(model: nn.Module) -> Architecture:
    """The :class:`Architecture` of ``model``; a clear error for unsupported families."""
    model = unwrap_model(model)
    model_type = model.config.model_type
    try:
        return ARCHITECTURES[model_type]
    except KeyError:
        raise ModelError(
            f"{type(model).__name__} (model_type {model_type!r}) is not supported yet. Supported: "
            f"{', '.join(sorted(ARCHITECTURES))}. To add it, register the dotted path of its "
            f"decoder layers and of the module whose input is the concatenated head outputs "
            f"(the attention output projection), e.g. headway.models.ARCHITECTURES"
            f"[{model_type!r}] = Architecture('model.layers', 'self_attn.o_proj')") from None


def _get(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def attention_output_projections(model: nn.Module) -> list[nn.Module]:
    """One module per layer whose input is the head slice ``[batch, seq, n_heads*head_dim]``."""
    out_proj = architecture(model).out_proj
    try:
        return [_get(layer, out_proj) for layer in decoder_layers(model)]
    except AttributeError as err:
        raise ModelError(f"{type(unwrap_model(model)).__name__}: no {out_proj!r} in its "
                         f"decoder layers: {err}") from err


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers, first to last."""
    model = unwrap_model(model)
    arch = architecture(model)
    try:
        return list(_get(model, arch.layers))
    except AttributeError as err:
        raise ModelError(f"{type(model).__name__}: expected decoder layers at "
                         f"{arch.layers!r}: {err}") from err


def is_transposed_linear(module: nn.Module) -> bool:
    """True for transformers' Conv1D (GPT-2), which stores its weight as [in, out], also
    inside a PEFT LoRA wrapper."""
    return type(getattr(module, "base_layer", module)).__name__ == "Conv1D"


def _in_features(module: nn.Module) -> int:
    """Input width of a linear layer, from its attributes (``in_features`` of nn.Linear and of
    quantised linears, whose weights are packed; ``nx`` of GPT-2's Conv1D), also inside a
    LoRA wrapper; the weight's shape only as the last resort."""
    base = getattr(module, "base_layer", module)
    for name in ("in_features", "nx"):
        value = getattr(base, name, None)
        if isinstance(value, int):
            return value
    return base.weight.shape[0] if is_transposed_linear(base) else base.weight.shape[1]


def head_geometry(model: nn.Module) -> tuple[int, int, int]:
    """``(n_layers, n_query_heads, head_dim)`` from the config (``num_attention_heads``,
    ``head_dim``) and the output projection's declared input width, never from weight shapes
    (4-bit and 8-bit weights are packed)."""
    projections = attention_output_projections(model)
    config = unwrap_model(model).config
    n_heads = getattr(config, "num_attention_heads", None) or config.n_head
    width = _in_features(projections[0])
    if width % n_heads:
        raise ModelError(f"{type(model).__name__}: attention output width {width} is not a "
                         f"multiple of {n_heads} heads")
    head_dim = getattr(config, "head_dim", None)
    if isinstance(head_dim, int) and head_dim * n_heads != width:
        raise ModelError(f"{type(model).__name__}: config head_dim {head_dim} x {n_heads} "
                         f"heads != the output projection's input width {width}")
    return len(projections), n_heads, width // n_heads
