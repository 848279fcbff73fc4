"""``headway estimate``: how much accelerator memory scoring and tracked training will take,
from a model's config alone (no weights are loaded), and the largest batch that fits a device.

How: the weights, their gradients and AdamW's states are counted from the model built on
PyTorch's meta device (no memory). The activations are measured, not guessed: the same model
family is built on the CPU with every width (hidden size, MLP and expert widths, head
dimensions) divided by a factor f and one or two decoder layers, the vocabulary and the head
and expert counts as they are, and run at the real batch size and length (scoring: headway's
gate path; training: a forward and backward of the SFT loss) while
:class:`~headway.scoring.memory.PeakMemory` counts the tensors alive. Two layer counts
separate what one layer holds from what the rest (embeddings, the LM head's chunks) holds;
two factors separate the part that grows with the widths from the part that does not (per
head, per expert, per vocabulary entry): ``m(f) = A / f + C``, and the full model holds
``A + C`` per layer. Activation memory is linear in the widths for every family headway
runs (no width-squared activation exists), which is what makes the extrapolation exact up to
allocator rounding; ``benchmarks/bench_estimate.py`` measures how close it comes.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from .errors import HeadwayError

GIB = 2 ** 30
WIDTHS = ("hidden_size", "n_embd", "d_model", "intermediate_size", "n_inner", "ffn_dim",
          "moe_intermediate_size", "shared_expert_intermediate_size", "head_dim",
          "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "q_lora_rank", "kv_lora_rank",
          "embedding_size")
LAYERS = ("num_hidden_layers", "n_layer", "num_layers")
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass
class Estimate:
    """Predicted peak memory of one workload, in bytes, and what makes it up."""

    workload: str
    batch: int
    length: int
    weights: int
    activations: int
    gradients: int = 0
    optimizer: int = 0
    per_row: int = 0  # bytes one more row adds

    @property
    def peak(self) -> int:
        """Weights and optimizer states throughout; then the larger of what the forward and
        backward pass hold (the activations, freed as the gradients arrive) and what the
        optimizer step holds (every gradient, and AdamW's temporaries of the same size)."""
        return self.weights + self.optimizer + max(self.activations, 2 * self.gradients)

    def max_batch(self, device_bytes: float) -> int:
        """The largest batch whose predicted peak fits ``device_bytes`` (0: not even one row;
        activations grow by ``per_row`` a row)."""
        floor = self.weights + self.optimizer + 2 * self.gradients
        base = self.activations - self.per_row * self.batch  # what no row adds
        room = device_bytes - self.weights - self.optimizer - base
        if floor > device_bytes or room < self.per_row or self.per_row <= 0:
            return 0
        return math.floor(room / self.per_row)

    def as_dict(self) -> dict:
        out = {k: v for k, v in self.__dict__.items()}
        out["peak"] = self.peak
        return out


def text_config_of(config):
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def shrunk(config, factor: int, layers: int):
    """``config`` with every width divided by ``factor`` and ``layers`` decoder layers (a
    multimodal config's text tower; its vision tower shrunk to one small layer)."""
    small = copy.deepcopy(config)
    text = text_config_of(small)
    for name in WIDTHS:
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            setattr(text, name, max(1, value // factor))
    heads = getattr(text, "num_attention_heads", None)
    hidden = getattr(text, "hidden_size", None)
    if heads and hidden and getattr(config, "head_dim", None) is None and hidden % heads:
        setattr(text, "hidden_size", max(heads, (hidden // heads) * heads))
    for name in LAYERS:
        if isinstance(getattr(text, name, None), int):
            setattr(text, name, layers)
    for name in ("layer_types", "mlp_only_layers"):
        value = getattr(text, name, None)
        if isinstance(value, list):
            setattr(text, name, value[:layers])
    if getattr(text, "first_k_dense_replace", None) is not None:  # keep the MoE layers
        text.first_k_dense_replace = 0
    vision = getattr(small, "vision_config", None)
    if vision is not None:
        for name in ("num_hidden_layers",):
            setattr(vision, name, 1)
    return small


def factors(config) -> tuple[int, int]:
    """Two shrink factors that keep every head at least 4 wide (2 for MLA's rope part) and
    the hidden size a multiple of the heads."""
    text = text_config_of(config)
    heads = getattr(text, "num_attention_heads", 1) or 1
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", 64)
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    rope = getattr(text, "qk_rope_head_dim", None)  # MLA's rotary part
    best = 1
    for f in (2, 4, 8, 16, 32):
        if head_dim // f >= 4 and hidden % (heads * f) == 0 and (not rope or rope // f >= 2):
            best = f
    if best < 2:
        raise HeadwayError(f"cannot shrink this config (hidden {hidden}, {heads} heads of "
                           f"{head_dim}) to measure its activations")
    return best // 2, best


def parameter_bytes(config, dtype: torch.dtype) -> tuple[int, int]:
    """``(bytes of the weights, number of parameters)`` of the full model, built on the meta
    device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    n = sum(p.numel() for p in model.parameters())
    return n * torch.finfo(dtype).bits // 8, n


def _rows(batch: int, length: int, vocab: int):
    """A batch of ``batch`` rows of ``length`` tokens whose second half is the response."""
    ids = torch.randint(3, vocab, (batch, length))
    labels = ids.clone()
    labels[:, : length // 2] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def _measure(config, dtype: torch.dtype, data: dict, workload: str, mode: str,
             checkpoint_layers: bool, mixed: str | None) -> int:
    """Peak bytes of tensors alive while the shrunk model runs ``workload`` on ``data``."""
    from transformers import AutoModelForCausalLM

    from .models.architectures import resolve
    from .scoring.head_scores import gate_scores
    from .scoring.memory import PeakMemory, checkpointed_layers

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    heads = resolve(model)
    autocast = (torch.autocast("cpu", dtype={"bf16": torch.bfloat16,
                                             "fp16": torch.float16}[mixed])
                if mixed else torch.autocast("cpu", enabled=False))
    if workload == "score":
        model.eval()
        with checkpointed_layers(model, checkpoint_layers), autocast, PeakMemory() as probe:
            gate_scores(model, data, heads.n_heads, "sample")
        return probe.peak
    model.train()
    if mode == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=8, target_modules=["q_proj", "k_proj",
                                                                      "v_proj", "o_proj"],
                                                 task_type="CAUSAL_LM"))
    elif mode == "heads":
        from .training.head_adapter import add_head_adapter

        add_head_adapter(model, [(0, 0)])
    if checkpoint_layers:
        model.gradient_checkpointing_enable()
    for p in model.parameters():  # gradients are counted apart: free each as it arrives
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(lambda p: setattr(p, "grad", None))
    with autocast, PeakMemory() as probe:
        model(**data).loss.backward()
    return probe.peak


def activations(config, batch: int, length: int, dtype: torch.dtype, workload: str = "score",
                mode: str = "full", checkpoint_layers: bool = False,
                mixed: str | None = None) -> int:
    """Predicted peak activation bytes of the full model (see the module docstring). Every
    measurement keeps the real vocabulary: the peak is reached when the layers' activations
    and the LM head's logits are alive together, and only then is a layer's share the one a
    2-layer run adds to a 1-layer run."""
    text = text_config_of(config)
    n_layers = next(getattr(text, n) for n in LAYERS if isinstance(getattr(text, n, None), int))
    f1, f2 = factors(config)
    settings = (batch, length, dtype, workload, mode, checkpoint_layers, mixed)
    per_layer, fixed = {}, {}
    for f in (f1, f2):
        one, two = (_cached(config, f, layers, settings) for layers in (1, 2))
        per_layer[f], fixed[f] = two - one, 2 * one - two
    out = 0.0
    for part, layers in ((per_layer, n_layers), (fixed, 1)):
        slope = (part[f1] - part[f2]) / (1 / f1 - 1 / f2)  # A
        constant = part[f1] - slope / f1  # C
        out += layers * max(slope + constant, 0.0)
    return int(out)


_MEASURED: dict[str, int] = {}


def _cached(config, factor: int, layers: int, settings: tuple) -> int:
    """:func:`_measure` of ``config`` shrunk by ``factor`` to ``layers`` layers, once per
    process."""
    import json
    import warnings

    small = shrunk(config, factor, layers)
    batch, length, dtype, workload, mode, checkpoint_layers, mixed = settings
    key = json.dumps([small.to_dict(), str(settings)], sort_keys=True, default=str)
    if key not in _MEASURED:
        data = _rows(batch, length, min(text_config_of(small).vocab_size, 1000))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _MEASURED[key] = _measure(small, dtype, data, workload, mode, checkpoint_layers,
                                      mixed)
    return _MEASURED[key]


def estimate(config, batch: int = 8, length: int = 1024, dtype: str = "bfloat16",
             workload: str = "score", mode: str = "full", checkpoint_layers: bool = False,
             mixed: str | None = None, probe_batch: int = 8, probe_length: int | None = None,
             probe_checkpoint_layers: bool = False) -> Estimate:
    """Predicted peak memory of scoring (``workload="score"``) or of ``headway train`` with
    tracking (``"train"``, ``mode`` full, lora or heads; AdamW; ``mixed`` "bf16" computes in
    bfloat16 over ``dtype`` weights) at ``batch`` rows of ``length`` tokens; its probe
    records score ``probe_batch`` rows at once (``probe_checkpoint_layers``: recomputing each
    layer), which at scale can hold more than the training step does."""
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16,
                   "float16": torch.float16}[dtype]
    weights, n_params = parameter_bytes(config, torch_dtype)
    many = activations(config, batch, length, torch_dtype, workload, mode, checkpoint_layers,
                       mixed)
    # a row's share: activations grow with the rows (the LM head's chunks do not, so this
    # slope is an upper bound and the largest batch it gives a safe one)
    per_row = many // batch
    result = Estimate(workload if workload == "score" else f"train {mode}", batch, length,
                      weights, many, per_row=per_row)
    if workload == "train":
        trainable = n_params if mode == "full" else _adapter_parameters(config, mode)
        result.gradients = trainable * torch.finfo(torch_dtype).bits // 8
        result.optimizer = 2 * 4 * trainable  # AdamW: two float32 moments
        probe = activations(config, probe_batch, probe_length or length, torch_dtype, "score",
                            checkpoint_layers=probe_checkpoint_layers,
                            mixed=mixed)  # measured once, shared
        # the probe record runs between steps, when the gradients are freed
        result.activations = max(many, probe - result.gradients)
    return result


def _adapter_parameters(config, mode: str) -> int:
    """Trainable parameters of a LoRA (r 8 on q/k/v/o) or a ten-head adapter."""
    text = text_config_of(config)
    hidden = getattr(text, "hidden_size", 0)
    heads = getattr(text, "num_attention_heads", 1)
    kv = getattr(text, "num_key_value_heads", heads) or heads
    head_dim = getattr(text, "head_dim", None) or hidden // heads
    n_layers = next(getattr(text, n) for n in LAYERS if isinstance(getattr(text, n, None), int))
    if mode == "lora":
        widths = [(hidden, heads * head_dim), (hidden, kv * head_dim), (hidden, kv * head_dim),
                  (heads * head_dim, hidden)]
        return n_layers * sum(8 * (a + b) for a, b in widths)
    return 10 * (4 * head_dim * hidden)  # q, k, v rows and o columns of ten heads


def load_config(name: str, trust_remote_code: bool = False):
    """The config of a model folder, a hub id whose config is cached (or reachable), or a
    built-in alias: no weights are read."""
    from pathlib import Path

    from transformers import AutoConfig

    from .hub import reachable_or_offline
    from .models.builtin import BUILTIN_MODELS, builtin_model_folder
    from .models.checks import check_hub_id

    path = name
    if name in BUILTIN_MODELS:
        path = builtin_model_folder(name)
    elif not Path(name).is_dir():
        check_hub_id(name)
        reachable_or_offline()
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise HeadwayError(f"cannot read the config of {name!r}: {str(err).splitlines()[0]}",
                           hint="a model folder with config.json, a built-in alias, or a hub "
                                "id whose config is in the cache (or reachable)") from err
