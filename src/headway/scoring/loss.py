"""The loss on response tokens: each row's summed response-token loss, without building a
``[B, T, vocab]`` tensor. Scoring, ablation and evaluation share it."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data.batching import by_length, collate
from ..models.architectures import unwrap_model
from ..models.placement import input_device
from ..models.sharding import is_sharded


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
