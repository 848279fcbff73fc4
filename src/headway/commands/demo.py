"""``headway demo``."""

from __future__ import annotations

from pathlib import Path

from ..locks import owning
from ..settings import DemoArgs


def demo(args: DemoArgs) -> int:
    """The whole story on the built-in model (:func:`headway.demo.run_demo`)."""
    from ..demo import run_demo
    from ..storage import check_writable

    check_writable(args.output_dir)
    with owning(args.output_dir, f"demo folder {args.output_dir}"):
        run_demo(Path(args.output_dir), model=args.model, n=args.rows, progress=args.progress,
                 sft_steps=args.sft_steps, seed=args.seed)
    return 0
