"""Rows into batches, and the loss on response tokens: the one batching path that scoring,
ablation and evaluation share.

``make_batches`` groups row positions (by length, or in file order); ``collate`` right-pads
encoded rows into ``[B, T]`` tensors; ``response_token_losses`` runs the model and returns each
row's summed response-token loss without building a ``[B, T, vocab]`` tensor.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def make_batches(lengths: Sequence[int], batch_size: int, sort_by_length: bool) -> list[list[int]]:
    """Split positions ``0..N-1`` into batches of ``batch_size``.

    ``sort_by_length``: longest first, so each batch holds rows of similar length and padding is
    small (and an out-of-memory error shows up on the first batch). Otherwise file order.
    """
    order = list(range(len(lengths)))
    if sort_by_length:
        order.sort(key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


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


def by_length(encoded: Sequence, batch_size: int) -> list[list[int]]:
    """Batches of row positions of ``encoded``, longest rows first."""
    return make_batches([len(e.input_ids) for e in encoded], batch_size, True)


