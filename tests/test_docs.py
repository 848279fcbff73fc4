"""The Python examples of docs/python-api.md run as written (on a tiny model)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).parents[1] / "docs" / "python-api.md"


def test_python_api_examples_run_as_written(llama_dir, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 5
    script = tmp_path / "examples.py"
    script.write_text("\n".join(blocks))
    env = {**os.environ, "MODEL": str(llama_dir), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert (tmp_path / "runs" / "sums.png").is_file()
    assert (tmp_path / "runs" / "compare" / "compare.json").is_file()
    assert (tmp_path / "runs" / "sft-trajectory" / "patterns" / "step_000004").is_dir()
    # the docs' callback, trajectory and compare give the same step-0 pattern of the rows
    import torch

    from headway.patterns import ActivationPattern

    callback = ActivationPattern.load(tmp_path / "runs/sft/headway/patterns/step_000000/sums")
    trajectory = ActivationPattern.load(tmp_path / "runs/sft-trajectory/patterns/step_000000/sums")
    compared = ActivationPattern.load(tmp_path / "runs" / "compare" / "base")
    for other in (trajectory, compared):
        assert other.meta["template"] == callback.meta["template"] == "raw"
        diff = float((other.scores - callback.scores).abs().max() / callback.scores.max())
        assert diff <= 1e-6, diff
    assert torch.equal(callback.index, compared.index)
    assert (tmp_path / "runs" / "tokens.png").is_file()
    assert (tmp_path / "runs" / "analysis" / "analysis.json").is_file()
