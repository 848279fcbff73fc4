"""One owner per run, even at the same moment; a run's rows are part of its identity; records
checked when read; full disks; values checked before a folder is touched; SIGTERM.
docs/reliability.md lists what each test promises. Processes run through
``tests/fault_runner.py``, which can pause a command (so a test can act while it is busy) or
kill it at a chosen point."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_faults import RUNNER, assert_same_records, headway, killed, ok, train_args

from headway.cli import main
from headway.patterns import ActivationPattern
from headway.training.records import read_metrics


def start(args: list[str], fault: str | None = None, resume: Path | None = None,
          pause_s: float = 120) -> subprocess.Popen:
    """``headway ARGS`` started in a fresh process (a new session, so that a signal reaches
    it alone), with ``fault`` injected; a pause ends when the file ``resume`` exists."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "HEADWAY_PAUSE_S": str(pause_s),
           "HEADWAY_RESUME_FILE": str(resume or "/nonexistent")}
    env.pop("HEADWAY_FAULT", None)
    if fault:
        env["HEADWAY_FAULT"] = fault
    return subprocess.Popen([sys.executable, str(RUNNER), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_paused(proc: subprocess.Popen, timeout: float = 120) -> None:
    """Block until ``proc`` says it paused (fault_runner's pause points)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if "headway-test: paused" in line:
            return
        if not line and proc.poll() is not None:
            break
    proc.kill()
    out, err = proc.communicate()
    pytest.fail(f"the command never paused (exit {proc.returncode}):\n{err[-3000:]}")


def sigterm_then_kill(proc: subprocess.Popen, grace_s: float = 60,
                      sent: bool = False) -> tuple[int, str]:
    """What a scheduler does: SIGTERM (unless ``sent`` already), then SIGKILL if the process
    is still alive after the grace period. Returns ``(exit status, stderr)``."""
    if not sent:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return proc.returncode, err


def errors(err: str) -> list[str]:
    """The lines of ``err`` that headway wrote as errors (not warnings or progress)."""
    return [line for line in err.splitlines() if line.startswith(("headway: error", "hint:"))]


# ------------------------------------------------------------------ 1. one owner per folder


def test_a_second_process_on_a_busy_run_folder_stops_naming_the_holder(llama_dir, tmp_path):
    run, resume = tmp_path / "run", tmp_path / "resume"
    first = start(train_args(llama_dir, run), fault="pause-step:3", resume=resume)
    try:
        wait_paused(first)
        before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
        second = headway(train_args(llama_dir, run, learning_rate=3e-2))
        assert second.returncode == 2, second.stderr[-2000:]
        line = errors(second.stderr)[0]
        assert line.startswith(f"headway: error: run folder {run} is in use by PID {first.pid}")
        assert "Traceback" not in second.stderr
        # nothing of the first run was touched: no file added, none removed
        assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
        assert (run / "checkpoints" / "checkpoint-2" / "headway_run.json").is_file()
    finally:
        resume.touch()
        out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    metrics = read_metrics(run / "metrics.jsonl")
    steps = [r["step"] for r in metrics if r["kind"] == "train"]
    assert steps == sorted(set(steps)) == list(range(1, 7)), "every step once, in order"


def test_two_runs_started_together_on_one_folder_never_both_write(llama_dir, tmp_path):
    """Started at the same moment, with other learning rates: one runs, the other stops at
    once; the folder holds one run's records and settings."""
    run = tmp_path / "run"
    procs = [start(train_args(llama_dir, run, learning_rate=lr), fault="pause-step:1",
                   pause_s=8) for lr in (1e-2, 3e-2)]
    results = [(p.returncode, err) for p in procs for _, err in [p.communicate(timeout=300)]]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], [err[-1500:] for _, err in results]
    loser = next(err for code, err in results if code == 2)
    assert "is in use by PID" in errors(loser)[0]
    metrics = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in metrics if r["kind"] == "train"] == list(range(1, 7))
    config = (run / "config.yaml").read_text()
    winner_lr = next(lr for (code, _), lr in zip(results, (1e-2, 3e-2)) if code == 0)
    assert f"learning_rate: {winner_lr}" in config


# ------------------------------------------------------------------ 2. the rows are the run


def test_a_resume_on_changed_rows_is_refused_naming_them(llama_dir, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"question": f"{i} + {i} =", "answer": str(2 * i)})
                            + "\n" for i in range(40)))
    run = tmp_path / "run"
    args = train_args(llama_dir, run, task=data)
    assert killed(headway(args, fault="after-checkpoint:2"))
    data.write_text("".join(json.dumps({"question": f"{i} * 3 =", "answer": str(3 * i)})
                            + "\n" for i in range(40)))
    again = headway(args)
    assert again.returncode == 2
    assert "train_data" in errors(again.stderr)[0] and "Traceback" not in again.stderr


def test_the_same_relative_path_from_another_folder_is_another_run(llama_dir, tmp_path):
    run = tmp_path / "run"
    for folder, answer in (("a", "yes"), ("b", "no")):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "rows.jsonl").write_text("".join(
            json.dumps({"question": f"row {i}?", "answer": answer}) + "\n" for i in range(40)))
    args = train_args(llama_dir, run, task="rows.jsonl", save_steps=0, max_steps=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for folder, code in (("a", 0), ("b", 2)):
        proc = subprocess.run([sys.executable, str(RUNNER), *map(str, args)], env=env,
                              cwd=tmp_path / folder, capture_output=True, text=True, timeout=300)
        assert proc.returncode == code, proc.stderr[-2000:]
    assert "train_data" in errors(proc.stderr)[0]


# ------------------------------------------------------------------ 3. records are checked


@pytest.fixture(scope="module")
def finished_run(llama_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("finished") / "run"
    ok(headway(train_args(llama_dir, run, save_steps=0, max_steps=4)))
    return run


def copy_run(run: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(run, to)
    return to


def test_a_cut_metrics_file_is_an_error_not_a_wrong_analysis(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    metrics = run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    last_probe = max(i for i, line in enumerate(lines) if '"probe"' in line)
    text = "\n".join(lines[:last_probe + 1]) + "\n"
    metrics.write_text(text[:-40])  # 40 characters cut from the last (probe) record
    assert main(["analyze", "--runs", str(run), "-o", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "the last record is cut short" in err  # the warning, then the error
    assert str(metrics) in errors(err)[0] and "the run finished at step 4" in errors(err)[0]
    assert not (tmp_path / "a" / "analysis.json").exists()


@pytest.mark.parametrize("damage, message", [
    (lambda lines: lines[:1] + ["{not json"] + lines[1:], "not a JSON record"),
    (lambda lines: lines[:1] + ['{"kind": "probe", "step": 3}'] + lines[1:],
     "a probe record without 'probes'"),
    (lambda lines: lines[:1] + ['{"kind": "train"}'] + lines[1:], "'step' is None"),
])
def test_a_malformed_record_names_the_file_and_line(finished_run, tmp_path, capsys, damage,
                                                    message):
    run = copy_run(finished_run, tmp_path / "run")
    metrics = run / "metrics.jsonl"
    metrics.write_text("\n".join(damage(metrics.read_text().splitlines())) + "\n")
    assert main(["analyze", "--runs", str(run), "-o", str(tmp_path / "a")]) == 2
    line = errors(capsys.readouterr().err)[0]
    assert f"{metrics}:2: {message}" in line


def test_a_corrupt_manifest_is_one_line(finished_run, tmp_path, capsys):
    run = copy_run(finished_run, tmp_path / "run")
    (run / "manifest.json").write_text('{"status": "fini')
    assert main(["analyze", "--runs", str(run), "-o", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "manifest.json: not a readable manifest" in errors(err)[0]
    assert "Traceback" not in err


# ------------------------------------------------------------------ 4. full disks


def test_a_disk_full_at_the_end_of_scoring_keeps_the_batches(llama_dir, tmp_path, monkeypatch,
                                                              capsys):
    """The disk fills up when the pattern is written: one line naming the file and its size;
    every scored batch is in the resume file, and the rerun (space freed) finishes from it."""
    from headway import storage
    from headway.scoring import score as scoring

    out = tmp_path / "p"
    args = ["score", "--model", str(llama_dir), "--task", "arithmetic", "-n", "12",
            "--batch-size", "4", "-o", str(out), "--no-progress"]
    real_init, real_fsync = scoring.ScoreCheckpoint.__init__, storage.os.fsync
    writes = {"partial": 0}

    def keep_every_batch(self, *a, **kw):
        real_init(self, *a, **kw)
        self.every_s = 0.0

    def fsync(fd):
        if writes["partial"] >= 3:  # three batches kept, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        writes["partial"] += 1
        return real_fsync(fd)

    monkeypatch.setattr(scoring.ScoreCheckpoint, "__init__", keep_every_batch)
    monkeypatch.setattr(storage.os, "fsync", fsync)
    assert main(args) == 2
    err = capsys.readouterr().err
    line = errors(err)[0]
    assert line.startswith(f"headway: error: no space left on the disk of {out}.safetensors")
    assert "MB needed" in line and "finished work is kept" in line and "Traceback" not in err
    partial = Path(f"{out}.partial.safetensors")
    assert partial.is_file() and not Path(f"{out}.safetensors").exists()
    monkeypatch.setattr(storage.os, "fsync", real_fsync)  # space freed
    calls = []
    real_gate = scoring.gate_scores
    monkeypatch.setattr(scoring, "gate_scores", lambda *a, **k: calls.append(1) or real_gate(*a, **k))
    assert main(args) == 0
    assert calls == [], "the rerun scored nothing again"
    assert ActivationPattern.load(out).scores.shape == (2, 4)


def test_a_checkpoint_into_a_full_disk_is_one_line_and_the_run_resumes(llama_dir, tmp_path,
                                                                       monkeypatch, capsys):
    """torch's writer fails on a full disk with 'unexpected pos'; that is one line, the last
    complete checkpoint stays, and the rerun resumes from it to the records of an
    uninterrupted run."""
    from transformers import Trainer

    run, reference = tmp_path / "run", tmp_path / "reference"
    real = Trainer._save_optimizer_and_scheduler

    def full_disk(self, output_dir):
        if self.state.global_step == 4:
            raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos "
                               "1088 vs 1030")
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", full_disk)
    assert main(list(map(str, train_args(llama_dir, run)))) == 2
    err = capsys.readouterr().err
    assert errors(err)[0].startswith(f"headway: error: no space left on the disk of {run}")
    assert "Traceback" not in err
    assert (run / "checkpoints" / "checkpoint-2" / "headway_run.json").is_file()
    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", real)
    assert main(list(map(str, train_args(llama_dir, run)))) == 0
    assert main(list(map(str, train_args(llama_dir, reference)))) == 0
    assert_same_records(run, reference)


def test_too_little_space_is_refused_before_the_folder_is_touched(llama_dir, tmp_path,
                                                                  monkeypatch, capsys):
    from collections import namedtuple

    from headway import storage

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(storage.shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 1000))
    run = tmp_path / "run"
    assert main(list(map(str, train_args(llama_dir, run)))) == 2
    line = errors(capsys.readouterr().err)[0]
    assert "no space left on the disk of" in line and "needs about" in line
    assert not (run / "config.yaml").exists()


# ------------------------------------------------------------------ 5. values checked first


@pytest.mark.parametrize("field, value", [("learning_rate", -1), ("weight_decay", -0.1),
                                          ("lora_dropout", 1.5), ("logging_steps", 0),
                                          ("save_total_limit", 0)])
def test_a_bad_value_is_refused_before_the_folder_is_touched(llama_dir, tmp_path, capsys,
                                                              field, value):
    run = tmp_path / "run"
    assert main(list(map(str, train_args(llama_dir, run, **{field: value})))) == 2
    err = capsys.readouterr().err
    assert f"{field} is {value}" in errors(err)[0] and "Traceback" not in err
    assert not (run / "config.yaml").exists() and not (run / "checkpoints").exists()
    assert main(list(map(str, train_args(llama_dir, run, save_steps=0, max_steps=2)))) == 0


def test_a_start_that_trained_nothing_is_replaced_by_a_corrected_run(llama_dir, tmp_path):
    run = tmp_path / "run"
    assert killed(headway(train_args(llama_dir, run), fault="train-step:1"))
    proc = ok(headway(train_args(llama_dir, run, learning_rate=3e-2)))
    assert "replaced the start of a run with other values of learning_rate" in proc.stdout


# ------------------------------------------------------------------ 6. SIGTERM


def test_sigterm_during_scoring_keeps_the_batches_and_the_rerun_finishes(llama_dir, tmp_path):
    out = tmp_path / "p"
    args = ["score", "--model", llama_dir, "--task", "arithmetic", "-n", "16",
            "--batch-size", "4", "--per-sample", "-o", out, "--no-progress"]
    proc = start(args, fault="pause-batch:2")
    wait_paused(proc)
    code, err = sigterm_then_kill(proc)
    assert code == 143, err[-2000:]
    said = [line for line in err.splitlines() if line.startswith("headway:")]
    assert len(said) == 1 and said[0].startswith("headway: stopped (SIGTERM)")
    assert Path(f"{out}.partial.safetensors").is_file()
    ok(headway(args))
    reference = tmp_path / "reference"
    ok(headway([*args[:-3], "-o", reference, "--no-progress"]))
    a, b = ActivationPattern.load(out), ActivationPattern.load(reference)
    assert torch.equal(a.per_sample, b.per_sample)


def test_sigterm_during_training_saves_a_checkpoint_and_resumes(llama_dir, tmp_path):
    """A scheduler's SIGTERM mid-run: the run finishes its step, saves a checkpoint and ends
    with one line, exit 143, inside the grace period; the same command resumes to the
    records of an uninterrupted run."""
    run, reference = tmp_path / "run", tmp_path / "reference"
    args = train_args(llama_dir, run, save_steps=0)  # no scheduled checkpoints at all
    resume = tmp_path / "resume"
    proc = start(args, fault="pause-step:3", resume=resume)
    wait_paused(proc)
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)  # the signal arrives while the step is still busy
    resume.touch()
    code, err = sigterm_then_kill(proc, sent=True)
    assert code == 143, err[-2000:]
    said = [line for line in err.splitlines() if line.startswith("headway:")]
    assert len(said) == 1 and "saved checkpoint-3" in said[0], said
    assert (run / "checkpoints" / "checkpoint-3" / "headway_run.json").is_file()
    ok(headway(args))
    ok(headway(train_args(llama_dir, reference, save_steps=0)))
    assert_same_records(run, reference)
