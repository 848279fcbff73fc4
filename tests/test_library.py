"""headway as a library on the user's own objects: a plain transformers model and tokenizer,
a datasets.Dataset / list / messages rows, an unmodified TRL SFTTrainer with PatternCallback,
trajectory over a plain Trainer's checkpoints, compare, delta."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import headway
from headway.cli import main
from headway.patterns import PatternError

ROWS = [{"question": f"What is {i} + {2 * i}?", "answer": f"{3 * i}"} for i in range(7)]
CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}")
EXAMPLE = Path(__file__).parents[1] / "examples" / "sft_with_patterns.py"


def plain(folder):
    """The model and tokenizer as a user loads them, the tokenizer without a pad token."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.pad_token = None
    return AutoModelForCausalLM.from_pretrained(folder), tokenizer


def test_score_a_plain_model_on_a_dataset_a_list_and_messages_equals_the_cli(
        llama_dir, tmp_path):
    model, tokenizer = plain(llama_dir)
    assert tokenizer.pad_token_id is None
    file = tmp_path / "qa.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert main(["score", "--model", str(llama_dir), "--task", str(file), "--per-sample",
                 "-o", str(tmp_path / "cli"), "--no-progress"]) == 0
    cli = headway.load_pattern(tmp_path / "cli")
    for data in (ROWS, datasets.Dataset.from_list(ROWS)):
        pattern = headway.score(model, tokenizer, data, per_sample=True, progress=False)
        assert pattern.scores.shape == (2, 4) and pattern.per_sample.shape == (7, 2, 4)
        torch.testing.assert_close(pattern.per_sample, cli.per_sample, rtol=1e-6, atol=0)
        assert pattern.meta["task"]["data_hash"] == cli.meta["task"]["data_hash"]
    assert tokenizer.pad_token_id is None  # not changed

    tokenizer.chat_template = CHAT
    messages = [{"messages": [{"role": "user", "content": r["question"]},
                              {"role": "assistant", "content": r["answer"]}]} for r in ROWS]
    chat = headway.score(model, tokenizer, datasets.Dataset.from_list(messages),
                         progress=False)
    # the same rows as prompt/response through the chat template
    same = headway.score(model, tokenizer, ROWS, template="chat", progress=False)
    torch.testing.assert_close(chat.scores, same.scores, rtol=1e-6, atol=0)
    # earlier turns (a system prompt) are part of the prompt
    with_system = [{"messages": [{"role": "system", "content": "Be brief."}, *m["messages"]]}
                   for m in messages]
    task = headway.as_task(with_system)
    assert task.examples[0].messages[0]["role"] == "system"
    assert task.examples[0].response == ROWS[0]["answer"]


def test_a_model_in_train_mode_scores_as_in_eval_mode_and_stays_in_train_mode(byte_tokenizer):
    from tiny_models import tiny_model

    model = tiny_model("gpt2")
    assert model.config.resid_pdrop > 0  # dropout that train mode would apply
    model.train()
    trained_mode = headway.score(model, byte_tokenizer, ROWS, per_sample=True, progress=False)
    assert model.training and all(m.training for m in model.modules())
    model.eval()
    eval_mode = headway.score(model, byte_tokenizer, ROWS, per_sample=True, progress=False)
    assert torch.equal(trained_mode.per_sample, eval_mode.per_sample)


def test_delta_refuses_patterns_of_other_rows_or_settings(llama_dir):
    model, tokenizer = plain(llama_dir)
    a = headway.score(model, tokenizer, ROWS, progress=False)
    b = headway.score(model, tokenizer, ROWS, progress=False)
    d = headway.delta(b, a)
    assert float(d.scores.abs().max()) == 0.0 and d.meta["kind"] == "headway.PatternDelta"
    with pytest.raises(PatternError, match="task.data_hash"):
        headway.delta(headway.score(model, tokenizer, ROWS[:5], progress=False), a)
    with pytest.raises(PatternError, match="max_length"):
        headway.delta(headway.score(model, tokenizer, ROWS, max_length=512, progress=False), a)


def sft_trainer(model, tokenizer, out, steps=4, save_steps=0):
    """An unmodified TRL SFTTrainer, as a user writes it."""
    from trl import SFTConfig, SFTTrainer

    train = datasets.Dataset.from_list(
        [{"prompt": f"What is {i} + {i}?", "completion": f" {2 * i}"} for i in range(32)])
    # TRL computes in bfloat16 by default; float32 here, so that the trainer's probe records
    # can be compared exactly with a float32 trajectory of its checkpoints
    args = SFTConfig(output_dir=str(out), max_steps=steps, per_device_train_batch_size=4,
                     learning_rate=1e-2, logging_steps=1, report_to="none", use_cpu=True,
                     bf16=False,
                     save_strategy="steps" if save_steps else "no", save_steps=save_steps or 10,
                     disable_tqdm=True)
    return SFTTrainer(model=model, args=args, train_dataset=train, processing_class=tokenizer)


def test_callback_on_an_unmodified_sft_trainer(llama_dir, tmp_path):
    model, tokenizer = plain(llama_dir)
    tokenizer.pad_token = tokenizer.eos_token  # TRL itself needs one
    out = tmp_path / "sft"
    trainer = sft_trainer(model, tokenizer, out, steps=4, save_steps=2)
    trainer.add_callback(headway.PatternCallback({"sums": ROWS}, tokenizer, every=2))
    trainer.train()
    run = out / "headway"
    assert sorted(p.name for p in (run / "patterns").iterdir()) == [
        "step_000000", "step_000002", "step_000004"]
    logged = [h for h in trainer.state.log_history if "headway/sums/gini" in h]
    assert [h["step"] for h in logged] == [0, 2, 4]
    assert logged[-1]["headway/sums/delta_norm"] > 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "finished" and manifest["global_step"] == 4

    analysis = tmp_path / "analysis"
    assert main(["analyze", "--runs", str(out), "-o", str(analysis)]) == 0  # finds headway/
    assert "sums" in json.loads((analysis / "analysis.json").read_text())["runs"]
    assert main(["report", str(analysis)]) == 0

    # trajectory over the same run's checkpoints equals the callback's records
    traj = headway.trajectory(out, base=str(llama_dir), probes={"sums": ROWS},
                              output_dir=tmp_path / "traj", progress=False).path
    for step in (0, 2, 4):
        seen = headway.load_pattern(run / "patterns" / f"step_{step:06d}" / "sums")
        redone = headway.load_pattern(traj / "patterns" / f"step_{step:06d}" / "sums")
        torch.testing.assert_close(redone.scores, seen.scores, rtol=1e-6, atol=0)
        torch.testing.assert_close(redone.per_sample, seen.per_sample, rtol=1e-6, atol=1e-9)
    assert main(["analyze", "--runs", str(traj), "-o", str(tmp_path / "a2")]) == 0


def test_trajectory_and_compare_commands(llama_dir, tmp_path, capsys):
    model, tokenizer = plain(llama_dir)
    tokenizer.pad_token = tokenizer.eos_token
    out = tmp_path / "plain"
    sft_trainer(model, tokenizer, out, steps=2, save_steps=1).train()
    assert main(["trajectory", str(out), "--base", str(llama_dir), "--probes",
                 "sums=arithmetic", "--rows", "6", "--no-progress"]) == 0
    records = [json.loads(line) for line in
               (out / "headway-trajectory" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert records[-1]["param_change"]["attn_mean"] > 0

    cmp = tmp_path / "cmp"
    assert main(["compare", str(llama_dir), str(out / "checkpoint-2"), "--task", "arithmetic",
                 "--rows", "6", "--names", "base", "tuned", "-o", str(cmp),
                 "--no-progress"]) == 0
    assert "base -> tuned: Gini" in capsys.readouterr().out
    summary = json.loads((cmp / "compare.json").read_text())
    assert summary["delta_norm"] > 0 and set(summary) >= {"gained", "lost", "change"}
    assert (cmp / "delta.safetensors").is_file()
    assert main(["report", str(cmp)]) == 0 and (cmp / "report.html").is_file()


def run_example(llama_dir, out, processes: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
        "--standalone"]  # torchrun's store binds a free port itself (no race for one)
    proc = subprocess.run([*launcher, str(EXAMPLE), "--model", str(llama_dir), "--output-dir",
                           str(out), "--max-steps", "4", "--every", "2"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("processes", [1, 2])
def test_the_example_script_runs(llama_dir, tmp_path, processes):
    """examples/sft_with_patterns.py as written, alone and under 2-process DDP (torchrun)."""
    proc = run_example(llama_dir, tmp_path / "example", processes)
    assert "step 4: probe loss" in proc.stdout
    run = tmp_path / "example" / "headway"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "probe"]
    assert steps == [0, 2, 4]
    assert json.loads((run / "manifest.json").read_text())["world_size"] == processes
