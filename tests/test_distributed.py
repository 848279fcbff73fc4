"""Two CPU processes (torchrun, gloo): scoring equals one process; DDP training runs."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import save_tiny_model

from headway.patterns import ActivationPattern
from headway.training.records import read_metrics


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], processes: int, logs: Path) -> None:
    """``headway ARGS`` in ``processes`` processes (torchrun, gloo); on failure the message holds
    the launcher's output and every rank's stdout and stderr (torchrun keeps them in ``logs``)."""
    # One thread per process in both runs: a different thread count changes float summation
    # order (about 1e-4 relative on per-sample scores of a 30-layer model), not the method.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, "-m", "headway.cli", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--master_port", str(free_port()), "--log-dir", str(logs), "--redirects", "3",
               "-m", "headway.cli", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and its workers
        out, err = proc.communicate()
        pytest.fail(f"timed out after 300 s\n{_outputs(out, err, logs)}")
    assert proc.returncode == 0, _outputs(out, err, logs)


def _outputs(out: str, err: str, logs: Path) -> str:
    """The launcher's stdout and stderr, then each rank's (``logs/*/attempt_*/RANK/*.log``)."""
    parts = [f"--- launcher stdout\n{out[-3000:]}", f"--- launcher stderr\n{err[-3000:]}"]
    for log in sorted(logs.glob("*/attempt_*/*/std*.log")):
        parts.append(f"--- rank {log.parent.name} {log.name} ({log.parent.parent.name})\n"
                     f"{log.read_text()[-3000:]}")
    return "\n".join(parts)


def test_two_process_scoring_equals_one_process(model_dir, tmp_path):
    common = ["score", "--model", str(model_dir), "--task", "arithmetic", "--rows", "23",
              "--batch-size", "4", "--per-sample", "--no-progress"]
    run(common + ["-o", str(tmp_path / "one")], 1, tmp_path / "logs")
    run(common + ["-o", str(tmp_path / "two")], 2, tmp_path / "logs")
    one, two = ActivationPattern.load(tmp_path / "one"), ActivationPattern.load(tmp_path / "two")
    assert two.meta["world_size"] == 2 and one.meta["world_size"] == 1
    rel = float((one.per_sample - two.per_sample).abs().max() / one.per_sample.abs().max())
    assert rel <= 1e-6
    assert float((one.scores - two.scores).abs().max() / one.scores.abs().max()) <= 1e-6


def test_two_process_ddp_training_records(model_dir, tmp_path):
    out = tmp_path / "ddp"
    run(["train", "--model", str(model_dir), "--task", "arithmetic", "--rows", "16",
         "--probe_rows", "4", "--max_steps", "4", "--track_every", "2",
         "--per_device_train_batch_size", "2", "--output_dir", str(out), "--progress", "false"],
        2, tmp_path / "logs")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["global_step"] == 4
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "probe"] \
        == [0, 2, 4]
    assert (out / "final" / "config.json").is_file()
