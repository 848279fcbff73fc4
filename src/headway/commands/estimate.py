"""``headway estimate``."""

from __future__ import annotations

from ..settings import EstimateArgs

GB = 1e9


def estimate(args: EstimateArgs) -> int:
    """Predicted peak memory of scoring and tracked training, and the largest batch that fits
    each device size, from the model's config alone."""
    import json

    from tqdm.auto import tqdm

    from ..estimate import GIB, load_config
    from ..estimate import estimate as predict

    config = load_config(args.model, args.trust_remote_code)
    plan = {"score": ("score", "full", False), "score-layers": ("score", "full", True),
            **{mode: ("train", mode, args.gradient_checkpointing)
               for mode in ("full", "lora", "heads")}}
    workloads = [plan[name] for name in plan if name in args.workloads]
    rows = []
    for workload, mode, layers in tqdm(workloads, desc="measuring the shrunk model",
                                       unit="workload", disable=not args.progress):
        e = predict(config, args.batch_size, args.length, dtype=args.dtype, workload=workload,
                    mode=mode, checkpoint_layers=layers, mixed=args.mixed_precision,
                    probe_batch=args.probe_batch_size,
                    probe_checkpoint_layers=args.probe_checkpoint_layers)
        label = ("scoring" + (", layer checkpointing" if layers else "") if workload == "score"
                 else f"train --mode {mode}" + (", gradient checkpointing" if layers else ""))
        rows.append({**e.as_dict(), "workload": label,
                     "max_batch": {f"{gb:g} GB": e.max_batch(gb * GB)
                                   for gb in args.device_memory}})
    if args.json:
        print(json.dumps({"model": args.model, "dtype": args.dtype,
                          "mixed_precision": args.mixed_precision, "batch": args.batch_size,
                          "length": args.length,
                          "gradient_checkpointing": args.gradient_checkpointing,
                          "probe_batch_size": args.probe_batch_size,
                          "probe_checkpoint_layers": args.probe_checkpoint_layers,
                          "rows": rows}, indent=2))
        return 0
    sizes = [f"{gb:g} GB" for gb in args.device_memory]
    print(f"{args.model}, {args.dtype}"
          + (f", {args.mixed_precision} compute" if args.mixed_precision else "")
          + f": predicted peak memory at batch {args.batch_size} x {args.length} tokens, and "
            f"the largest batch that fits each device (0: not one row)")
    print("| workload | peak GiB | weights | activations | gradients + optimizer | "
          + " | ".join(f"max batch, {s}" for s in sizes) + " |")
    print("|---|---|---|---|---|" + "---|" * len(sizes))
    for r in rows:
        print(f"| {r['workload']} | {r['peak'] / GIB:,.1f} | {r['weights'] / GIB:,.1f} | "
              f"{r['activations'] / GIB:,.1f} | {(r['gradients'] + r['optimizer']) / GIB:,.1f} | "
              + " | ".join(str(r["max_batch"][s]) for s in sizes) + " |")
    print("(peak: what torch.cuda.max_memory_allocated would report; allow ~10 % for the "
          "allocator's cache and the CUDA context)")
    return 0
