"""Run ``headway.cli.main(argv)`` with one fault injected: the process kills itself (SIGKILL, no
clean-up of any kind) at a chosen point. Used by test_faults.py as a subprocess.

    HEADWAY_FAULT=<point>:<n> python tests/fault_runner.py score ...

Points:
    checkpoint-write:S   while checkpoint-S is being written: after its model files, before
                         its optimizer, RNG and trainer state
    after-checkpoint:S   right after checkpoint-S is complete
    train-step:S         at the end of optimizer step S (before any checkpoint of that step)
    probe-record:S       while the probe record of step S is written: after its patterns,
                         before its parameter change and its metrics line
    scoring-batch:N      when scoring batch N+1 starts (N batches done and kept)

Probes:
    rss-start:0          write the process's anonymous resident memory (RssAnon, kB) before and
                         after the tracker takes W_0 to HEADWAY_RSS_FILE.RANK (JSON)

Pauses (the process waits, so that a test can act while it is busy; it says
``headway-test: paused`` on stderr when the pause starts, and goes on once the file
HEADWAY_RESUME_FILE exists, or after HEADWAY_PAUSE_S seconds, default 120):
    pause-step:S         at the end of optimizer step S
    pause-batch:N        when scoring batch N+1 starts (N batches done and kept)
"""

from __future__ import annotations

import os
import signal
import sys


def die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def pause() -> None:
    import time
    from pathlib import Path

    print("headway-test: paused", file=sys.stderr, flush=True)
    resume = Path(os.environ.get("HEADWAY_RESUME_FILE", "/nonexistent"))
    until = time.monotonic() + float(os.environ.get("HEADWAY_PAUSE_S", "120"))
    while time.monotonic() < until and not resume.exists():
        time.sleep(0.05)


def rss_anon_kb() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    raise RuntimeError("no RssAnon in /proc/self/status")


def install(point: str, n: int) -> None:
    if point == "rss-start":
        import json

        from headway.training.callback import PatternCallback

        real = PatternCallback._start_weights

        def start_weights(self, model, now_is_start):
            before = rss_anon_kb()
            real(self, model, now_is_start)
            after = rss_anon_kb()
            rank = os.environ.get("RANK", "0")
            with open(f"{os.environ['HEADWAY_RSS_FILE']}.{rank}", "w") as f:
                json.dump({"before_kb": before, "after_kb": after,
                           "held_bytes": self.initial.nbytes if self.initial else None,
                           "source": self.initial.source if self.initial else None}, f)

        PatternCallback._start_weights = start_weights
    elif point == "pause-step":
        from headway.training import trainer as training

        real = training.StopOnRequest.on_step_end

        def on_step_end(self, args, state, control, **kw):  # pause, then see a request
            if state.global_step == n:
                pause()
            return real(self, args, state, control, **kw)

        training.StopOnRequest.on_step_end = on_step_end
    elif point == "pause-batch":
        from headway.scoring import score as scoring

        real_init = scoring.ScoreCheckpoint.__init__
        real_gate = scoring.gate_scores
        calls = [0]

        def init(self, *args, **kw):
            real_init(self, *args, **kw)
            self.every_s = 0.0  # keep every finished batch

        def gate(*args, **kw):
            if calls[0] == n:
                pause()
            calls[0] += 1
            return real_gate(*args, **kw)

        scoring.ScoreCheckpoint.__init__ = init
        scoring.gate_scores = gate
    elif point == "checkpoint-write":
        from transformers import Trainer

        real = Trainer._save_optimizer_and_scheduler

        def save(self, output_dir):
            if self.state.global_step == n:
                die()
            return real(self, output_dir)

        Trainer._save_optimizer_and_scheduler = save
    elif point == "after-checkpoint":
        from headway.training.run_dir import RunMarker

        real_save = RunMarker.on_save

        def on_save(self, args, state, control, **kw):
            real_save(self, args, state, control, **kw)
            if state.global_step == n:
                die()

        RunMarker.on_save = on_save
    elif point == "train-step":
        from headway.training.run_dir import RunMarker

        real_step = RunMarker.on_step_end

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == n:
                die()
            return real_step(self, args, state, control, **kw)

        RunMarker.on_step_end = on_step_end
    elif point == "probe-record":
        from headway.training import callback as tracking

        real_write = tracking.atomic_save_tensors

        def write(path, *args, **kw):
            if f"step_{n:06d}" in str(path) and "param_change" in str(path):
                die()
            return real_write(path, *args, **kw)

        tracking.atomic_save_tensors = write
    elif point == "scoring-batch":
        from headway.scoring import score as scoring

        real_init = scoring.ScoreCheckpoint.__init__
        real_gate = scoring.gate_scores
        calls = [0]

        def init(self, *args, **kw):
            real_init(self, *args, **kw)
            self.every_s = 0.0  # keep every finished batch

        def gate(*args, **kw):
            if calls[0] == n:
                die()
            calls[0] += 1
            return real_gate(*args, **kw)

        scoring.ScoreCheckpoint.__init__ = init
        scoring.gate_scores = gate
    else:
        raise SystemExit(f"unknown fault point {point!r}")


if __name__ == "__main__":
    fault = os.environ.get("HEADWAY_FAULT")
    if fault:
        point, _, n = fault.partition(":")
        install(point, int(n))
    from headway.cli import main

    sys.exit(main(sys.argv[1:]))
