"""Where each model family keeps its heads: the decoder layers, the attention output projection
whose input is the concatenated head outputs (the *head slice*, ``[B, T, H*d]``, head h owning
columns ``h*d:(h+1)*d``), the q/k/v projections (separate, fused, or MLA's low-rank ones) and
the MLP (2-D weights, or 3-D expert weights of a mixture of experts).

Most families need no entry: :func:`walk` finds the common layout (the text decoder that
``get_decoder()`` returns, its list of ``num_hidden_layers`` layers, an attention module with
``o_proj`` / ``out_proj`` / ``dense`` / ``c_proj`` and ``q_proj`` / ``k_proj`` / ``v_proj``, an
``mlp``), so a new Llama-like family works as it is. :data:`ARCHITECTURES` holds the
exceptions (fused q/k/v, whose row layout no name tells; OPT's MLP without a module), and
:func:`register_architecture` adds a family from the user's own code.

The head geometry ``(L, H, d)``: L from the decoder layers, H from the (text) config's
``num_attention_heads``, d = the output projection's declared input width / H, never
``config.head_dim`` (for MLA, d is ``v_head_dim``; for 4-bit weights the shapes are packed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch
from torch import nn

from ..errors import ModelError

ROLES = ("q", "k", "v", "o")
QKV_LAYOUTS = ("stacked", "per_head", "grouped", "mla")
ATTENTION_NAMES = ("self_attn", "attn", "attention", "self_attention")
OUT_NAMES = ("o_proj", "out_proj", "dense", "c_proj", "wo", "o")
QKV_NAMES = (("q_proj", "k_proj", "v_proj"), ("query", "key", "value"), ("wq", "wk", "wv"))
FUSED_NAMES = ("qkv_proj", "query_key_value", "c_attn", "Wqkv", "qkv", "wqkv")
MLP_NAMES = ("mlp", "feed_forward", "ffn", "block_sparse_moe", "moe")


@dataclass(frozen=True)
class Architecture:
    """Where a family keeps its heads. ``layers`` is a dotted path from the CausalLM to the list
    of decoder layers (None: the text decoder's list, found by :func:`walk`); every other path
    is relative to one decoder layer.

    - ``out_proj``: the module whose input is the head slice ``[B, T, H*d]``.
    - ``q``, ``k``, ``v``: separate projections, or ``qkv`` one fused projection with
      ``qkv_layout``: ``"stacked"`` ``[Q | K | V]`` (GPT-2, Phi-3), ``"per_head"`` ``[q_h k_h v_h]``
      per head (GPT-NeoX, Bloom), ``"grouped"`` ``[q x g, k, v]`` per key/value head (Falcon's
      new architecture), or a function of the config returning one of these. ``"mla"``: q is
      MLA's query projection (``q_b_proj``) and k and v share ``kv_b_proj``, ``[k_nope_h v_h]``
      per head (DeepSeek-V2/V3). None of q/k/v/qkv: scoring and the o change only.
    - ``mlp``: the layer's feed-forward modules, for its parameter change (3-D parameters are
      experts: ``[E, ...]``).
    """

    layers: str | None = None
    out_proj: str = "self_attn.o_proj"
    q: str | None = "self_attn.q_proj"
    k: str | None = "self_attn.k_proj"
    v: str | None = "self_attn.v_proj"
    qkv: str | None = None
    qkv_layout: str | Callable | None = None
    mlp: tuple[str, ...] = ("mlp",)

    def __post_init__(self):
        if self.qkv is not None and self.qkv_layout is None:
            raise ModelError(f"qkv={self.qkv!r} needs qkv_layout: one of {QKV_LAYOUTS}, or a "
                             f"function of the config returning one")
        if isinstance(self.qkv_layout, str) and self.qkv_layout not in QKV_LAYOUTS:
            raise ModelError(f"qkv_layout {self.qkv_layout!r} is not one of {QKV_LAYOUTS}")
        if isinstance(self.mlp, str):
            object.__setattr__(self, "mlp", (self.mlp,))


def _fused(qkv: str, layout, out_proj: str, mlp=("mlp",)) -> Architecture:
    return Architecture(out_proj=out_proj, q=None, k=None, v=None, qkv=qkv, qkv_layout=layout,
                        mlp=mlp)


def _falcon_layout(config) -> str:
    if getattr(config, "new_decoder_architecture", False):
        return "grouped"
    return "stacked" if getattr(config, "multi_query", True) else "per_head"


# families tested (tests/test_families.py), as docs/architectures.md's table lists them
TESTED_FAMILIES = (
    "llama", "mistral", "qwen2", "qwen3", "qwen2_moe", "qwen3_moe", "mixtral", "gemma",
    "gemma2", "gemma3", "gemma3_text", "smollm3", "phi", "phi3", "olmo", "olmo2", "olmo3",
    "granite", "cohere", "stablelm", "starcoder2", "glm", "glm4", "gpt_oss", "deepseek_v2",
    "deepseek_v3", "gpt2", "gpt_neox", "gptj", "bloom", "falcon", "opt")

# the exceptions to the common layout; every other family is found by walk()
ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": _fused("attn.c_attn", "stacked", "attn.c_proj"),
    "gpt_bigcode": _fused("attn.c_attn", "stacked", "attn.c_proj"),
    "gpt_neox": _fused("attention.query_key_value", "per_head", "attention.dense"),
    "bloom": _fused("self_attention.query_key_value", "per_head", "self_attention.dense"),
    "falcon": _fused("self_attention.query_key_value", _falcon_layout, "self_attention.dense"),
    "phi3": _fused("self_attn.qkv_proj", "stacked", "self_attn.o_proj"),
    "opt": Architecture(out_proj="self_attn.out_proj", mlp=("fc1", "fc2")),
}


def register_architecture(model_type: str, architecture: Architecture | None = None,
                          **fields) -> Architecture:
    """Tell headway where a family keeps its heads (see :class:`Architecture`); returns the
    entry. ``model_type`` is the config's ``model_type``. For example a Falcon-like family with
    a fused per-head q/k/v::

        headway.register_architecture(
            "my_falcon", layers="transformer.h", out_proj="self_attention.dense",
            q=None, k=None, v=None, qkv="self_attention.query_key_value",
            qkv_layout="per_head")
    """
    arch = replace(architecture or Architecture(), **fields)
    ARCHITECTURES[model_type] = arch
    return arch


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers model inside PEFT and DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):  # DDP
            model = model.module
        else:
            return model


def text_config(config):
    """The text decoder's config (a multimodal model's ``text_config``; else the config)."""
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def get_path(module: nn.Module, dotted: str) -> nn.Module:
    for part in dotted.split("."):
        module = getattr(module, part)
    return module


def _path_of(root: nn.Module, target: nn.Module) -> str | None:
    return next((name for name, m in root.named_modules() if m is target), None)


def _child(module: nn.Module, names) -> str | None:
    return next((n for n in names if isinstance(getattr(module, n, None), nn.Module)), None)


def is_transposed_linear(module: nn.Module) -> bool:
    """True for transformers' Conv1D (GPT-2), which stores its weight as [in, out], also
    inside a PEFT LoRA wrapper."""
    return type(getattr(module, "base_layer", module)).__name__ == "Conv1D"


def in_features(module: nn.Module) -> int:
    """Input width of a linear layer, from its attributes (``in_features`` of nn.Linear and of
    quantised linears, whose weights are packed; ``nx`` of GPT-2's Conv1D), also inside a
    LoRA wrapper; the weight's shape only as the last resort."""
    base = getattr(module, "base_layer", module)
    for name in ("in_features", "nx"):
        value = getattr(base, name, None)
        if isinstance(value, int):
            return value
    return base.weight.shape[0] if is_transposed_linear(base) else base.weight.shape[1]


def out_features(module: nn.Module) -> int:
    """Output width of a linear layer (``out_features``, Conv1D's ``nf``)."""
    base = getattr(module, "base_layer", module)
    for name in ("out_features", "nf"):
        value = getattr(base, name, None)
        if isinstance(value, int):
            return value
    return base.weight.shape[1] if is_transposed_linear(base) else base.weight.shape[0]


def _layers_path(model: nn.Module, n_layers: int) -> str | None:
    """Dotted path of the text decoder's list of ``n_layers`` layers."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    roots = [decoder] if isinstance(decoder, nn.Module) else []
    roots.append(model)
    for root in roots:
        for name, m in root.named_modules():
            if isinstance(m, nn.ModuleList) and len(m) == n_layers and name and \
                    _child(m[0], ATTENTION_NAMES):
                return _path_of(model, m)
    return None


def walk(model: nn.Module) -> tuple[Architecture | None, str]:
    """The common layout, found in ``model``'s modules: ``(architecture, "")``, or ``(None,
    what was found and what was missing)`` for the error message."""
    config = text_config(model.config)
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None)
    layers = _layers_path(model, n_layers) if n_layers else None
    if layers is None:
        return None, f"no list of {n_layers} decoder layers with an attention module"
    layer = get_path(model, layers)[0]
    attn = _child(layer, ATTENTION_NAMES)
    attention = getattr(layer, attn)
    out = _child(attention, OUT_NAMES)
    children = [n for n, _ in attention.named_children()]
    if out is None:
        return None, (f"decoder layers at {layers}, attention at {attn} with "
                      f"{', '.join(children) or 'no submodules'}: none of them is an output "
                      f"projection named {'/'.join(OUT_NAMES)}")
    fields: dict = {"layers": layers, "out_proj": f"{attn}.{out}",
                    "mlp": tuple(n for n in MLP_NAMES if isinstance(getattr(layer, n, None),
                                                                    nn.Module)) or ()}
    qkv = next((names for names in QKV_NAMES if all(hasattr(attention, n) for n in names)), None)
    if hasattr(attention, "kv_b_proj"):  # multi-head latent attention (DeepSeek-V2/V3)
        q = "q_b_proj" if hasattr(attention, "q_b_proj") else "q_proj"
        fields.update(q=f"{attn}.{q}", k=None, v=None, qkv=f"{attn}.kv_b_proj",
                      qkv_layout="mla")
    elif qkv:
        fields.update(zip("qkv", (f"{attn}.{n}" for n in qkv)))
    else:  # a fused projection: its row layout is not in its name, so q/k/v stay unknown
        fields.update(q=None, k=None, v=None)
    return Architecture(**fields), ""


def architecture(model: nn.Module) -> Architecture:
    """The :class:`Architecture` of ``model``: its entry in :data:`ARCHITECTURES` (the layers
    path filled in by the walk where the entry leaves it out), else the common layout found by
    :func:`walk`; a :class:`ModelError` saying what to register otherwise."""
    model = unwrap_model(model)
    model_type = model.config.model_type
    entry = ARCHITECTURES.get(model_type)
    found, missing = walk(model)
    if entry is not None:
        if entry.layers is None:
            layers = found.layers if found else _layers_path(
                model, getattr(text_config(model.config), "num_hidden_layers", None)
                or getattr(text_config(model.config), "n_layer", 0))
            if layers is None:
                raise ModelError(f"{type(model).__name__}: its registered architecture names "
                                 f"no layers and none were found; pass layers=...")
            entry = replace(entry, layers=layers)
        return entry
    if found is None:
        raise unsupported(model, missing)
    return found


def unsupported(model: nn.Module, missing: str) -> ModelError:
    """The error for a family headway cannot find the heads of, with an example built from
    what its modules look like."""
    model_type = model.config.model_type
    config = text_config(model.config)
    n_layers = getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", 0)
    lists = [name for name, m in model.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) == n_layers and name]
    layers = lists[0] if lists else "LAYERS"
    inside = ""
    if lists:
        children = [n for n, _ in get_path(model, layers)[0].named_children()]
        inside = f"; its layers ({layers}) hold {', '.join(children) or 'no submodules'}"
    example = (f"headway.register_architecture({model_type!r}, layers={layers!r}, "
               f"out_proj='ATTENTION.OUT_PROJ', q='ATTENTION.Q', k='ATTENTION.K', "
               f"v='ATTENTION.V', mlp='MLP')")
    return ModelError(
        f"{type(model).__name__} (model_type {model_type!r}): headway cannot find its "
        f"attention heads ({missing}{inside}). Supported: {', '.join(TESTED_FAMILIES)}, and "
        f"any family with their common layout",
        hint=f"if it has attention heads, say where: {example} (docs/architectures.md)")


@dataclass
class ModelHeads:
    """An architecture resolved on one model: its decoder layers, head geometry and, per role,
    which rows (q/k/v: output features) or columns (o: input features) of which projection
    belong to each query head.

    ``n_kv``: key/value heads (``g = H / n_kv`` query heads share one); under MLA every query
    head has its own k and v (``n_kv = H``).
    """

    model: nn.Module
    arch: Architecture
    layers: list[nn.Module]
    n_heads: int
    head_dim: int  # d: the width of one head's slice at the output projection
    n_kv: int
    layout: str | None  # the qkv layout of a fused or MLA projection
    _rows: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv

    @property
    def has_qkv(self) -> bool:
        """q/k/v can be sliced per head (separate projections, a known fused layout, MLA)."""
        return self.arch.qkv is not None or all((self.arch.q, self.arch.k, self.arch.v))

    def roles(self) -> tuple[str, ...]:
        """The projections with per-head weights: q, k, v, o (only o where q/k/v are
        fused in an unknown layout)."""
        return ROLES if self.has_qkv else ("o",)

    def projection(self, layer: int, role: str) -> nn.Module:
        """The module of ``role`` (q, k, v, o) in ``layer``; k and v of a fused or MLA
        projection are the same module as q (fused) or as each other (MLA)."""
        a = self.arch
        if role == "o":
            path = a.out_proj
        elif not self.has_qkv:
            raise ModelError(f"{type(self.model).__name__}: its q/k/v projections are fused in "
                             f"a layout headway does not know, so they cannot be sliced per "
                             f"head (scoring and the output projection's change work)",
                             hint="register the layout: headway.register_architecture(..., "
                                  "qkv=..., qkv_layout='stacked'|'per_head'|'grouped')")
        elif a.qkv is not None and (self.layout != "mla" or role in "kv"):
            path = a.qkv
        else:
            path = {"q": a.q, "k": a.k, "v": a.v}[role]
        return get_path(self.layers[layer], path)

    def rows(self, role: str) -> torch.Tensor:
        """``[H, r]`` indices: for q/k/v the output features of :meth:`projection` that feed
        each query head (k and v: those of its key/value head), for o the input features of
        the output projection that carry its slice."""
        if role not in self._rows:
            self._rows[role] = self._head_rows(role)
        return self._rows[role]

    def _head_rows(self, role: str) -> torch.Tensor:
        H, d, g = self.n_heads, self.head_dim, self.group
        heads = torch.arange(H)
        if role == "o":
            return heads[:, None] * d + torch.arange(d)
        width = out_features(self.projection(0, role))
        layout = self.layout if self.arch.qkv is not None else "separate"
        if layout == "separate":
            units = H if role == "q" else self.n_kv
            size = width // units
            unit = heads if role == "q" else heads // g
            return unit[:, None] * size + torch.arange(size)
        if layout == "mla":
            config = text_config(self.model.config)
            if role == "q":
                size = width // H
                return heads[:, None] * size + torch.arange(size)
            nope, v_dim = config.qk_nope_head_dim, config.v_head_dim
            start = heads * (nope + v_dim) + (0 if role == "k" else nope)
            return start[:, None] + torch.arange(nope if role == "k" else v_dim)
        dq = width // (H + 2 * self.n_kv)  # one head's rows in the fused projection
        span = torch.arange(dq)
        if layout == "stacked":
            start = {"q": heads * dq, "k": H * dq + (heads // g) * dq,
                     "v": (H + self.n_kv) * dq + (heads // g) * dq}[role]
        elif layout == "per_head":
            start = heads * 3 * dq + "qkv".index(role) * dq
        else:  # grouped: [q x g, k, v] per key/value head
            group, member = heads // g, heads % g
            start = group * (g + 2) * dq + {"q": member * dq, "k": g * dq,
                                            "v": (g + 1) * dq}[role]
        return start[:, None] + span

    def mlp_modules(self, layer: int) -> list[nn.Module]:
        """The layer's feed-forward modules (empty when there are none)."""
        found = []
        for path in self.arch.mlp:
            try:
                found.append(get_path(self.layers[layer], path))
            except AttributeError:
                continue
        return found


def resolve(model: nn.Module) -> ModelHeads:
    """:class:`ModelHeads` of ``model`` (a transformers model, or a PEFT / DDP wrapper)."""
    inner = unwrap_model(model)
    arch = architecture(inner)
    try:
        layers = list(get_path(inner, arch.layers))
    except AttributeError as err:
        raise ModelError(f"{type(inner).__name__}: expected decoder layers at "
                         f"{arch.layers!r}: {err}") from err
    try:
        out = get_path(layers[0], arch.out_proj)
    except AttributeError as err:
        raise ModelError(f"{type(inner).__name__}: no {arch.out_proj!r} in its decoder layers: "
                         f"{err}") from err
    config = text_config(inner.config)
    n_heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    if not n_heads:
        raise ModelError(f"{type(inner).__name__}: its config names no num_attention_heads")
    width = in_features(out)
    if width % n_heads:
        raise ModelError(f"{type(inner).__name__}: attention output width {width} is not a "
                         f"multiple of {n_heads} heads")
    layout = arch.qkv_layout(config) if callable(arch.qkv_layout) else arch.qkv_layout
    if layout in ("mla", "per_head"):
        n_kv = n_heads
    elif layout == "stacked" and getattr(config, "multi_query", False):
        n_kv = 1
    else:
        n_kv = (getattr(config, "num_key_value_heads", None)
                or getattr(config, "num_kv_heads", None) or n_heads)
    return ModelHeads(model=inner, arch=arch, layers=layers, n_heads=n_heads,
                      head_dim=width // n_heads, n_kv=n_kv, layout=layout)


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The model's decoder layers, first to last."""
    return resolve(model).layers


def attention_output_projections(model: nn.Module) -> list[nn.Module]:
    """One module per layer whose input is the head slice ``[batch, seq, n_heads*head_dim]``."""
    heads = resolve(model)
    return [heads.projection(layer, "o") for layer in range(heads.n_layers)]


def head_geometry(model: nn.Module) -> tuple[int, int, int]:
    """``(n_layers, n_query_heads, head_dim)``; head_dim is the output projection's declared
    input width / H (never ``config.head_dim``; weights may be packed)."""
    heads = resolve(model)
    return heads.n_layers, heads.n_heads, heads.head_dim


def check_config(config) -> None:
    """Refuse, from the config alone and before any weight is read, a family headway cannot
    find the heads of: the model is built on the meta device (no memory, no weights) and its
    architecture resolved."""
    from transformers import AutoModelForCausalLM

    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except (ValueError, KeyError, ImportError, TypeError, AttributeError, RuntimeError):
        return  # transformers cannot build it from the config: loading will say why
    resolve(skeleton)
