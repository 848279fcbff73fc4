"""Rows into batches, and the loss on response tokens: the one batching path that scoring,
ablation and evaluation share.

``make_batches`` groups row positions (by length, or in file order); ``collate`` right-pads
encoded rows into ``[B, T]`` tensors; ``response_token_losses`` runs the model and returns each
row's summed response-token loss without building a ``[B, T, vocab]`` tensor.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .architectures import unwrap_model
from .sharding import is_sharded


def make_batches(lengths: Sequence[int], batch_size: int, sort_by_length: bool) -> list[list[int]]:
    """Split positions ``0..N-1`` into batches of ``batch_size``.

    ``sort_by_length``: longest first, so each batch holds rows of similar length and padding is
    small (and an out-of-memory error shows up on the first batch). Otherwise file order.
    """
    order = list(range(len(lengths)))
    if sort_by_length:
        order.sort(key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def input_device(model: nn.Module) -> torch.device:
    """Where a batch goes: the device of the input embeddings (the first layer of a model
    spread over devices; the CPU when they are offloaded)."""
    weight = unwrap_model(model).get_input_embeddings().weight
    return torch.device("cpu") if weight.device.type == "meta" else weight.device


def collate(encoded: Sequence, pad_id: int, pad_to: int | None = None,
            device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Right-pad encoded rows into ``input_ids``, ``attention_mask``, ``labels`` of ``[B, T]``.

    ``pad_to`` pads every row to that many tokens (the released script pads to 1024); padding
    never changes a score, only the cost.
    """
    width = max(max(len(e.input_ids) for e in encoded), pad_to or 0)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    labels = torch.full((len(encoded), width), -100, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for b, e in enumerate(encoded):
        n = len(e.input_ids)
        ids[b, :n] = torch.tensor(e.input_ids)
        labels[b, :n] = torch.tensor(e.labels)
        mask[b, :n] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device),
            "labels": labels.to(device)}


def response_token_losses(model: nn.Module, batch: dict[str, torch.Tensor],
                          output_attentions: bool = False):
    """Per-sample summed response-token loss and token counts.

    Runs the decoder, then the LM head only on positions that predict a response token (so no
    ``[B, T, vocab]`` tensor is built). Returns ``(loss_sum [B], n_tokens [B], attentions)``,
    loss in nats, float32; ``attentions`` is the decoder's tuple of ``[B, H, T, T]`` when
    ``output_attentions`` else None. With the model spread over devices (``device_map``),
    the loss and counts are on the LM head's device.
    """
    if is_sharded(model):  # through the root module the sharding was applied to
        out, logits = _through_root(model, batch, output_attentions)
    else:
        model = unwrap_model(model)
        decoder = getattr(model, model.base_model_prefix)
        out = decoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      output_attentions=output_attentions, use_cache=False)
        last = out.last_hidden_state  # on the last layer's device
        keep = batch["labels"][:, 1:].to(last.device) != -100
        hidden = last[:, :-1][keep]  # [M, D]
        logits = model.get_output_embeddings()(hidden).float()  # [M, V], on the LM head's device
        softcap = getattr(model.config, "final_logit_softcapping", None)
        if softcap:
            logits = torch.tanh(logits / softcap) * softcap
    targets = batch["labels"][:, 1:].to(logits.device)
    keep = targets != -100
    token_loss = F.cross_entropy(logits, targets[keep], reduction="none")  # [M]
    rows = keep.nonzero()[:, 0]
    B = targets.shape[0]
    loss_sum = torch.zeros(B, device=logits.device).index_add(0, rows, token_loss)
    n_tokens = keep.sum(1)  # [B], on the LM head's device
    return loss_sum, n_tokens, (out.attentions if output_attentions else None)


def _through_root(model: nn.Module, batch: dict[str, torch.Tensor], output_attentions: bool):
    """The whole model's forward (a sharded model's root gathers the parameters it owns, such
    as the final norm and the LM head, in its own forward), with the LM head given only the
    positions that predict a response token. Returns ``(output, logits [M, V] float32)``."""
    keep = batch["labels"][:, 1:] != -100

    def response_positions(module, args):
        return (args[0][:, :-1][keep.to(args[0].device)], *args[1:])

    head = unwrap_model(model).get_output_embeddings()
    handle = head.register_forward_pre_hook(response_positions)
    try:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                    output_attentions=output_attentions, use_cache=False)
    finally:
        handle.remove()
    return out, out.logits.float()


Tick = Callable[[int], object]  # called with 1 after every forward batch (a progress bar)


def by_length(encoded: Sequence, batch_size: int) -> list[list[int]]:
    """Batches of row positions of ``encoded``, longest rows first."""
    return make_batches([len(e.input_ids) for e in encoded], batch_size, True)


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
