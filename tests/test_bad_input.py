"""Bad input ends in one ``headway: error:`` line (and a ``hint:`` line), exit status 2, never a
traceback: damaged model folders and pattern files, unreadable resume files, mistyped names,
empty inputs, prompts longer than --max-length."""

from __future__ import annotations

import json
import re
import shutil
import time

import pytest
import torch
from safetensors.torch import save_file

from headway.cli import main
from headway.data.encoding import encode_examples
from headway.data.rows import Example, TaskError
from headway.data.tasks import load_task
from headway.patterns import ActivationPattern, PatternError

ROWS = [{"question": f"What is {i} + {i}?", "answer": f"{i} + {i} = {2 * i}"} for i in range(5)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli_error(capsys, *argv) -> str:
    """Run the command line, expect exit 2 and return its one error line (checking that stderr
    holds nothing but that line and an optional hint line)."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert "Traceback" not in err
    assert lines[0].startswith("headway: error: ") and len(lines) <= 2, err
    assert len(lines) == 1 or lines[1].startswith("hint: "), err
    return err.strip()


@pytest.fixture
def model_copy(llama_dir, tmp_path):
    """A private copy of the tiny model folder that a test may damage."""
    return shutil.copytree(llama_dir, tmp_path / "model")


@pytest.fixture
def no_hub(monkeypatch):
    """Fail the test if anything asks transformers or datasets to load from the hub."""
    import datasets
    import transformers

    def forbidden(*args, **kwargs):
        raise AssertionError(f"hub access attempted: {args}")

    monkeypatch.setattr(datasets, "load_dataset", forbidden)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", forbidden)


# ------------------------------------------------------------------ 1. model folders and names


@pytest.mark.parametrize("damage", ["truncate", "garbage", "cut_data"])
def test_corrupt_weights_name_the_file(model_copy, capsys, damage):
    weights = model_copy / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncate": data[:300], "garbage": b"\x00garbage" * 50,
                         "cut_data": data[:-100]}[damage])
    err = cli_error(capsys, "score", "--model", model_copy, "--task", "arithmetic", "-n", "2",
                    "-o", model_copy.parent / "out", "--no-progress")
    assert f"{weights}: not a readable safetensors file (truncated or corrupt)" in err
    assert "hint: " in err


def test_weights_with_a_sound_header_that_transformers_rejects(model_copy, capsys):
    header = json.dumps({"w": {"dtype": "NOPE", "shape": [1], "data_offsets": [0, 4]}}).encode()
    (model_copy / "model.safetensors").write_bytes(
        len(header).to_bytes(8, "little") + header + b"\0" * 4)
    err = cli_error(capsys, "score", "--model", model_copy, "--task", "arithmetic", "-n", "2",
                    "-o", model_copy.parent / "out", "--no-progress")
    assert f"{model_copy.resolve()}: could not load the model folder" in err


@pytest.mark.parametrize("name", ["./nope", "/abs/nope", "../x", "a/b/c"])
def test_missing_model_folder(name, capsys, no_hub):
    err = cli_error(capsys, "score", "--model", name, "--task", "arithmetic", "-n", "2")
    assert err.splitlines()[0] == f"headway: error: no such model folder {name}"


def test_name_that_is_no_folder_alias_or_hub_id(capsys, no_hub):
    err = cli_error(capsys, "score", "--model", "my model!", "--task", "arithmetic", "-n", "2")
    assert "no such model folder or built-in alias 'my model!'" in err
    assert "smollm2-135m" in err


def test_hub_model_failure_is_one_line(capsys):
    err = cli_error(capsys, "score", "--model", "no-such-org/no-such-model", "--task",
                    "arithmetic", "-n", "2")
    assert "could not load model 'no-such-org/no-such-model' (offline mode is on" in err


# ------------------------------------------------------------------ 2. the scoring resume file


def test_corrupt_partial_is_set_aside_and_scoring_starts_over(llama_dir, tmp_path, capsys):
    args = ["score", "--model", str(llama_dir), "--task", "arithmetic", "-n", "4",
            "--batch-size", "2", "--no-progress", "-o"]
    assert main(args + [str(tmp_path / "clean")]) == 0
    partial = tmp_path / "out.partial.safetensors"
    partial.write_bytes(b"\x93garbage, not safetensors" * 10)
    capsys.readouterr()
    assert main(args + [str(tmp_path / "out")]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(warnings) == 1 and warnings[0].startswith("headway: warning: "), warnings
    assert f"{partial}.corrupt" in warnings[0]
    assert not partial.exists() and (tmp_path / "out.partial.safetensors.corrupt").is_file()
    torch.testing.assert_close(ActivationPattern.load(tmp_path / "out").scores,
                               ActivationPattern.load(tmp_path / "clean").scores)


def test_partial_of_other_shapes_is_ignored(tmp_path, capsys):
    from tiny_models import tiny_model

    from headway.scoring.score import ScoreCheckpoint, score_encoded
    from headway.storage import atomic_save_tensors

    rows = [Example(f"What is {i}?", f"{i}", i) for i in range(5)]
    from conftest import make_byte_tokenizer
    encoded, _ = encode_examples(rows, make_byte_tokenizer())
    model = tiny_model("llama")
    checkpoint = ScoreCheckpoint(tmp_path / "x.partial.safetensors", {"run": 1}, every_s=1e9)
    # same run key, but written for 3 rows and 3 heads
    atomic_save_tensors(checkpoint.path, {"per_sample": torch.ones(3, 2, 3), "loss": torch.ones(3),
                                          "done": torch.ones(3, dtype=torch.bool)},
                        metadata={"key": checkpoint.key})
    resumed = score_encoded(model, encoded, 2, 4, pad_id=0, progress=False, checkpoint=checkpoint)
    clean = score_encoded(model, encoded, 2, 4, pad_id=0, progress=False)
    torch.testing.assert_close(resumed["per_sample"], clean["per_sample"])
    assert "do not fit this run" in capsys.readouterr().err


# ------------------------------------------------------------------ 3. pattern files


@pytest.fixture
def pattern(tmp_path):
    """A saved 2-layer x 4-head pattern of 3 samples; returns its path without suffix."""
    per_sample = torch.randn(3, 2, 4)
    ActivationPattern(scores=per_sample.abs().mean(0), meta={"n_samples": 3},
                      per_sample=per_sample, loss=torch.rand(3),
                      index=torch.arange(3)).save(tmp_path / "p")
    return tmp_path / "p"


def test_sound_pattern_loads_by_any_name(pattern):
    for name in (pattern, f"{pattern}.safetensors", f"{pattern}.json"):
        assert ActivationPattern.load(name).scores.shape == (2, 4)
    pattern.with_suffix(".json").unlink()  # a missing sidecar is fine
    assert ActivationPattern.load(pattern).per_sample.shape == (3, 2, 4)


@pytest.mark.parametrize("damage", ["cut", "random"])
def test_damaged_pattern_file(pattern, capsys, damage):
    file = pattern.with_suffix(".safetensors")
    data = file.read_bytes()
    file.write_bytes(data[:len(data) // 2] if damage == "cut" else torch.randint(
        0, 256, (500,), dtype=torch.uint8).numpy().tobytes())
    err = cli_error(capsys, "show", pattern)
    assert f"{file}: not a readable safetensors file (truncated or corrupt)" in err


@pytest.mark.parametrize("tensors, problem", [
    ({"scores": torch.rand(4)}, "'scores' must be a non-empty [n_layers, n_heads] float tensor"),
    ({"weight": torch.rand(2, 4)}, "is not a headway activation pattern (no 'scores'"),
    ({"scores": torch.rand(2, 4), "per_sample": torch.rand(3, 4, 2)}, "'per_sample' must be"),
    ({"scores": torch.rand(2, 4), "per_sample": torch.rand(3, 2, 4), "loss": torch.rand(2)},
     "per-sample tensors disagree on N"),
    ({"scores": torch.rand(2, 4), "loss": torch.rand(3), "index": torch.arange(4)},
     "per-sample tensors disagree on N"),
    ({"scores": torch.rand(2, 4), "loss": torch.rand(3, 1)}, "'loss' must be a [N] vector"),
])
def test_wrong_shaped_pattern(tmp_path, capsys, tensors, problem):
    file = tmp_path / "bad.safetensors"
    save_file(tensors, file)
    err = cli_error(capsys, "show", file)
    assert f"headway: error: {file}" in err and problem in err
    with pytest.raises(PatternError):
        ActivationPattern.load(file)


def test_bad_metadata_json(tmp_path, capsys):
    save_file({"scores": torch.rand(2, 4)}, tmp_path / "m.safetensors",
              metadata={"headway": "{not json"})
    assert "'headway' metadata is not valid JSON" in cli_error(capsys, "show", tmp_path / "m")


def test_sidecar_that_disagrees_names_both_files(pattern, capsys):
    sidecar = pattern.with_suffix(".json")
    meta = json.loads(sidecar.read_text())
    meta["tensors"]["scores"] = [3, 4]
    sidecar.write_text(json.dumps(meta))
    err = cli_error(capsys, "show", pattern)
    assert f"{sidecar} records tensors" in err and f"{pattern}.safetensors holds" in err
    assert "hint: " in err


# ------------------------------------------------------------------ 4. mistyped task names


def test_mistyped_builtin_task_fails_fast_with_suggestion(llama_dir, capsys, no_hub):
    start = time.perf_counter()
    err = cli_error(capsys, "score", "--model", llama_dir, "--task", "arithmetc")
    assert time.perf_counter() - start < 5
    assert err.splitlines() == [
        "headway: error: unknown task 'arithmetc'",
        "hint: did you mean 'arithmetic'? (`headway tasks` lists the built-in tasks)"]


def test_name_that_cannot_be_a_hub_dataset(capsys, no_hub):
    err = cli_error(capsys, "score", "--task", "zzq", "-n", "2")
    assert "zzq: no such task, file or folder" in err and "arithmetic" in err


def test_hub_dataset_offline_is_one_clear_line(capsys):
    err = cli_error(capsys, "score", "--task", "no-such-user/no-such-dataset", "-n", "2")
    assert "could not load hub dataset 'no-such-user/no-such-dataset'" in err
    assert "offline mode is on" in err and "not cached in None" not in err


# ------------------------------------------------------------------ 5. empty inputs


@pytest.mark.parametrize("name, text", [
    ("empty.jsonl", ""), ("blank.jsonl", "\n\n"), ("header.csv", "question,answer\n"),
    ("empty.csv", ""), ("list.json", "[]"),
])
def test_empty_file_has_no_rows(tmp_path, capsys, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TaskError, match=f"^{re.escape(str(path))}: no rows$"):
        load_task(str(path))
    err = cli_error(capsys, "score", "--task", path, "-n", "2")
    assert err.splitlines()[0] == f"headway: error: {path}: no rows"


# ------------------------------------------------------------------ 6. prompts over --max-length


def test_overlong_prompt_names_the_prompt_column(llama_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "long.jsonl", ROWS)
    err = cli_error(capsys, "score", "--model", llama_dir, "--task", data, "--max-length", "8",
                    "--no-progress", "-o", tmp_path / "out")
    error, hint = err.splitlines()
    assert error.startswith(f"headway: error: {data}: row 0: the prompt (field 'question') "
                            f"alone has ")
    assert "'response'" not in error and "max_length=8" in error
    assert hint.startswith("hint: raise --max-length (max_length=...) above ")
    assert hint.endswith("or use --overlong drop (overlong='drop')")


def test_encode_examples_keeps_its_old_call(byte_tokenizer):
    with pytest.raises(TaskError, match="my.jsonl: row 4: the prompt alone has"):
        encode_examples([Example("a long question", "yes", 4)], byte_tokenizer, "qa", 10,
                        "truncate", "my.jsonl")


# ------------------------------------------------------------------ the last tracebacks


def subprocess_headway(argv, env_changes: dict, cwd=None):
    """``headway ARGV`` in a fresh process whose environment differs by ``env_changes``
    (None removes a variable): for settings read when libraries are imported."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-m", "headway.cli", *map(str, argv)], env=env,
                          cwd=cwd, capture_output=True, text=True, timeout=300)


def one_error(stderr: str) -> str:
    """The single error line of ``stderr`` (notes and warnings before it are allowed)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.strip().splitlines() if line.startswith("headway: error")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("command", ["score", "train", "eval"])
def test_non_utf8_bytes_in_a_jsonl_name_the_line(llama_dir, tmp_path, capsys, command):
    data = tmp_path / "rows.jsonl"
    data.write_bytes(b'{"question": "q0", "answer": "a0"}\n{"question": "q\xff", "answer": "a"}\n')
    argv = {"score": ["score", "--model", llama_dir, "--task", data, "-o", tmp_path / "p"],
            "train": ["train", "--model", llama_dir, "--task", data, "--rows", "2",
                      "--output_dir", tmp_path / "run"],
            "eval": ["eval", "--model", llama_dir, "--task", data]}[command]
    err = cli_error(capsys, *argv)
    assert f"{data}: line 2 is not UTF-8 text (byte 0xff at offset 50)" in err


def test_an_excel_csv_with_a_bom_is_read(llama_dir, tmp_path, capsys):
    data = tmp_path / "excel.csv"
    data.write_bytes("\ufeffquestion,answer\nWhat is 2 + 2?,4\nWhat is 3 + 3?,6\n".encode())
    assert main(["score", "--model", str(llama_dir), "--task", str(data), "-o",
                 str(tmp_path / "p"), "--no-progress"]) == 0
    pattern = ActivationPattern.load(tmp_path / "p")
    assert pattern.meta["n_samples"] == 2 and pattern.meta["task"]["prompt_field"] == "question"


def test_two_prompt_columns_say_which_is_used(llama_dir, tmp_path, capsys):
    data = write_jsonl(tmp_path / "both.jsonl", [{"prompt": "p", "question": "q", "answer": "a"}])
    assert main(["score", "--model", str(llama_dir), "--task", str(data), "-o",
                 str(tmp_path / "p"), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "columns 'prompt', 'question' could each be the prompt; using 'prompt'" in err
    assert ActivationPattern.load(tmp_path / "p").meta["task"]["prompt_field"] == "prompt"


@pytest.mark.parametrize("argv, message", [
    (["show", "{pattern}", "--top-k", "-3"], "--top-k is -3; it must be >= 1"),
    (["show", "{pattern}", "--heatmap", "/sys/headway-test/x.png"],
     "cannot write the heatmap folder /sys/headway-test"),
    (["analyze", "--patterns", "{pattern}", "--bootstrap", "-1"], "--bootstrap is -1"),
    (["analyze", "--patterns", "{pattern}", "--permutations", "0"], "--permutations is 0"),
    (["analyze", "-o", "{tmp}/a"], "nothing to analyse"),
    (["eval", "--model", "{model}", "--task", "arithmetic", "--max-new-tokens", "-5"],
     "--max-new-tokens is -5"),
    (["eval", "--model", "{model}", "--task", "arithmetic", "--batch-size", "-1"],
     "--batch-size is -1"),
    (["mix", "--total", "0", "-o", "{tmp}/mix"], "--total is 0"),
    (["mix", "--stage1-steps", "-1", "-o", "{tmp}/mix"], "--stage1-steps is -1"),
    (["score", "--model", "{model}", "--task", "arithmetic", "--batch-size", "0"],
     "--batch-size is 0"),
    (["report", "{tmp}/broken"], "broken/analysis.json: not a readable analysis.json"),
])
def test_values_and_files_checked_before_any_work(llama_dir, tmp_path, capsys, monkeypatch,
                                                 argv, message):
    import headway.models.loading

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    pattern = tmp_path / "pat"
    ActivationPattern(scores=torch.rand(2, 4), meta={"task": {"name": "t"}}).save(pattern)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "analysis.json").write_text('{"patterns": {')
    monkeypatch.setattr(headway.models.loading, "load_model", no_load)
    filled = [a.format(pattern=pattern, tmp=tmp_path, model=llama_dir) for a in argv]
    assert message in cli_error(capsys, *filled)


def test_the_same_run_twice_counts_once(llama_dir, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", str(llama_dir), "--task", "arithmetic", "--rows", "8",
                 "--max_steps", "2", "--per_device_train_batch_size", "4", "--probe_rows", "4",
                 "--output_dir", str(run), "--disable_tqdm", "true", "--save_final", "false"]) == 0
    assert main(["analyze", "--runs", str(run), str(run) + "/", "-o", str(tmp_path / "a")]) == 0
    analysis = json.loads((tmp_path / "a" / "analysis.json").read_text())
    assert list(analysis["runs"]) == ["arithmetic"]


def test_show_says_when_every_score_is_zero_and_refuses_nan(tmp_path, capsys):
    zero, nan = tmp_path / "zero", tmp_path / "nan"
    ActivationPattern(scores=torch.zeros(2, 4), meta={}).save(zero)
    ActivationPattern(scores=torch.full((2, 4), float("nan")), meta={}).save(nan)
    assert main(["show", str(zero)]) == 0
    assert "every score of" in capsys.readouterr().err
    assert "8 of its 8 scores are NaN or infinite" in cli_error(capsys, "show", nan)


def test_headway_debug_false_keeps_tracebacks_off(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HEADWAY_DEBUG", "false")
    assert "no activation pattern" in cli_error(capsys, "show", tmp_path / "none")


def test_unwritable_caches_are_named(tmp_path):
    data = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    proc = subprocess_headway(["score", "--task", data, "-n", "2", "-o", tmp_path / "p"],
                              {"HEADWAY_CACHE": "/sys/headway-test", "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    assert "cannot write headway's cache /sys/headway-test/models" in one_error(proc.stderr)
    proc = subprocess_headway(["score", "--task", data, "-n", "2", "-o", tmp_path / "p"],
                              {"HF_HOME": "/sys/hf-test", "HF_DATASETS_CACHE": None,
                               "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    line = one_error(proc.stderr)
    assert "cannot write the Hugging Face cache" in line and "rows.jsonl" not in line


def test_a_hub_id_without_network_fails_fast(tmp_path):
    """No network (an endpoint that refuses connections) and HF_HUB_OFFLINE unset: offline
    mode at once, one note and one error, not a minute of retries."""
    start = time.perf_counter()
    proc = subprocess_headway(["score", "--model", "some-org/some-model", "--task",
                               "arithmetic", "-n", "2", "-o", tmp_path / "p"],
                              {"HF_HUB_OFFLINE": None, "HF_DATASETS_OFFLINE": None,
                               "HF_ENDPOINT": "http://127.0.0.1:9"})
    elapsed = time.perf_counter() - start
    assert proc.returncode == 2
    assert "did not answer within 3 s: working offline" in proc.stderr
    assert "could not load model 'some-org/some-model' (offline mode is on" in one_error(
        proc.stderr)
    assert elapsed < 30, f"{elapsed:.0f} s"
