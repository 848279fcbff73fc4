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
from headway.training.config import TrainConfig
from headway.training.heads import HeadSelection
from headway.training.records import read_metrics
from headway.training.trainer import _task_spec, build_probes
from headway.training.weight_change import StartWeights, relative_change

FSDP = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2",
        "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP"}
# 20 probe rows in batches of 8: 3 batches, so the second process pads one
TRAIN = ["train", "--task", "arithmetic", "--rows", "16", "--probe_rows", "20",
         "--max_steps", "4", "--track_every", "2", "--track_schedule", "every", "--per_device_train_batch_size", "2",
         "--disable_tqdm", "true"]


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
    config = TrainConfig.from_yaml(fsdp / "config.yaml")
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


def test_bf16_mixed_precision_probes_compute_in_bf16_alike_under_ddp_and_fsdp2(model_dir,
                                                                              tmp_path):
    """bf16 mixed precision (autocast under DDP; FSDP2's bf16 parameter policy): the probe
    records say bfloat16 reached the output projections, and DDP's and FSDP2's records of the
    same run agree to bfloat16's resolution."""
    from scipy.stats import spearmanr

    args = TRAIN + ["--model", str(model_dir), "--bf16", "true"]
    run(args + ["--output_dir", str(tmp_path / "ddp")], 2, tmp_path / "logs")
    run(args + ["--output_dir", str(tmp_path / "fsdp")], 2, tmp_path / "logs", FSDP)
    for step in (0, 4):
        (p_ddp, _), (p_fsdp, _) = records(tmp_path / "ddp", step), records(tmp_path / "fsdp",
                                                                          step)
        assert p_ddp.meta["compute_dtype"] == p_fsdp.meta["compute_dtype"] == "bfloat16"
        assert rel(p_ddp.scores, p_fsdp.scores) <= 0.05, step
        assert spearmanr(p_ddp.scores.flatten(), p_fsdp.scores.flatten())[0] >= 0.95


def hub_cache(root, repo: str, folder) -> str:
    """``folder``'s files as a hub model ``repo`` in a Hugging Face cache at ``root`` (the
    layout huggingface_hub writes: blobs, a snapshot of links, refs/main)."""
    import hashlib
    import shutil

    commit = hashlib.sha1(repo.encode()).hexdigest()
    base = root / f"models--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (base / "blobs").mkdir()
    for file in folder.iterdir():
        blob = base / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        shutil.copy(file, blob)
        (snapshot / file.name).symlink_to(blob)
    (base / "refs").mkdir()
    (base / "refs" / "main").write_text(commit)
    return repo


def test_fsdp2_tracker_reads_w0_from_the_hub_cache_without_a_copy(tmp_path):
    """A hub model (from a local Hugging Face cache, offline) trained under FSDP2 on two
    processes: each process's W_0 is read memory-mapped from the cached files, after
    sharding; its anonymous memory grows by less than 10 % of the weights. A random twin,
    which no file holds, is copied: the control shows what a copy costs."""
    import transformers as tf
    from conftest import make_byte_tokenizer

    config = tf.LlamaConfig(vocab_size=300, hidden_size=512, intermediate_size=1536,
                            num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                            bos_token_id=1, eos_token_id=2, pad_token_id=0)
    folder = tmp_path / "model"
    model = tf.AutoModelForCausalLM.from_config(config)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    model.save_pretrained(folder)
    make_byte_tokenizer(add_bos=True).save_pretrained(folder)
    repo = hub_cache(tmp_path / "hub", "headway-test/tiny-llama", folder)
    env = {**FSDP, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "HEADWAY_FAULT": "rss-start:0"}
    args = ["train", "--task", "arithmetic", "--rows", "4", "--probe_rows", "4",
            "--max_steps", "1", "--per_device_train_batch_size", "2", "--disable_tqdm", "true",
            "--save_final", "false"]
    grown = {}
    for name, model_name in (("hub", repo), ("twin", f"random:{repo}")):
        env["HEADWAY_RSS_FILE"] = str(tmp_path / f"rss-{name}")
        run(args + ["--model", model_name, "--output_dir", str(tmp_path / name)], 2,
            tmp_path / "logs", env)
        probes = [json.loads((tmp_path / f"rss-{name}.{rank}").read_text()) for rank in (0, 1)]
        grown[name] = [1024 * (p["after_kb"] - p["before_kb"]) for p in probes]
        manifest = json.loads((tmp_path / name / "manifest.json").read_text())
        if name == "hub":
            assert all(p["source"].startswith(str(tmp_path / "hub")) for p in probes)
            assert all(p["held_bytes"] == 0 for p in probes)
            assert manifest["start_weights"]["source"] == "files"
        else:  # the control: each process copies the rows it holds, about half the weights
            assert all(0.4 * weights < p["held_bytes"] < 0.6 * weights for p in probes)
            assert manifest["start_weights"]["source"] == "copy"
    assert max(grown["hub"]) < 0.10 * weights, (grown, weights)
