"""The loss on response tokens, through the model's own forward: each row's summed
response-token loss, without a ``[B, T, vocab]`` tensor and without one ``[M, vocab]`` float32
block. Scoring, ablation and evaluation share it.

The model runs as its users run it: ``model(input_ids, attention_mask)``, so whatever the
family or a wrapper does in ``forward`` applies (Granite's ``logits_scaling``, Cohere's
``logit_scale``, Gemma's softcapping, MoE routing, the autocast Accelerate wraps around
``forward`` under mixed precision, a sharded root's parameter gathering). A pre-hook hands the
LM head only the positions that predict a response token. When there are more of them than
one chunk (:func:`chunk_tokens`, about 256 MiB of float32 logits), the first chunk goes
through that pass and each further chunk through the model's forward again with the decoder
replaced by its recorded output (so only the LM head and what follows it run), under
activation checkpointing: the backward pass recomputes one chunk at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..data.batching import by_length, collate
from ..models.architectures import out_features, unwrap_model
from ..models.placement import input_device
from ..models.sharding import is_sharded, max_over_processes

CHUNK_BYTES = 256 << 20  # float32 logits of one chunk of response positions


def chunk_tokens(vocab: int, budget: int = CHUNK_BYTES) -> int:
    """Response positions per chunk: ``budget`` bytes of float32 logits over ``vocab``."""
    return max(1, budget // (4 * vocab))


def _base(model: nn.Module) -> nn.Module:
    """The module a CausalLM's ``forward`` calls before its LM head (``model.model``,
    ``transformer``, a multimodal model's whole ``model``)."""
    return getattr(model, model.base_model_prefix)


@contextlib.contextmanager
def _decoder_returns(base: nn.Module, output) -> Iterator[None]:
    """Within the block, ``base(...)`` returns ``output`` without computing anything."""
    had = "forward" in base.__dict__
    previous = base.__dict__.get("forward")
    base.forward = lambda *args, **kwargs: output
    try:
        yield
    finally:
        if had:
            base.forward = previous
        else:
            del base.forward


def response_token_losses(model: nn.Module, batch: dict[str, torch.Tensor],
                          output_attentions: bool = False, chunk: int | None = None):
    """Per-sample summed response-token loss and token counts, through ``model``'s forward.

    Returns ``(loss_sum [B], n_tokens [B], attentions)``, loss in nats, float32;
    ``attentions`` is the model's tuple of ``[B, H, T, T]`` when ``output_attentions`` else
    None. ``chunk``: response positions per LM-head pass (default :func:`chunk_tokens` of the
    vocabulary). With the model spread over devices (``device_map``), the loss and counts are
    on the LM head's device.
    """
    sharded = is_sharded(model)
    root = model if sharded else unwrap_model(model)  # a sharded root gathers its own weights
    inner = unwrap_model(model)
    head = inner.get_output_embeddings()
    targets = batch["labels"][:, 1:]
    where = (targets != -100).nonzero()  # [M, 2]: (row, position predicting a response token)
    size = chunk or chunk_tokens(out_features(head))
    n_chunks = max(1, -(-where.shape[0] // size))
    if sharded:  # every process runs as many passes: each is a collective
        n_chunks = int(max_over_processes(torch.tensor([n_chunks]), batch["input_ids"].device))
    first = where[:size]
    recorded: dict = {}

    def first_chunk(module, args):
        hidden = args[0]
        return (hidden[first[:, 0].to(hidden.device), first[:, 1].to(hidden.device)][None],
                *args[1:])

    def record(module, args, output):
        recorded["output"] = output

    handles = [head.register_forward_pre_hook(first_chunk)]
    if n_chunks > 1:
        handles.append(_base(inner).register_forward_hook(record))
    try:
        out = root(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   output_attentions=output_attentions, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    logits = out.logits[0]  # [m, V], on the LM head's device
    device = logits.device
    token_loss = [_cross_entropy(logits, targets, first)]
    if n_chunks > 1:
        hidden = recorded["output"][0]  # [B, T, D]: the decoder's output
        for i in range(1, n_chunks):
            rows = where[i * size:(i + 1) * size]
            picked = hidden[rows[:, 0].to(hidden.device), rows[:, 1].to(hidden.device)]
            loss = checkpoint(_later_chunk, root, inner, recorded["output"], picked, targets,
                              rows, use_reentrant=False) if torch.is_grad_enabled() else \
                _later_chunk(root, inner, recorded["output"], picked, targets, rows)
            token_loss.append(loss.to(device))
    B = targets.shape[0]
    loss_sum = torch.zeros(B, device=device).index_add(0, where[:, 0].to(device),
                                                       torch.cat(token_loss))
    n_tokens = (targets != -100).sum(1).to(device)
    return loss_sum, n_tokens, (out.attentions if output_attentions else None)


def _later_chunk(root: nn.Module, inner: nn.Module, output, picked: torch.Tensor,
                 targets: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Token losses of one further chunk: the model's forward with its decoder replaced by
    the recorded output restricted to ``picked`` ``[m, D]`` positions."""
    stub = type(output)(**{**output, "last_hidden_state": picked[None]})
    ids = torch.zeros(1, picked.shape[0], dtype=torch.long, device=picked.device)
    with _decoder_returns(_base(inner), stub):
        logits = root(input_ids=ids, use_cache=False).logits[0]
    return _cross_entropy(logits, targets, rows)


def _cross_entropy(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor
                   ) -> torch.Tensor:
    """Float32 cross-entropy of ``logits`` ``[m, V]`` against the targets at ``rows``."""
    wanted = targets[rows[:, 0], rows[:, 1]].to(logits.device)
    return F.cross_entropy(logits.float(), wanted, reduction="none")


Tick = Callable[[int], object]  # called with 1 after every forward batch (a progress bar)


@torch.no_grad()
def mean_loss(model: nn.Module, encoded: Sequence, pad_id: int, batch_size: int = 8,
              tick: Tick | None = None) -> float:
    """Mean over samples of each sample's mean response-token loss (nats)."""
    device = input_device(model)
    losses = []
    for rows in by_length(encoded, batch_size):
        batch = collate([encoded[i] for i in rows], pad_id, device=device)
        loss_sum, n_tokens, _ = response_token_losses(model, batch)
        losses.append((loss_sum / n_tokens.clamp(min=1)).cpu())
        if tick:
            tick(1)
    return float(torch.cat(losses).mean())
