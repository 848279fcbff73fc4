"""``headway demo``."""

from __future__ import annotations

from pathlib import Path

from ..locks import owning
from ..settings import DemoArgs


def demo(args: DemoArgs) -> int:
    """The whole story on the built-in model (:func:`headway.demo.run_demo`)."""
    from ..demo import FULL, QUICK, run_demo
    from ..storage import check_writable

    out = args.output_dir or ("headway-demo-full" if args.full else "headway-demo")
    check_writable(out)
    with owning(out, f"demo folder {out}"):
        run_demo(Path(out), model=args.model, n=args.rows, progress=args.progress,
                 sft_steps=args.sft_steps, seed=args.seed, size=FULL if args.full else QUICK)
    return 0
