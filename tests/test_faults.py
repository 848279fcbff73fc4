"""Faults tried the hard way: processes killed (SIGKILL) at chosen points, runs of other
settings in the same folder, unwritable outputs, Ctrl-C. After each, the same command must
finish with the records an uninterrupted run writes, and nothing finished may be lost.

The kills run in subprocesses through ``tests/fault_runner.py`` (see its docstring for the
points). docs/reliability.md lists what each test promises.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from headway.cli import main
from headway.patterns import ActivationPattern
from headway.training.records import read_metrics

RUNNER = Path(__file__).with_name("fault_runner.py")


def headway(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    """``headway ARGS`` in a fresh process, with ``fault`` injected (see fault_runner.py)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    env.pop("HEADWAY_FAULT", None)
    if fault:
        env["HEADWAY_FAULT"] = fault
    return subprocess.run([sys.executable, str(RUNNER), *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


def killed(proc: subprocess.CompletedProcess) -> bool:
    return proc.returncode == -9


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def train_args(model_dir, out, **kw) -> list[str]:
    fields = dict(model=model_dir, task="arithmetic", rows=24, probe_rows=4, max_steps=6,
                  per_device_train_batch_size=4, track_every=2, track_schedule="every",
                  save_steps=2,
                  learning_rate=1e-2, logging_steps=1, disable_tqdm="true", save_final="false",
                  output_dir=out)
    fields.update(kw)
    if fields["save_steps"] == 0:  # no scheduled checkpoints
        del fields["save_steps"]
        fields["save_strategy"] = "no"
    return ["train", *[a for k, v in fields.items() for a in (f"--{k}", str(v))]]


def records(run: Path) -> dict:
    """Everything a run recorded, by step: probe patterns, parameter change, train losses."""
    metrics = read_metrics(run / "metrics.jsonl")
    probe_steps = [r["step"] for r in metrics if r["kind"] == "probe"]
    return {
        "probe_steps": probe_steps,
        "train_steps": [r["step"] for r in metrics if r["kind"] == "train"],
        "train_loss": [r["loss"] for r in metrics if r["kind"] == "train"],
        "patterns": {s: ActivationPattern.load(run / "patterns" / f"step_{s:06d}" /
                                               "arithmetic").scores for s in probe_steps},
        "change": {s: load_file(run / "param_change" / f"step_{s:06d}.safetensors")["attn"]
                   for s in probe_steps},
    }


def assert_same_records(got: Path, want: Path) -> None:
    a, b = records(got), records(want)
    assert a["probe_steps"] == b["probe_steps"]
    assert a["train_steps"] == b["train_steps"]
    torch.testing.assert_close(torch.tensor(a["train_loss"]), torch.tensor(b["train_loss"]),
                               rtol=1e-4, atol=1e-6)
    for step in b["probe_steps"]:
        torch.testing.assert_close(a["patterns"][step], b["patterns"][step], rtol=1e-4,
                                   atol=1e-7)
        torch.testing.assert_close(a["change"][step].nan_to_num(0),
                                   b["change"][step].nan_to_num(0), rtol=1e-4, atol=1e-7)
    ma = json.loads((got / "manifest.json").read_text())
    mb = json.loads((want / "manifest.json").read_text())
    assert ma["status"] == mb["status"] == "finished"
    assert ma["global_step"] == mb["global_step"]
    assert ma["train_loss"] == pytest.approx(mb["train_loss"], rel=1e-4)


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory):
    """A tiny Llama with tied input and output embeddings (as SmolLM2 has)."""
    import transformers as tf
    from conftest import make_byte_tokenizer
    from tiny_models import COMMON

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-tied")
    tf.AutoModelForCausalLM.from_config(
        tf.LlamaConfig(**COMMON, num_key_value_heads=2, tie_word_embeddings=True)
    ).save_pretrained(folder)
    make_byte_tokenizer(add_bos=True).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def straight(tied_dir, tmp_path_factory):
    """The uninterrupted run every interrupted one is compared with."""
    out = tmp_path_factory.mktemp("straight") / "run"
    ok(headway(train_args(tied_dir, out)))
    return out


def test_kill_while_a_checkpoint_is_written(tied_dir, straight, tmp_path):
    """Killed inside checkpoint-4 (model files there, trainer state not): the rerun takes the
    newest complete checkpoint (2), removes the cut one, and ends with the same records as
    an uninterrupted run; the train loss and time cover both sessions; no tied-weights
    warning."""
    out = tmp_path / "run"
    assert killed(headway(train_args(tied_dir, out), fault="checkpoint-write:4"))
    cut = out / "checkpoints" / "checkpoint-4"
    assert cut.is_dir() and not (cut / "trainer_state.json").exists()
    proc = ok(headway(train_args(tied_dir, out)))
    assert f"removed {cut}" in proc.stderr + proc.stdout
    assert "missing keys" not in proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumed_from"].endswith("checkpoint-2")
    assert manifest["sessions"] == 2
    assert_same_records(out, straight)


def test_kill_while_a_probe_record_is_written(tied_dir, straight, tmp_path):
    """Killed after step 4's patterns, before its parameter change and metrics line: the
    rerun resumes from checkpoint-2 and writes step 4 again."""
    out = tmp_path / "run"
    assert killed(headway(train_args(tied_dir, out), fault="probe-record:4"))
    assert (out / "patterns" / "step_000004").is_dir()
    assert not (out / "param_change" / "step_000004.safetensors").exists()
    ok(headway(train_args(tied_dir, out)))
    assert_same_records(out, straight)


def test_two_runs_in_one_folder_are_never_spliced(tied_dir, tmp_path):
    """Run A (lr 1e-2) killed after checkpoint-2; run B (lr 1e-3, --resume false) killed
    before its first checkpoint; B again with the default resume. B must not continue from
    A's checkpoint: A is moved aside whole, and B's records equal an uninterrupted B."""
    out = tmp_path / "run"
    assert killed(headway(train_args(tied_dir, out, max_steps=4), fault="after-checkpoint:2"))
    b = train_args(tied_dir, out, max_steps=4, learning_rate=1e-3)
    assert killed(headway([*b, "--resume", "false"], fault="train-step:1"))
    (aside,) = tmp_path.glob("run.old-*")
    assert "learning_rate: 0.01" in (aside / "config.yaml").read_text()
    assert (aside / "checkpoints" / "checkpoint-2" / "headway_run.json").is_file()
    ok(headway(b))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["resumed_from"] is None
    assert "learning_rate: 0.001" in (out / "config.yaml").read_text()
    ok(headway(train_args(tied_dir, tmp_path / "b", max_steps=4, learning_rate=1e-3)))
    assert_same_records(out, tmp_path / "b")
    # and A's settings on B's checkpoints are refused, naming the field
    proc = headway(train_args(tied_dir, out, max_steps=4))
    assert proc.returncode == 2 and "learning_rate" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_failed_rerun_leaves_a_finished_run_alone(tied_dir, tmp_path, capsys):
    out = tmp_path / "run"
    args = train_args(tied_dir, out, max_steps=2, save_steps=0)[1:]
    assert main(["train", *args]) == 0
    files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["train", *args, "--task", "arithmetc"]) == 2  # a typo in the task
    assert "arithmetic" in capsys.readouterr().err  # did you mean
    assert main(["train", *args, "--learning_rate", "0.5"]) == 2  # other settings
    err = capsys.readouterr().err
    assert "learning_rate" in err and "--resume false" in err
    assert main(["train", *args]) == 0  # the same run again: nothing to do
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == files


def score_args(model_dir, out) -> list[str]:
    return ["score", "--model", str(model_dir), "--task", "arithmetic", "--rows", "12",
            "--batch-size", "2", "--per-sample", "--no-progress", "-o", str(out)]


def test_kill_during_scoring_resumes_bit_identical(llama_dir, tmp_path):
    out = tmp_path / "killed"
    assert killed(headway(score_args(llama_dir, out), fault="scoring-batch:3"))
    assert Path(f"{out}.partial.safetensors").is_file()
    assert not Path(f"{out}.safetensors").exists()
    ok(headway(score_args(llama_dir, out)))
    ok(headway(score_args(llama_dir, tmp_path / "straight")))
    a, b = ActivationPattern.load(out), ActivationPattern.load(tmp_path / "straight")
    assert torch.equal(a.per_sample, b.per_sample) and torch.equal(a.scores, b.scores)
    assert not Path(f"{out}.partial.safetensors").exists()


def test_ctrl_c_during_scoring_keeps_the_partial(llama_dir, tmp_path, monkeypatch, capsys):
    from headway.scoring import score as scoring

    real, calls = scoring.gate_scores, [0]

    def interrupted(*args, **kw):
        calls[0] += 1
        if calls[0] == 3:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(scoring, "gate_scores", interrupted)
    real_init = scoring.ScoreCheckpoint.__init__

    def keep_every_batch(self, *args, **kw):
        real_init(self, *args, **kw)
        self.every_s = 0.0

    monkeypatch.setattr(scoring.ScoreCheckpoint, "__init__", keep_every_batch)
    out = tmp_path / "p"
    assert main(score_args(llama_dir, out)) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "interrupted" in err and "again" in err
    partial = Path(f"{out}.partial.safetensors")
    from safetensors import safe_open
    with safe_open(str(partial), framework="pt") as f:
        first_session = float(f.metadata()["elapsed_s"])
    # the rerun resumes, and its elapsed time counts the interrupted session too
    monkeypatch.setattr(scoring, "gate_scores", real)
    assert main(score_args(llama_dir, out)) == 0
    assert ActivationPattern.load(out).meta["elapsed_s"] >= first_session > 0
    assert not partial.exists()


@pytest.mark.parametrize("command", ["score", "train", "analyze"])
def test_unwritable_output_fails_before_any_work(llama_dir, tmp_path, monkeypatch, capsys,
                                                 command):
    """An output under a file, or in a read-only place: one error line at once, before the
    model is loaded (not after minutes of work)."""
    import headway.models.loading

    def no_load(*args, **kw):
        raise AssertionError("the model was loaded before the output was checked")

    monkeypatch.setattr(headway.models.loading, "load_model", no_load)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for where in (blocker / "out", Path("/sys/headway-test/out")):
        args = {"score": score_args(llama_dir, where),
                "train": ["train", *train_args(llama_dir, where)[1:]],
                "analyze": ["analyze", "-o", where]}[command]
        assert main(list(map(str, args))) == 2
        err = capsys.readouterr().err
        assert err.startswith("headway: error: cannot write") and "Traceback" not in err


def test_mistyped_train_flag_is_one_line_with_a_suggestion(capsys):
    assert main(["train", "--max_step", "3"]) == 2  # not taken as an abbreviation
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "headway: error: unknown argument --max_step"
    assert "--max_steps" in err and "Traceback" not in err
