"""Scoring within a memory bound, exactly: layer checkpointing, the LM head in chunks (no
[M, vocab] float32 block), batches halved on an out-of-memory error; the compute dtype
(autocast) decides float16 loss scaling; head adapters keep float32 deltas on a bfloat16
base."""

from __future__ import annotations

import pytest
import torch
from conftest import make_byte_tokenizer
from test_families import encoded_rows, rel_diff
from tiny_models import TINY_CONFIGS, tiny_model
from torch.utils._python_dispatch import TorchDispatchMode

from headway.data.batching import collate
from headway.errors import HeadwayError
from headway.scoring import head_scores
from headway.scoring import score as scoring
from headway.scoring.score import score_encoded


@pytest.mark.parametrize("family", ["llama", "gpt2", "deepseek_v2", "gemma3", "mixtral"])
def test_layer_checkpointing_gives_the_same_scores(family):
    model = tiny_model(family)
    rows = encoded_rows(make_byte_tokenizer())
    plain = score_encoded(model, rows, 2, 4, 0, progress=False)
    again = score_encoded(model, rows, 2, 4, 0, progress=False, checkpoint_layers=True)
    assert torch.equal(again["per_sample"], plain["per_sample"])
    assert torch.equal(again["loss"], plain["loss"])


def test_layer_checkpointing_holds_fewer_activations():
    """8 layers: the peak of tensors alive during a scored batch drops with checkpointing."""
    import transformers as tf

    from headway.scoring.head_scores import gate_scores
    from headway.scoring.memory import PeakMemory, checkpointed_layers

    config = tf.LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=256,
                            num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    batch = collate(encoded_rows(make_byte_tokenizer()) * 4, pad_id=0)

    def peak(enabled: bool) -> int:
        with checkpointed_layers(model, enabled), PeakMemory() as probe:
            gate_scores(model, batch, 4, "sample")
        return probe.peak

    assert peak(True) < 0.6 * peak(False)


class Allocations(TorchDispatchMode):
    """Every tensor an operation returns: its shape and dtype."""

    def __init__(self):
        super().__init__()
        self.seen: list[tuple[tuple, torch.dtype]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(t, torch.Tensor):
                self.seen.append((tuple(t.shape), t.dtype))
        return out


def test_the_lm_head_runs_in_chunks_without_an_m_by_vocab_float32_block(monkeypatch):
    """With a chunk of 8 response positions, no float32 tensor of M x vocab (or larger than
    two chunks' logits) is ever made, and the scores equal one pass."""
    from headway.scoring import loss as loss_module

    model = tiny_model("llama")
    batch = collate(encoded_rows(make_byte_tokenizer()), pad_id=0)
    M = int((batch["labels"][:, 1:] != -100).sum())
    vocab = model.config.vocab_size
    one, loss_one, _ = head_scores.gate_scores(model, batch, 4, "sample")
    monkeypatch.setattr(loss_module, "chunk_tokens", lambda vocab, budget=0: 8)
    with Allocations() as probe:
        chunked, loss_chunked, _ = head_scores.gate_scores(model, batch, 4, "sample")
    assert M > 16, "the rows have more response positions than two chunks"
    big = [shape for shape, dtype in probe.seen if dtype == torch.float32 and shape
           and shape[-1] == vocab and torch.Size(shape[:-1]).numel() >= M]
    assert not big, f"float32 blocks of {big} for M = {M}, vocab {vocab}"
    assert any(shape == (8, vocab) for shape, dtype in probe.seen if dtype == torch.float32)
    assert rel_diff(chunked, one) <= 1e-5
    torch.testing.assert_close(loss_chunked, loss_one, rtol=1e-6, atol=1e-6)


def test_an_out_of_memory_batch_is_halved_with_the_same_scores(monkeypatch, capsys):
    """A forced out-of-memory error on every batch of more than 2 rows: the batches are
    halved until they fit, a warning says so once per halving, and the scores are those of
    an unforced run."""
    model = tiny_model("qwen2")
    rows = encoded_rows(make_byte_tokenizer())
    expected = score_encoded(model, rows, 2, 4, 0, batch_size=6, progress=False)
    real = scoring.gate_scores
    sizes = []

    def limited(model, batch, *args, **kwargs):
        sizes.append(batch["input_ids"].shape[0])
        if batch["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (forced by the test)")
        return real(model, batch, *args, **kwargs)

    monkeypatch.setattr(scoring, "gate_scores", limited)
    got = score_encoded(model, rows, 2, 4, 0, batch_size=6, progress=False)
    assert sizes == [6, 3, 2, 2, 2]  # halved twice, then every batch at the size that fits
    assert rel_diff(got["per_sample"], expected["per_sample"]) <= 1e-5  # other padding only
    err = capsys.readouterr().err
    assert "out of memory on a batch of 6 rows; continuing with batches of 3" in err
    assert "out of memory on a batch of 3 rows; continuing with batches of 2" in err
    with pytest.raises(HeadwayError, match="paper convention") as err:
        score_encoded(model, rows, 2, 4, 0, convention="paper", progress=False)
    assert "--batch-size" in err.value.hint


def test_float16_scaling_follows_what_computes_not_the_stored_weights(monkeypatch):
    """float32 weights under float16 autocast: float16 reaches the output projections, so
    the loss is scaled (2^16) and the scores are close to float32's."""
    model = tiny_model("llama")
    batch = collate(encoded_rows(make_byte_tokenizer()), pad_id=0)
    scales = []
    real = head_scores.objective
    monkeypatch.setattr(head_scores, "objective",
                        lambda *a: scales.append(None) or real(*a))
    reference, _, _ = head_scores.gate_scores(model, batch, 4, "sample")
    dtypes = []
    with torch.autocast("cpu", dtype=torch.float16):
        from headway.scoring.hooks import on_head_slices

        with on_head_slices(model, lambda layer, x: dtypes.append(x.dtype)):
            half, _, _ = head_scores.gate_scores(model, batch, 4, "sample")
    assert set(dtypes) == {torch.float16}
    assert bool((half != 0).all()), "no score underflowed to 0"
    assert rel_diff(half, reference) < 0.05
    spy = {}
    real_grad = torch.autograd.grad

    def grad(outputs, inputs, *a, **kw):
        spy.setdefault("loss", float(outputs))
        return real_grad(outputs, inputs, *a, **kw)

    monkeypatch.setattr(head_scores.torch.autograd, "grad", grad)
    with torch.autocast("cpu", dtype=torch.float16):
        head_scores.gate_scores(model, batch, 4, "sample")
    assert spy["loss"] > 1000, "the float16 pass ran on the scaled loss"


def test_head_adapter_deltas_stay_float32_on_a_bfloat16_base():
    from headway.scoring.loss import response_token_losses
    from headway.training.head_adapter import HeadDelta, add_head_adapter

    model = tiny_model("llama").to(torch.bfloat16).train()
    add_head_adapter(model, [(0, 1), (1, 3)])
    deltas = [m for m in model.modules() if isinstance(m, HeadDelta)]
    assert deltas and all(m.delta.dtype == torch.float32 for m in deltas)
    assert all(m.base_layer.weight.dtype == torch.bfloat16 for m in deltas)
    batch = collate(encoded_rows(make_byte_tokenizer()), pad_id=0)
    optimizer = torch.optim.AdamW([m.delta for m in deltas], lr=1e-3)
    loss_sum, n_tokens, _ = response_token_losses(model, batch)
    (loss_sum / n_tokens).sum().backward()
    optimizer.step()
    # a step of 1e-3 survives in float32; added to bfloat16 weights of about 0.02 it would
    # mostly round away
    assert all(float(m.delta.abs().max()) > 0 for m in deltas)
    merged = deltas[0].merged_weight(torch.float32) - deltas[0].base_layer.weight.float()
    assert float(merged.abs().max()) > 0


def test_device_map_with_several_processes_is_refused():
    from types import SimpleNamespace

    from headway.commands.common import load_model

    args = SimpleNamespace(device_map="auto", device=None, model="x")
    with pytest.raises(HeadwayError, match="does not combine with several processes"):
        load_model(args, state=SimpleNamespace(device="cpu"))


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS)[:1])
def test_scoring_records_the_compute_dtype(family, tmp_path):
    from headway.data.tasks import load_task
    from headway.models.loading import wrap_model
    from headway.scoring.score import score_task

    model = tiny_model(family)
    lm = wrap_model(model, make_byte_tokenizer())
    pattern = score_task(lm, load_task("arithmetic", n=2), progress=False)
    assert pattern.meta["compute_dtype"] == "float32"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        pattern = score_task(lm, load_task("arithmetic", n=2), progress=False)
    assert pattern.meta["compute_dtype"] == "bfloat16"


def test_estimate_from_a_config_alone_matches_the_measured_peak(tmp_path, capsys):
    """``headway estimate`` on a folder that holds only config.json: scoring's and
    training's predicted peaks are within 20 % of the peaks measured on the real model."""
    import json

    import transformers as tf

    from headway.cli import main
    from headway.estimate import _rows
    from headway.models.architectures import resolve
    from headway.scoring.head_scores import gate_scores
    from headway.scoring.memory import PeakMemory

    config = tf.LlamaConfig(vocab_size=2000, hidden_size=128, intermediate_size=344,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    folder = tmp_path / "config-only"
    config.save_pretrained(folder)
    assert main(["estimate", str(folder), "--batch-size", "4", "--length", "128", "--dtype",
                 "float32", "--json", "--device-memory", "1", "--no-progress"]) == 0
    rows = {r["workload"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert set(rows) >= {"scoring", "scoring, layer checkpointing", "train --mode full"}
    torch.manual_seed(0)
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    with PeakMemory() as probe:
        gate_scores(model, _rows(4, 128, 1000), resolve(model).n_heads, "sample")
    measured = weights + probe.peak
    assert 0.8 < rows["scoring"]["peak"] / measured < 1.2
    assert rows["scoring"]["max_batch"]["1 GB"] > 4
    assert rows["scoring, layer checkpointing"]["peak"] < rows["scoring"]["peak"]
    full = rows["train --mode full"]
    assert full["gradients"] == weights and full["optimizer"] == 2 * weights


def test_estimate_counts_the_probe_records_of_tracked_training():
    """A probe record scores probe_batch rows at once, between steps: with LoRA (little
    gradient memory to free) a large probe batch can hold more than the training step; fewer
    rows at once, or layer checkpointing, lower the predicted peak."""
    import transformers as tf

    from headway.estimate import estimate

    config = tf.LlamaConfig(vocab_size=2000, hidden_size=128, intermediate_size=344,
                            num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2)
    big = estimate(config, 2, 128, "float32", "train", "lora", probe_batch=16)
    small = estimate(config, 2, 128, "float32", "train", "lora", probe_batch=1)
    lean = estimate(config, 2, 128, "float32", "train", "lora", probe_batch=16,
                    probe_checkpoint_layers=True)
    assert big.activations > small.activations and big.activations > lean.activations
    # the 16-row probe record is the peak: it holds what scoring 16 rows holds
    assert big.activations >= estimate(config, 16, 128, "float32", "score").activations * 0.99
