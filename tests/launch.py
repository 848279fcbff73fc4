"""Start ``headway`` in several CPU processes (torchrun, gloo) from a test."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def run(args: list[str], processes: int, logs: Path, env: dict | None = None) -> None:
    """``headway ARGS`` in ``processes`` processes (torchrun, gloo); on failure the message holds
    the launcher's output and every rank's stdout and stderr (torchrun keeps them in ``logs``).
    ``env``: extra environment variables (e.g. an Accelerate FSDP configuration)."""
    # One thread per process in both runs: a different thread count changes float summation
    # order (about 1e-4 relative on per-sample scores of a 30-layer model), not the method.
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    # with HEADWAY_FAULT set, each process runs tests/fault_runner.py (faults and probes)
    entry = ([str(Path(__file__).with_name("fault_runner.py"))] if "HEADWAY_FAULT" in env
             else ["-m", "headway.cli"])
    if processes == 1:
        cmd = [sys.executable, *entry, *args]
    else:
        # --standalone: torchrun's store binds a free port itself. A port found free here and
        # passed on could be taken in between (by any connection's ephemeral port), and the
        # launch would fail with "address already in use" once in a while.
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
               "--standalone", "--log-dir", str(logs), "--redirects", "3",
               *entry, *args]
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
