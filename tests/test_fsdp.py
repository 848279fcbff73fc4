"""FSDP2 on two CPU processes (torchrun, gloo) with tracking: the same records as DDP, and the
numbers of the weights it ran on; head-selective training leaves every other weight as it was.

Accelerate enables FSDP only on accelerators; ``headway train`` switches it on for CPU
processes (:func:`headway.sharding.fsdp_on_cpu`), so these tests run Accelerate's own FSDP2
path (``fully_shard`` per decoder layer, sharded optimizer state) with gloo.
"""

from __future__ import annotations

import json

import pytest
import torch
from conftest import save_tiny_model
from launch import run
from safetensors.torch import load_file

from headway.data.tasks import load_task
from headway.models.architectures import resolve
from headway.models.loading import load_model, pad_id
from headway.patterns import ActivationPattern
from headway.scoring.score import score_encoded
from headway.training.heads import HeadSelection
from headway.training.records import read_metrics
from headway.training.trainer import _task_spec, build_probes, load_config
from headway.training.weight_change import StartWeights, relative_change

FSDP = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
        "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}
# 20 probe rows in batches of 8: 3 batches, so the second process pads one
TRAIN = ["train", "--task", "arithmetic", "--rows", "16", "--probe_rows", "20",
         "--max_steps", "4", "--track_every", "2", "--track_schedule", "every", "--per_device_train_batch_size", "2",
         "--progress", "false"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"), "qwen2")


def records(run_dir, step: int):
    pattern = ActivationPattern.load(run_dir / "patterns" / f"step_{step:06d}" / "arithmetic")
    change = load_file(str(run_dir / "param_change" / f"step_{step:06d}.safetensors"))
    return pattern, change


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


def max_abs(a: dict, b: dict) -> float:
    """Largest difference over the tensors of two change records (NaN where both are)."""
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k].isnan(), b[k].isnan()), k
    return max(float((a[k] - b[k]).nan_to_num(0).abs().max()) for k in a)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_fsdp2_tracking_equals_ddp_and_the_weights_it_ran_on(model_dir, tmp_path, mode):
    model = ["--model", str(model_dir), "--mode", mode]
    run(TRAIN + model + ["--output_dir", str(tmp_path / "ddp")], 2, tmp_path / "logs")
    run(TRAIN + model + ["--output_dir", str(tmp_path / "fsdp")], 2, tmp_path / "logs", FSDP)
    ddp, fsdp = tmp_path / "ddp", tmp_path / "fsdp"
    manifest = json.loads((fsdp / "manifest.json").read_text())
    assert manifest["sharding"] == "fsdp2" and manifest["world_size"] == 2
    assert json.loads((ddp / "manifest.json").read_text())["sharding"] is None
    assert manifest["gradient_checkpointing"] is False and manifest["mixed_precision"] == "no"
    for run_dir in (ddp, fsdp):
        assert [r["step"] for r in read_metrics(run_dir / "metrics.jsonl")
                if r["kind"] == "probe"] == [0, 2, 4]

    # step 0: the same weights, so the same numbers
    (p_ddp, c_ddp), (p_fsdp, c_fsdp) = records(ddp, 0), records(fsdp, 0)
    assert rel(p_ddp.per_sample, p_fsdp.per_sample) <= 1e-6
    assert max_abs(c_ddp, c_fsdp) == 0.0
    # later: the two runs' weights differ only by reduction order (all-reduce against
    # reduce-scatter); measured 2.5e-7 (per-sample scores, relative) and 1e-9 (change)
    for step in (2, 4):
        (p_ddp, c_ddp), (p_fsdp, c_fsdp) = records(ddp, step), records(fsdp, step)
        assert rel(p_ddp.per_sample, p_fsdp.per_sample) <= 1e-5
        assert max_abs(c_ddp, c_fsdp) <= 1e-6
        assert float(c_ddp["attn"].max()) > 1e-3  # the weights did move

    # the sharded records are exactly those of the weights the run ended with, computed in one
    # process on the gathered model (final/): scoring padded on one rank, norms per shard
    pattern, change = records(fsdp, 4)
    final = load_model(str(fsdp / "final"))
    config = load_config(str(fsdp / "config.yaml"))
    probe = build_probes(config, final.tokenizer, load_task_of(config))[0]
    out = score_encoded(final.model, probe.encoded, final.n_layers, final.n_heads,
                        pad_id(final.tokenizer), batch_size=8, progress=False)
    assert rel(out["per_sample"], pattern.per_sample) <= 1e-5
    weights = resolve(final.model)
    expected = relative_change(weights, StartWeights.from_folder(model_dir, weights))
    assert max_abs(expected, change) <= 1e-6
    assert float(change["attn"].min()) > 0  # every head moves (LoRA: in q and v)


def load_task_of(config):
    return load_task(_task_spec(config, config.task, config.rows, config.offset))


@pytest.mark.parametrize("sharding", ["ddp", "fsdp"])
def test_head_selective_training_keeps_every_other_weight(model_dir, tmp_path, sharding):
    """Head adapter under DDP and FSDP2: every weight entry outside the selected heads'
    rows and columns is bit-identical to the start in the saved model (under FSDP gathered
    from both processes' shards), the selected ones moved, and the recorded change of every
    other head is exactly 0 (under FSDP summed over both processes' rows)."""
    heads = [(0, 1), (1, 2)]
    out = tmp_path / sharding
    run(TRAIN + ["--model", str(model_dir), "--mode", "heads", "--heads", "0.1,1.2",
                 "--learning_rate", "1e-2", "--output_dir", str(out)],
        2, tmp_path / "logs", FSDP if sharding == "fsdp" else {})
    start = load_model(str(model_dir)).model
    selection = HeadSelection(start, heads).apply()  # which entries the heads own
    names = {id(p): n for n, p in start.named_parameters()}
    owned = {names[id(p)]: mask for p, mask in selection.masks.items()}
    trained = load_file(str(out / "final" / "model.safetensors"))
    before = {n: p.detach() for n, p in start.named_parameters()}
    moved = 0
    for name, weight in trained.items():
        mask = owned.get(name, torch.zeros_like(weight, dtype=torch.bool))
        assert torch.equal(weight[~mask], before[name][~mask]), name
        moved += int((weight[mask] != before[name][mask]).sum())
    assert moved > 0.9 * sum(int(m.sum()) for m in owned.values())
    _, change = records(out, 4)
    selected = torch.zeros_like(change["q"], dtype=torch.bool)
    for layer, head in heads:
        selected[layer, head] = True
    assert float(change["q"][~selected].abs().max()) == 0.0
    assert float(change["o"][~selected].abs().max()) == 0.0
    assert float(change["q"][selected].min()) > 0
