"""The fast gate path against the eager reference, loss conventions, batching and resume."""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest
import torch
from tiny_models import TINY_CONFIGS, VOCAB, tiny_model

from headway.data.batching import collate
from headway.errors import ModelError
from headway.models.architectures import head_geometry
from headway.scoring import score as scoring
from headway.scoring.head_scores import gate_scores, reference_scores
from headway.scoring.loss import response_token_losses
from headway.scoring.score import ScoreCheckpoint, score_encoded


@dataclass
class Row:
    input_ids: list[int]
    labels: list[int]
    index: int


def random_rows(n: int, seed: int = 0) -> list[Row]:
    """Rows of random length with a prompt part (labels -100) and a response part."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        prompt = [rng.randrange(3, VOCAB) for _ in range(rng.randint(2, 9))]
        response = [rng.randrange(3, VOCAB) for _ in range(rng.randint(1, 7))] + [2]
        rows.append(Row(prompt + response, [-100] * len(prompt) + response, i))
    return rows


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_gate_equals_eager_reference(model_type):
    model = tiny_model(model_type)
    _, n_heads, _ = head_geometry(model)
    batch = collate(random_rows(5), pad_id=0)
    for convention in ("sample", "paper"):
        fast, loss_f, _ = gate_scores(model, batch, n_heads, convention)
        ref, loss_r, _ = reference_scores(model, batch, n_heads, convention)
        assert fast.shape == (5, 2, 4)
        assert ref.abs().max() > 0
        assert rel_diff(fast, ref) <= 1e-5, (model_type, convention)
        torch.testing.assert_close(loss_f, loss_r)
    # the reference leaves the model as it found it
    assert model.config._attn_implementation == tiny_model(model_type).config._attn_implementation
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("model_type", sorted(TINY_CONFIGS))
def test_response_loss_matches_transformers(model_type):
    """The LM head applied to response positions only gives Hugging Face's own loss."""
    model = tiny_model(model_type)
    for row in random_rows(3, seed=1):
        batch = collate([row], pad_id=0)
        loss_sum, n_tokens, _ = response_token_losses(model, batch)
        with torch.no_grad():
            expected = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        torch.testing.assert_close((loss_sum / n_tokens).squeeze(), expected, rtol=1e-5,
                                   atol=1e-6)


def test_sample_convention_independent_of_batching():
    model = tiny_model("llama")
    rows = random_rows(11)
    runs = []
    for batch_size, shuffle_seed in [(1, None), (3, 0), (8, 1), (11, 2)]:
        order = list(range(len(rows)))
        if shuffle_seed is not None:
            random.Random(shuffle_seed).shuffle(order)
        out = score_encoded(model, [rows[i] for i in order], 2, 4, pad_id=0,
                            batch_size=batch_size, progress=False)
        back = torch.empty_like(out["per_sample"])
        back[order] = out["per_sample"]
        runs.append(back)
    for other in runs[1:]:
        assert rel_diff(other, runs[0]) <= 1e-5
    assert rel_diff(runs[0].abs().mean(0), runs[-1].abs().mean(0)) <= 1e-6


def test_paper_convention_equals_hand_computed_batch_mean():
    """paper = eager Γ * ∂(Hugging Face batch-mean loss)/∂Γ, batches of 4 in file order."""
    model = tiny_model("llama")
    rows = random_rows(10, seed=3)
    out = score_encoded(model, rows, 2, 4, pad_id=0, convention="paper", progress=False)
    model.set_attn_implementation("eager")
    expected = []
    for start in range(0, len(rows), 4):
        batch = collate(rows[start:start + 4], pad_id=0)
        result = model(**batch, output_attentions=True)  # HF loss: mean over response tokens
        for a in result.attentions:
            a.retain_grad()
        result.loss.backward()
        expected.append(torch.stack([(a * a.grad).sum((-1, -2)) for a in result.attentions], 1))
        model.zero_grad()
    expected = torch.cat(expected).detach()
    assert rel_diff(out["per_sample"], expected) <= 1e-5
    # and it differs from the per-sample convention: batch mates matter
    sample = score_encoded(model, rows, 2, 4, pad_id=0, convention="sample", progress=False)
    assert rel_diff(sample["per_sample"], expected) > 1e-2


def test_padding_to_fixed_length_does_not_change_scores():
    model = tiny_model("llama")
    rows = random_rows(6, seed=4)
    plain = score_encoded(model, rows, 2, 4, pad_id=0, progress=False)["per_sample"]
    padded = score_encoded(model, rows, 2, 4, pad_id=0, pad_to=64, progress=False)["per_sample"]
    assert rel_diff(padded, plain) <= 1e-5


def test_unsupported_architecture_names_class_and_fix():
    import transformers as tf

    model = tf.MambaForCausalLM(tf.MambaConfig(vocab_size=50, hidden_size=16,
                                               num_hidden_layers=1))
    with pytest.raises(ModelError, match=r"MambaForCausalLM.*'mamba'.*attention heads") as err:
        head_geometry(model)
    assert "register_architecture('mamba'" in err.value.hint


def test_unknown_convention_and_method():
    model = tiny_model("llama")
    with pytest.raises(scoring.ScoringError, match="convention"):
        score_encoded(model, random_rows(2), 2, 4, pad_id=0, convention="mean", progress=False)
    with pytest.raises(scoring.ScoringError, match="method"):
        score_encoded(model, random_rows(2), 2, 4, pad_id=0, method="fast", progress=False)
    with pytest.raises(scoring.ScoringError, match="nothing to score"):
        score_encoded(model, [], 2, 4, pad_id=0, progress=False)


def test_resume_after_crash_skips_finished_batches(tmp_path, monkeypatch):
    model = tiny_model("llama")
    rows = random_rows(12, seed=5)
    full = score_encoded(model, rows, 2, 4, pad_id=0, batch_size=3, progress=False)
    key = {"run": 1}
    calls = {"n": 0}
    real = scoring.gate_scores

    def crash_on_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(scoring, "gate_scores", crash_on_third)
    ckpt = ScoreCheckpoint(tmp_path / "x.partial.safetensors", key, every_s=0)
    with pytest.raises(KeyboardInterrupt):
        score_encoded(model, rows, 2, 4, pad_id=0, batch_size=3, progress=False,
                      checkpoint=ckpt)
    assert int(ScoreCheckpoint(ckpt.path, key).load()["done"].sum()) == 6

    calls["n"] = -100  # no more crashes; count the batches the resumed run computes
    resumed = score_encoded(model, rows, 2, 4, pad_id=0, batch_size=3, progress=False,
                            checkpoint=ScoreCheckpoint(ckpt.path, key, every_s=0))
    assert calls["n"] == -100 + 2  # 4 batches in all, 2 were already done
    assert rel_diff(resumed["per_sample"], full["per_sample"]) <= 1e-6
    # a checkpoint written for other settings is ignored, not mixed in
    assert ScoreCheckpoint(ckpt.path, {"run": 2}).load() is None
