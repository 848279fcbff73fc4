"""Two CPU processes (torchrun, gloo): scoring equals one process; DDP training runs."""

from __future__ import annotations

import json

import pytest
from conftest import save_tiny_model
from launch import run

from headway.patterns import ActivationPattern
from headway.training.records import read_metrics


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


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
         "--probe_rows", "4", "--max_steps", "4", "--track_every", "2", "--track_schedule", "every",
         "--per_device_train_batch_size", "2", "--output_dir", str(out), "--disable_tqdm", "true"],
        2, tmp_path / "logs")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["global_step"] == 4
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "probe"] \
        == [0, 2, 4]
    assert (out / "final" / "config.json").is_file()
