"""A small analysis folder (tiny model): per-token patterns of two tasks, three tracked
runs, the composition of one from the other two with a control, ablation; and a comparison
folder. What the browser tests open."""

from __future__ import annotations

from pathlib import Path

from headway.cli import main


def build(root: Path, model: Path) -> dict[str, Path]:
    """``{"analysis": folder, "compare": folder}`` under ``root``, built once."""
    analysis, compare = root / "analysis", root / "compare"
    if (analysis / "analysis.json").is_file() and (compare / "compare.json").is_file():
        return {"analysis": analysis, "compare": compare}
    quiet = ["--disable_tqdm", "true", "--save_strategy", "no"]
    runs = []
    for task in ("arithmetic", "sorting", "chain_sum", "leg_counting"):
        run = root / "runs" / task
        assert main(["train", "--model", str(model), "--task", task, "--rows", "16",
                     "--probe_rows", "6", "--max_steps", "6", "--track_every", "2",
                     "--track_schedule", "every", "--per_device_train_batch_size", "4",
                     "--learning_rate", "1e-2", "--max_length", "1024", "--output_dir",
                     str(run), "--save_final", str(task == "arithmetic"), *quiet]) == 0
        runs.append(run)
    patterns = []
    for task, rows in (("arithmetic", "6"), ("sorting", "4")):  # other rows: the token view
        out = root / "patterns" / task
        assert main(["score", "--model", str(model), "--task", task, "--rows", rows,
                     "--per-sample", "--per-token", "-o", str(out), "--no-progress"]) == 0
        patterns.append(out)
    assert main(["analyze", "--patterns", *map(str, patterns), "--runs", *map(str, runs),
                 "--complex", "chain_sum", "--control", "leg_counting", "--model",
                 str(model), "--k", "3", "--random-draws", "5", "--bootstrap", "20",
                 "--permutations", "20", "-o", str(analysis), "--no-progress"]) == 0
    assert main(["compare", str(model), str(runs[0] / "final"), "--task", "arithmetic",
                 "-n", "6", "--names", "base", "tuned", "-o", str(compare),
                 "--no-progress"]) == 0
    return {"analysis": analysis, "compare": compare}
