"""Head-selective training: the adapter against whole masked matrices, in optimizer state and
saved size.

    python benchmarks/bench_head_adapter.py          # smollm2-135m, 10 heads spread over layers

Both ways train the same entries (the selected heads' q/k/v rows and o columns; see
``headway.training.heads``). The masked way (``--head_training mask``) sets ``requires_grad``
on whole q/k/v/o matrices, so AdamW keeps two float32 moments for every entry of them; the
adapter (``--head_training adapter``, the default) holds only the selected entries as
trainable deltas. Prints, for each way: trainable entries the optimizer sees, AdamW state
bytes after one real optimizer step (summed over the optimizer's state tensors), and the size
of what ``final/`` holds (the merged model, or with ``--save_merged false`` the adapter alone).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch


def optimizer_state_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(entries the optimizer trains, bytes of AdamW state after one step)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randint(0, 100, (1, 16))
    model(input_ids=x, labels=x).loss.backward()
    optimizer.step()
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values()
                for t in s.values() if torch.is_tensor(t) and t.dim() > 0)
    return sum(p.numel() for p in params), state


def folder_bytes(folder: Path, pattern: str) -> int:
    return sum(f.stat().st_size for f in folder.glob(pattern))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--heads", default="0.3,0.6,1.3,6.0,12.0,24.6,24.7,24.8,3.1,18.4",
                   help="LAYER.HEAD list (default: 10 heads over 7 layers)")
    args = p.parse_args()

    from headway.models.loading import load_model
    from headway.progress import quiet_hf_progress
    from headway.training.head_adapter import add_head_adapter, merge, save_adapter
    from headway.training.heads import HeadSelection, parse_heads

    lm = load_model(args.model)
    heads = parse_heads(args.heads, lm.n_layers, lm.n_heads)
    results = {}
    with tempfile.TemporaryDirectory() as tmp, quiet_hf_progress():
        masked = load_model(args.model).model.train()
        selection = HeadSelection(masked, heads).apply()
        entries, state = optimizer_state_bytes(masked)
        masked.save_pretrained(Path(tmp) / "masked")
        results["mask"] = {"selected_entries": selection.n_trainable,
                           "optimizer_entries": entries, "optimizer_state_bytes": state,
                           "saved_bytes": folder_bytes(Path(tmp) / "masked", "*.safetensors")}

        adapted = load_model(args.model).model.train()
        n = add_head_adapter(adapted, heads)
        entries, state = optimizer_state_bytes(adapted)
        save_adapter(adapted, Path(tmp) / "adapter", base=args.model)
        merge(adapted).save_pretrained(Path(tmp) / "merged")
        results["adapter"] = {"selected_entries": n, "optimizer_entries": entries,
                              "optimizer_state_bytes": state,
                              "saved_bytes": folder_bytes(Path(tmp) / "adapter", "*.safetensors"),
                              "saved_merged_bytes": folder_bytes(Path(tmp) / "merged",
                                                                 "*.safetensors")}
    mask, adapter = results["mask"], results["adapter"]
    mb = 2 ** 20
    print(f"head-selective training, {args.model}, {len(heads)} heads: {args.heads}")
    print(f"{'':<10}{'trained entries':>17}{'optimizer entries':>19}{'AdamW state':>14}"
          f"{'final/ size':>14}")
    for name, r in results.items():
        print(f"{name:<10}{r['selected_entries']:>17,}{r['optimizer_entries']:>19,}"
              f"{r['optimizer_state_bytes'] / mb:>11.2f} MB{r['saved_bytes'] / mb:>11.2f} MB")
    print(f"optimizer state: adapter / mask = "
          f"{adapter['optimizer_state_bytes'] / mask['optimizer_state_bytes']:.3f}; saved: "
          f"adapter alone / whole model = {adapter['saved_bytes'] / mask['saved_bytes']:.4f} "
          f"(merged: {adapter['saved_merged_bytes'] / mb:.1f} MB, as the masked model)")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
