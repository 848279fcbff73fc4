"""``headway analyze | report | compare``."""

from __future__ import annotations

from pathlib import Path

from ..settings import AnalyzeArgs, CompareArgs, ReportArgs, SettingsError
from .common import load_task


def analyze(args: AnalyzeArgs) -> int:
    """Patterns and runs -> ``OUTPUT_DIR/analysis.json`` and figures."""
    from ..analysis.findings import run_analysis as analyze_findings
    from ..report.static import analysis_figures
    from ..storage import check_writable

    if args.random_draws < 1:
        raise SettingsError(f"--random-draws is {args.random_draws}: at least 1 random head set")
    check_writable(args.output_dir)
    analyze_findings(Path(args.output_dir), patterns=args.patterns, runs=args.runs,
                              complex_run=args.complex, model=args.model, k=args.k,
                              n_random=args.random_draws, n_boot=args.bootstrap,
                              n_perm=args.permutations, seed=args.seed, progress=args.progress,
                              controls=args.control)
    figures = analysis_figures(args.output_dir, redraw=True)
    print(f"wrote {args.output_dir}/analysis.json and {len(figures)} figures; "
          f"`headway report {args.output_dir}` makes the HTML report")
    return 0


def report(args: ReportArgs) -> int:
    """One self-contained HTML file from an analysis or comparison folder."""
    from ..report.html import write_report
    from ..storage import check_writable

    check_writable(Path(args.output).parent if args.output else args.folder)
    print(f"wrote {write_report(args.folder, args.output, static=args.static)}")
    return 0


def compare(args: CompareArgs) -> int:
    """Both models' patterns on the same rows, their ΔAP and the heads gained and lost."""
    from ..analysis.compare import compare as compare_models
    from ..report.static import compare_figures

    task = load_task(args)
    out = Path(args.output or f"runs/compare-{task.name}")
    summary = compare_models(args.model_a, args.model_b, data=task, output_dir=out,
                             k=args.top_k, names=tuple(args.names), dtype=args.dtype,
                             device=args.device, progress=args.progress,
                             template=args.template, max_length=args.max_length,
                             overlong=args.overlong).summary()
    compare_figures(out, redraw=True)
    a, b = summary["names"]
    print(f"{task.name}: {a} -> {b}: Gini {summary['a']['gini']:.3f} -> {summary['b']['gini']:.3f}"
          f", CV {summary['a']['cv']:.3f} -> {summary['b']['cv']:.3f}; Pearson "
          f"{summary['similarity']['pearson']:.3f}; top-{summary['k']}: gained "
          f"{' '.join(summary['gained']) or '-'}, lost {' '.join(summary['lost']) or '-'}")
    print(f"wrote {out}; `headway report {out}` makes the HTML report")
    return 0
