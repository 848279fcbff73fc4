"""Tracked SFT on a tiny model: records, resume, head-selective exactness, LoRA, config errors."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_model

from headway.cli import main
from headway.patterns import ActivationPattern
from headway.training import callback
from headway.training import records as tracking
from headway.training.config import ConfigError, load_config
from headway.training.trainer import run_train


@pytest.fixture
def model_dir(llama_dir):
    return llama_dir


def config(model_dir, out, **kw):
    base = dict(model=str(model_dir), task="arithmetic", rows=24, probe_rows=6, max_steps=6,
                per_device_train_batch_size=4, track_every=2, learning_rate=1e-2,
                track_schedule="every",
                logging_steps=2, output_dir=str(out), progress=False, save_final=False)
    return load_config(None, **{**base, **kw})


def probe_steps(run):
    return [r["step"] for r in tracking.read_metrics(run / "metrics.jsonl") if r["kind"] == "probe"]


def test_tracked_run_records_requested_steps(model_dir, tmp_path):
    run = tmp_path / "run"
    manifest = run_train(config(model_dir, run, probes=["arithmetic", "sorting"]))
    assert manifest["status"] == "finished" and manifest["global_step"] == 6
    assert probe_steps(run) == [0, 2, 4, 6]
    for step in (0, 2, 4, 6):
        for probe in ("arithmetic", "sorting"):
            p = ActivationPattern.load(run / "patterns" / f"step_{step:06d}" / probe)
            assert p.scores.shape == (2, 4) and p.meta["step"] == step
    from safetensors.torch import load_file
    start = load_file(run / "param_change" / "step_000000.safetensors")
    end = load_file(run / "param_change" / "step_000006.safetensors")
    assert float(start["attn"].abs().max()) == 0.0
    assert float(end["attn"].min()) > 0 and end["q"].shape == (2, 4) and end["mlp"].shape == (2,)
    records = tracking.read_metrics(run / "metrics.jsonl")
    assert any(r["kind"] == "train" and "loss" in r for r in records)
    first = ActivationPattern.load(run / "patterns" / "step_000000" / "arithmetic")
    last = ActivationPattern.load(run / "patterns" / "step_000006" / "arithmetic")
    assert not torch.equal(first.scores, last.scores)  # training moved the pattern
    # probe rows are held out: they are the 6 rows after the 24 training rows
    from headway.data.tasks import load_task
    held_out = load_task("arithmetic", n=6, offset=24)
    assert first.meta["task"]["data_hash"] == held_out.data_hash
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["probes"][0]["data_hash"] == held_out.data_hash
    assert manifest["train_task"]["data_hash"] == load_task("arithmetic", n=24).data_hash


def test_resume_after_kill_continues_without_losing_records(model_dir, tmp_path, monkeypatch):
    """Killed at step 7 (checkpoint at 4, records at 0 2 4 6): the resumed run keeps 0-4,
    drops the abandoned 6, records 6 and 8 anew, and ends where an uninterrupted run ends."""
    run, straight = tmp_path / "run", tmp_path / "straight"
    real = callback.PatternCallback.on_step_end

    def killed_at_step_7(self, args, state, control, **kw):
        if state.global_step == 7:
            raise KeyboardInterrupt("killed")
        return real(self, args, state, control, **kw)

    monkeypatch.setattr(callback.PatternCallback, "on_step_end", killed_at_step_7)
    with pytest.raises(KeyboardInterrupt):
        run_train(config(model_dir, run, save_steps=4, max_steps=8))
    assert probe_steps(run) == [0, 2, 4, 6]
    monkeypatch.setattr(callback.PatternCallback, "on_step_end", real)

    manifest = run_train(config(model_dir, run, save_steps=4, max_steps=8))
    assert manifest["resumed_from"].endswith("checkpoint-4")
    assert manifest["global_step"] == 8
    assert probe_steps(run) == [0, 2, 4, 6, 8]  # each step once

    run_train(config(model_dir, straight, save_steps=4, max_steps=8))
    for step in (6, 8):
        resumed = ActivationPattern.load(run / "patterns" / f"step_{step:06d}" / "arithmetic")
        direct = ActivationPattern.load(straight / "patterns" / f"step_{step:06d}" / "arithmetic")
        torch.testing.assert_close(resumed.scores, direct.scores, rtol=1e-4, atol=1e-7)


def test_resume_with_other_settings_is_refused(model_dir, tmp_path):
    run = tmp_path / "run"
    run_train(config(model_dir, run, save_steps=2, max_steps=2))
    with pytest.raises(ConfigError, match="learning_rate"):
        run_train(config(model_dir, run, save_steps=2, max_steps=2, learning_rate=0.5))


def test_head_selective_leaves_everything_else_bit_identical(model_dir, tmp_path):
    from headway.models.loading import load_model

    run = tmp_path / "run"
    manifest = run_train(config(model_dir, run, mode="heads", heads=["0.1", "1.2"],
                                weight_decay=0.1, save_final=True))
    assert manifest["heads"] == ["0.1", "1.2"]
    before = dict(load_model(str(model_dir)).model.named_parameters())
    after = dict(load_model(str(run / "final")).model.named_parameters())
    # head_dim 8; 4 query heads share 2 key/value heads (groups of 2)
    selected = {  # parameter name -> (dim, slice) that may change
        "model.layers.0.self_attn.q_proj.weight": (0, slice(8, 16)),
        "model.layers.0.self_attn.k_proj.weight": (0, slice(0, 8)),  # kv head 0 = heads 0,1
        "model.layers.0.self_attn.v_proj.weight": (0, slice(0, 8)),
        "model.layers.0.self_attn.o_proj.weight": (1, slice(8, 16)),
        "model.layers.1.self_attn.q_proj.weight": (0, slice(16, 24)),
        "model.layers.1.self_attn.k_proj.weight": (0, slice(8, 16)),  # kv head 1 = heads 2,3
        "model.layers.1.self_attn.v_proj.weight": (0, slice(8, 16)),
        "model.layers.1.self_attn.o_proj.weight": (1, slice(16, 24)),
    }
    for name, w0 in before.items():
        w1 = after[name]
        if name not in selected:
            assert torch.equal(w0, w1), f"{name} changed"
            continue
        dim, part = selected[name]
        mask = torch.zeros_like(w0, dtype=torch.bool)
        mask.narrow(dim, part.start, part.stop - part.start).fill_(True)
        assert torch.equal(w0[~mask], w1[~mask]), f"{name}: unselected entries changed"
        assert not torch.equal(w0[mask], w1[mask]), f"{name}: selected entries did not change"
    assert manifest["n_trainable_parameters"] == 2 * (8 * 32 * 3 + 32 * 8)


def test_lora_run_trains_adapters_only(model_dir, tmp_path):
    run = tmp_path / "run"
    manifest = run_train(config(model_dir, run, mode="lora", lora_r=2, max_steps=4,
                                track_every=0))
    assert 0 < manifest["n_trainable_parameters"] < manifest["n_parameters"] / 5
    assert probe_steps(run) == [0, 4]
    from safetensors.torch import load_file
    change = load_file(run / "param_change" / "step_000004.safetensors")
    assert float(change["q"].min()) > 0 and float(change["mlp"].max()) == 0.0


def test_train_cli_yaml_and_overrides(model_dir, tmp_path, capsys):
    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text(f"model: {model_dir}\ntask: arithmetic\nrows: 8\nprobe_rows: 4\n"
                         f"max_steps: 3\ntrack_every: 0\nper_device_train_batch_size: 4\n")
    out = tmp_path / "cli-run"
    assert main(["train", "--config", str(yaml_file), "--max_steps", "2", "--output_dir",
                 str(out), "--progress", "false", "--save_final", "false"]) == 0
    assert "trained 2 steps" in capsys.readouterr().out
    assert "max_steps: 2" in (out / "config.yaml").read_text()

    yaml_file.write_text("max_step: 3\n")
    assert main(["train", "--config", str(yaml_file)]) == 2
    err = capsys.readouterr().err
    assert "run.yaml" in err and "'max_step'" in err


def test_relative_change_per_head_with_grouped_query_attention():
    """Perturb key/value head 1 of layer 0 only: the change shows on query heads 2 and 3
    (its group), in k alone, nowhere else."""
    from headway.models.architectures import resolve
    from headway.training.weight_change import relative_change, snapshot

    model = tiny_model("llama")
    weights = resolve(model)
    initial = snapshot(weights)
    with torch.no_grad():
        model.model.layers[0].self_attn.k_proj.weight[8:16] *= 1.5
    change = relative_change(weights, initial)
    expected = torch.zeros(2, 4)
    expected[0, 2:] = 0.5
    torch.testing.assert_close(change["k"], expected)
    for role in ("q", "v", "o"):
        assert float(change[role].abs().max()) == 0.0
    assert float(change["mlp"].abs().max()) == 0.0
    assert float(change["attn"][0, 2]) > 0 and float(change["attn"][0, 0]) == 0.0


def test_config_values_are_typed_and_bad_ones_named(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("learning_rate: 5e-5\nrows: '8'\nheads: '1.2'\nmode: heads\n")
    c = load_config(good)
    assert c.learning_rate == 5e-5 and c.rows == 8 and c.heads == ["1.2"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("rows: many\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: field 'rows': expected int, got 'many'"):
        load_config(bad)
    bad.write_text("mode: heads\nheads: [3.10]\n")  # would silently become head 3.1
    with pytest.raises(ConfigError, match="field 'heads'.*write it in quotes"):
        load_config(bad)


def test_config_errors():
    with pytest.raises(ConfigError, match="mode 'heads' needs"):
        load_config(None, mode="heads")
    with pytest.raises(ConfigError, match="need mode 'heads'"):
        load_config(None, heads=["1.1"])
    with pytest.raises(ConfigError, match="mode 'sparse' is not one of"):
        load_config(None, mode="sparse")


def test_tensorboard_logging_when_asked(model_dir, tmp_path):
    run = tmp_path / "run"
    run_train(config(model_dir, run, max_steps=2, track_every=0, tensorboard=True))
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))


def test_bf16_mixed_precision_keeps_updates_that_pure_bf16_rounds_away(model_dir, tmp_path):
    """One AdamW step of 2e-5: with float32 master weights (bf16 autocast) nearly every entry
    moves; with pure bfloat16 weights most steps are below bfloat16's resolution."""
    from headway.models.loading import load_model

    start = load_model(str(model_dir)).model.model.layers[0].self_attn.q_proj.weight

    def moved(**precision) -> float:
        run = tmp_path / "-".join(f"{k}={v}" for k, v in precision.items())
        run_train(config(model_dir, run, max_steps=1, learning_rate=2e-5, tracking=False,
                         save_final=True, **precision))
        dtype = precision["dtype"]
        after = load_model(str(run / "final"), dtype=dtype).model.model.layers[0] \
            .self_attn.q_proj.weight
        return float((after != start.to(after.dtype)).float().mean())

    mixed = moved(dtype="float32", mixed_precision="bf16")
    pure = moved(dtype="bfloat16", mixed_precision="no")
    assert mixed > 0.95 and pure < 0.5, (mixed, pure)


def test_precision_combinations_that_cannot_train_are_refused_before_loading():
    with pytest.raises(ConfigError, match="float16 weights cannot be trained"):
        load_config(None, dtype="float16")
    with pytest.raises(ConfigError, match="mixed_precision 'fp8'"):
        load_config(None, mixed_precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16 needs a GPU"):
            load_config(None, mixed_precision="fp16")


def test_log_schedule_records_densely_early(model_dir, tmp_path):
    from headway.training.callback import log_schedule

    assert log_schedule(300, 25) == [0, 1, 2, 3, 4, 7, 11, 17, 28, 45, 72, 116, 187, 300]
    run = tmp_path / "run"
    run_train(config(model_dir, run, max_steps=8, track_every=2, track_schedule="log"))
    assert probe_steps(run) == log_schedule(8, 2) == [0, 1, 2, 3, 5, 8]


def test_head_adapter_reproduces_masked_training_with_state_for_its_entries_only(model_dir,
                                                                                 tmp_path):
    """Same run (seed, float32, weight decay 0) through the masked weights and through the
    adapter: the same trained weights to 1e-5; the adapter saved alone loads onto its base."""
    from headway.models.loading import load_model

    runs = {}
    for how in ("mask", "adapter"):
        run = tmp_path / how
        manifest = run_train(config(model_dir, run, mode="heads", heads=["0.1", "1.2"],
                                    head_training=how, weight_decay=0.0, tracking=False,
                                    save_final=True))
        runs[how] = dict(load_model(str(run / "final")).model.named_parameters())
        assert manifest["n_trainable_parameters"] == 2 * (8 * 32 * 3 + 32 * 8)
    for name, w in runs["mask"].items():
        torch.testing.assert_close(runs["adapter"][name], w, rtol=1e-5, atol=1e-7)

    alone = tmp_path / "alone"
    run_train(config(model_dir, alone, mode="heads", heads=["0.1", "1.2"], weight_decay=0.0,
                     tracking=False, save_final=True, save_merged=False))
    files = sorted(p.name for p in (alone / "final").iterdir())
    assert "head_adapter.safetensors" in files and "model.safetensors" not in files
    loaded = dict(load_model(str(alone / "final")).model.named_parameters())
    for name, w in runs["adapter"].items():
        torch.testing.assert_close(loaded[name], w, rtol=0, atol=0)


def test_head_adapter_optimizer_holds_state_for_the_selected_entries_only(model_dir):
    from headway.models.loading import load_model
    from headway.training.head_adapter import add_head_adapter
    from headway.training.heads import HeadSelection

    adapter = load_model(str(model_dir)).model
    n = add_head_adapter(adapter, [(0, 1), (1, 2)])
    trainable = [p for p in adapter.parameters() if p.requires_grad]
    assert sum(p.numel() for p in trainable) == n == 2048
    masked = load_model(str(model_dir)).model
    HeadSelection(masked, [(0, 1), (1, 2)]).apply()
    # the masked version's optimizer state covers whole q/k/v/o matrices of both layers
    assert sum(p.numel() for p in masked.parameters() if p.requires_grad) == 2 * (
        32 * 32 + 2 * 16 * 32 + 32 * 32)


def test_unproven_sharding_is_refused_with_its_message(monkeypatch):
    """FSDP1, DeepSpeed, and mask head training under FSDP are refused before anything loads;
    FSDP2 is accepted (proven in test_fsdp.py)."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ConfigError, match="FSDP version 1 .* FSDP2 only"):
        load_config(None)
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert load_config(None).mode == "full"
    with pytest.raises(ConfigError, match="head_training mask does not work under FSDP"):
        load_config(None, mode="heads", heads="0.1", head_training="mask")
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DeepSpeed"):
        load_config(None)
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    with pytest.raises(ConfigError, match="quantization needs mode lora"):
        load_config(None, quantization="4bit")


def test_checkpoints_of_head_adapter_training_load_as_the_trained_model(model_dir, tmp_path):
    """A Trainer checkpoint of adapter training holds base + delta + index: it loads merged
    (as final/ does), never with weights filled at random."""
    from headway.models.loading import load_model

    run = tmp_path / "run"
    run_train(config(model_dir, run, mode="heads", heads=["0.1"], max_steps=2, save_steps=2,
                     tracking=False, save_final=True))
    from_checkpoint = dict(load_model(str(run / "checkpoints" / "checkpoint-2")).model
                           .named_parameters())
    final = dict(load_model(str(run / "final")).model.named_parameters())
    for name, w in final.items():
        torch.testing.assert_close(from_checkpoint[name], w, rtol=0, atol=0)


def test_a_finished_run_with_checkpoints_is_not_trained_again(model_dir, tmp_path, capsys):
    run = tmp_path / "run"
    run_train(config(model_dir, run, max_steps=2, save_steps=2, save_final=True))
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    run_train(config(model_dir, run, max_steps=2, save_steps=2, save_final=True))
    assert "nothing to do" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files


def test_two_probes_of_one_name_are_refused(model_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for folder in (a, b):
        folder.mkdir()
        (folder / "data.jsonl").write_text('{"question": "1+1?", "answer": "2"}\n' * 8)
    with pytest.raises(ConfigError, match="two probes are named .data."):
        run_train(config(model_dir, tmp_path / "run", probes=[str(a / "data.jsonl"),
                                                              str(b / "data.jsonl")],
                         probe_rows=4))
