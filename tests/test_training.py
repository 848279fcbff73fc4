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
from headway.training.config import (
    ConfigError,
    TrainConfig,
    json_safe,
    parse_train_config,
)
from headway.training.trainer import run_train


@pytest.fixture
def model_dir(llama_dir):
    return llama_dir


def config(model_dir, out, **kw):
    base = dict(model=str(model_dir), task="arithmetic", rows=24, probe_rows=6, max_steps=6,
                per_device_train_batch_size=4, track_every=2, learning_rate=1e-2,
                track_schedule="every",
                logging_steps=2, output_dir=str(out), disable_tqdm=True, save_final=False,
                save_strategy="no")
    if "save_steps" in kw:
        base["save_strategy"] = "steps"
    return TrainConfig(**{**base, **kw})


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
                 str(out), "--disable_tqdm", "true", "--save_final", "false"]) == 0
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
    """YAML values go through each field's own flag conversion; a bad one is one line naming
    the file and the field."""
    good = tmp_path / "good.yaml"
    good.write_text("learning_rate: 5e-5\nrows: '8'\nheads: '1.2'\nmode: heads\n"
                    "report_to: [tensorboard]\nlr_scheduler_kwargs: {min_lr: 0.0}\n")
    c = parse_train_config(["--config", str(good)])
    assert c.learning_rate == 5e-5 and c.rows == 8 and c.heads == ["1.2"]
    assert c.report_to == ["tensorboard"] and c.lr_scheduler_kwargs == {"min_lr": 0.0}
    bad = tmp_path / "bad.yaml"
    cases = {
        "rows: many\n": r"bad.yaml: field 'rows': expected int, got 'many'",
        "max_steps: 2.5\n": r"bad.yaml: field 'max_steps': expected int, got 2.5",
        "tracking: maybe\n": r"bad.yaml: field 'tracking': expected true or false",
        "mode: heads\nheads: [3.10]\n": r"bad.yaml: field 'heads'.*write it in quotes",
        "learning_rat: 1.0e-4\n": r"bad.yaml: unknown field 'learning_rat'",
        "optim: adamw_fast\n": r"bad.yaml: field 'optim': 'adamw_fast' is not one of",
        "rows: [1, 2]\n": r"bad.yaml: field 'rows': expected a single value, got a list",
        "packing: true\n": r"bad.yaml: field 'packing': packing is True: headway trains one",
        "dataset_text_field: content\n": r"bad.yaml: field 'dataset_text_field'.*prompt_field",
        "mode: heads\n": r"bad.yaml: field 'mode': mode 'heads' needs",
        "learning_rate: -1.0\n": r"bad.yaml: field 'learning_rate': learning_rate is -1.0",
        "- rows\n": r"bad.yaml: .*YAML mapping",
        "rows: [\n": r"bad.yaml: not valid YAML",
    }
    for text, message in cases.items():
        bad.write_text(text)
        with pytest.raises(ConfigError, match=message) as err:
            parse_train_config(["--config", str(bad)])
        assert "\n" not in str(err.value), text
    bad.write_text("rows: 8\n")  # a flag's conflicting value names the flag, not the file
    with pytest.raises(ConfigError, match="^--packing: packing is True"):
        parse_train_config(["--config", str(bad), "--packing", "true"])
    with pytest.raises(ConfigError, match="no such configuration file"):
        parse_train_config(["--config", str(tmp_path / "missing.yaml")])


def test_config_errors():
    with pytest.raises(ConfigError, match="mode 'heads' needs"):
        TrainConfig(mode="heads")
    with pytest.raises(ConfigError, match="need mode 'heads'"):
        TrainConfig(heads=["1.1"])
    with pytest.raises(ConfigError, match="mode 'sparse' is not one of"):
        TrainConfig(mode="sparse")
    with pytest.raises(ConfigError, match="resumes from output_dir/checkpoints by itself"):
        TrainConfig(resume_from_checkpoint="somewhere")


def test_train_help_lists_every_sftconfig_field(capsys):
    import dataclasses

    from trl import SFTConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for f in dataclasses.fields(SFTConfig):
        if f.init:
            assert f"--{f.name}" in text, f.name
    assert text.index("--task ") < text.index("--learning_rate")  # headway's fields first


def test_trl_options_and_tensorboard_through_the_cli(model_dir, tmp_path):
    """Any SFTConfig option works; report_to tensorboard gets the Trainer's logs and
    headway's records (headway/<probe>/...), in RUN/tensorboard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert main(["train", "--model", str(model_dir), "--task", "arithmetic", "--rows", "8",
                 "--probe_rows", "4", "--max_steps", "4", "--per_device_train_batch_size", "4",
                 "--track_every", "2", "--track_schedule", "every", "--optim", "adafactor",
                 "--lr_scheduler_type", "cosine", "--warmup_ratio", "0.1", "--report_to",
                 "tensorboard", "--logging_steps", "1", "--output_dir", str(run),
                 "--disable_tqdm", "true", "--save_final", "false"]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["optim"] == "adafactor" and manifest["report_to"] == ["tensorboard"]
    events = EventAccumulator(str(next((run / "tensorboard").rglob("events.out.tfevents.*"))))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/learning_rate"} <= tags, tags
    for name in ("loss", "gini", "delta_norm"):  # the Trainer puts train/ before its logs
        assert f"train/headway/arithmetic/{name}" in tags, tags
    steps = [e.step for e in events.Scalars("train/headway/arithmetic/gini")]
    assert steps == [2, 4], steps
    rates = [e.value for e in events.Scalars("train/learning_rate")]
    assert rates[0] < max(rates) and rates[-1] < max(rates)  # warm-up, then cosine decay
    config = (run / "config.yaml").read_text()
    assert "optim: adafactor" in config and "lr_scheduler_type: cosine" in config
    assert "hub_token" not in config


def test_completion_only_loss_false_trains_on_the_prompt_too(model_dir, tmp_path):
    from headway.data.encoding import encode_examples
    from headway.data.tasks import load_task
    from headway.models.loading import load_model
    from headway.training.trainer import as_dataset

    lm = load_model(str(model_dir))
    encoded, _ = encode_examples(load_task("arithmetic", n=2).examples, lm.tokenizer, "qa",
                                 256, "truncate", "arithmetic")
    prompt_only = as_dataset(encoded, TrainConfig())
    every_token = as_dataset(encoded, TrainConfig(completion_only_loss=False))
    assert -100 in prompt_only[0]["labels"]
    assert every_token[0]["labels"] == every_token[0]["input_ids"]


def test_eval_strategy_evaluates_on_the_held_out_rows(model_dir, tmp_path):
    run = tmp_path / "run"
    run_train(config(model_dir, run, max_steps=2, track_every=0, eval_strategy="steps",
                     eval_steps=1))
    records = json.loads((run / "manifest.json").read_text())
    assert records["status"] == "finished"
    evals = [r for r in tracking.read_metrics(run / "metrics.jsonl") if "eval_loss" in r]
    assert [r["step"] for r in evals] == [1, 2], evals


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

    mixed = moved(dtype="float32", bf16=True)
    pure = moved(dtype="bfloat16", bf16=False)
    assert mixed > 0.95 and pure < 0.5, (mixed, pure)


def test_precision_combinations_that_cannot_train_are_refused_before_loading():
    with pytest.raises(ConfigError, match="float16 weights cannot be trained"):
        TrainConfig(dtype="float16")
    with pytest.raises(ConfigError, match="dtype 'fp8' is not"):
        TrainConfig(dtype="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="fp16 needs a GPU"):
            TrainConfig(fp16=True)


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
        TrainConfig()
    monkeypatch.setenv("FSDP_VERSION", "2")
    assert TrainConfig().mode == "full"
    with pytest.raises(ConfigError, match="head_training mask does not work under FSDP"):
        TrainConfig(mode="heads", heads="0.1", head_training="mask")
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DeepSpeed"):
        TrainConfig()
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    with pytest.raises(ConfigError, match="quantization needs mode lora"):
        TrainConfig(quantization="4bit")


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


def test_a_run_folder_of_the_previous_version_resumes(model_dir, tmp_path, monkeypatch):
    """tests/data/legacy_run holds the files headway wrote (before TrainConfig was TRL's
    SFTConfig) for a run killed at step 3 with checkpoint-2: its config.yaml (mixed_precision,
    data_seed, progress, tensorboard, save_steps ...), identity.json, the checkpoint's marker,
    manifest and records. With the Trainer's own checkpoint files beside them, `headway train
    --config RUN/config.yaml` resumes from checkpoint-2 and ends as a run never stopped."""
    import shutil
    from pathlib import Path

    from headway.training.run_dir import MARKER

    legacy = Path(__file__).parent / "data" / "legacy_run"
    run, straight = tmp_path / "run", tmp_path / "straight"
    fill = {"@MODEL@": str(model_dir), "@RUN@": str(run)}

    def legacy_file(name: str, to: Path) -> None:
        text = (legacy / name).read_text()
        for key, value in fill.items():
            text = text.replace(key, value)
        to.write_text(text)

    real = callback.PatternCallback.on_step_end

    def killed_at_step_3(self, args, state, control, **kw):
        if state.global_step == 3:
            raise KeyboardInterrupt("killed")
        return real(self, args, state, control, **kw)

    monkeypatch.setattr(callback.PatternCallback, "on_step_end", killed_at_step_3)
    settings = dict(rows=16, probe_rows=4, max_steps=4, track_every=2, save_steps=2,
                    logging_steps=1)
    with pytest.raises(KeyboardInterrupt):  # the Trainer's checkpoint files
        run_train(config(model_dir, run, **settings))
    monkeypatch.setattr(callback.PatternCallback, "on_step_end", real)
    for name in ("config.yaml", "identity.json", "manifest.json", "metrics.jsonl"):
        legacy_file(name, run / name)
    legacy_file("headway_run.json", run / "checkpoints" / "checkpoint-2" / MARKER)

    assert main(["train", "--config", str(run / "config.yaml")]) == 0
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["resumed_from"].endswith("checkpoint-2") and manifest["global_step"] == 4
    assert probe_steps(run) == [0, 2, 4]
    run_train(config(model_dir, straight, **settings))
    for step in (2, 4):
        resumed = ActivationPattern.load(run / "patterns" / f"step_{step:06d}" / "arithmetic")
        direct = ActivationPattern.load(straight / "patterns" / f"step_{step:06d}" /
                                        "arithmetic")
        torch.testing.assert_close(resumed.scores, direct.scores, rtol=1e-4, atol=1e-7)
    # the old file, read as this version reads it
    legacy_file("config.yaml", tmp_path / "old.yaml")
    old = TrainConfig.from_yaml(tmp_path / "old.yaml")
    assert (old.task_seed, old.bf16, old.disable_tqdm, old.report_to) == (0, False, True, [])
    assert json_safe(old.save_strategy) == "steps" and old.save_steps == 2
    shutil.rmtree(straight)


def test_probe_batch_size_and_layer_checkpointing_keep_the_records(model_dir, tmp_path):
    """Smaller probe batches with layer checkpointing (for big models) record the same
    patterns; both settings may change when a run resumes."""
    from headway.training.run_dir import changed_fields, identity

    plain, lean = tmp_path / "plain", tmp_path / "lean"
    run_train(config(model_dir, plain, max_steps=2, track_every=0))
    run_train(config(model_dir, lean, max_steps=2, track_every=0, probe_batch_size=2,
                     probe_checkpoint_layers=True))
    for step in (0, 2):
        a = ActivationPattern.load(plain / "patterns" / f"step_{step:06d}" / "arithmetic")
        b = ActivationPattern.load(lean / "patterns" / f"step_{step:06d}" / "arithmetic")
        torch.testing.assert_close(a.per_sample, b.per_sample, rtol=1e-5, atol=1e-7)
    before = identity(config(model_dir, plain))
    assert not changed_fields(before, identity(config(model_dir, plain, probe_batch_size=2,
                                                      probe_checkpoint_layers=True)))


def test_only_scheduled_checkpoints_are_written(model_dir, tmp_path):
    """save_steps 3 of 4 steps: checkpoint-3, and no extra checkpoint at the last step (the
    end is final/ and the records)."""
    run = tmp_path / "run"
    run_train(config(model_dir, run, max_steps=4, save_steps=3, track_every=0,
                     save_final=True))
    assert sorted(p.name for p in (run / "checkpoints").glob("checkpoint-*")) == \
        ["checkpoint-3"]
    assert (run / "final").is_dir()
