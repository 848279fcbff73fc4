"""Every decoder family: headway's scores against an independent eager computation that runs
the model's own forward (not headway's loss code), from Python and through the command line
on a saved folder; tracking of a mixture of experts and of MLA; a family refused from its
config alone; and the registration example of docs/architectures.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import make_byte_tokenizer
from tiny_models import TINY_CONFIGS, tiny_model

from headway.cli import main
from headway.data.encoding import encode_examples
from headway.data.rows import Example
from headway.models.architectures import resolve
from headway.patterns import ActivationPattern
from headway.scoring.score import score_encoded

ROWS = [{"question": q, "answer": a} for q, a in [
    ("What is 12 + 30?", "42"), ("Name a colour.", "Blue, or red."), ("2 * 21 =", "42"),
    ("Sort: b a c", "a b c"), ("Capital of France?", "Paris is the capital."),
    ("Echo xyz", "xyz")]]


def encoded_rows(tokenizer, template: str = "qa"):
    examples = [Example(prompt=r["question"], response=r["answer"], index=i)
                for i, r in enumerate(ROWS)]
    return encode_examples(examples, tokenizer, template, 1024)[0]


def independent_scores(model, rows, convention: str, batch_size: int) -> torch.Tensor:
    """s_i[l, h] = <Γ, ∂L/∂Γ> the released script's way, written here from scratch: eager
    attention, ``output_attentions``, the model's own logits (whatever its forward scales),
    ``retain_grad`` on every Γ. ``[N, L, H]``."""
    out = []
    order = range(0, len(rows), batch_size if convention == "paper" else len(rows))
    for start in order:
        batch = rows[start:start + (batch_size if convention == "paper" else len(rows))]
        width = max(len(r.input_ids) for r in batch)
        ids = torch.tensor([r.input_ids + [0] * (width - len(r.input_ids)) for r in batch])
        labels = torch.tensor([r.labels + [-100] * (width - len(r.labels)) for r in batch])
        mask = torch.tensor([[1] * len(r.input_ids) + [0] * (width - len(r.input_ids))
                             for r in batch])
        result = model(input_ids=ids, attention_mask=mask, output_attentions=True,
                       use_cache=False)
        targets = labels[:, 1:]
        keep = targets != -100
        token = F.cross_entropy(result.logits[:, :-1].float().transpose(1, 2),
                                targets.clamp(min=0), reduction="none") * keep
        per_row = token.sum(1)
        loss = (per_row / keep.sum(1)).sum() if convention == "sample" \
            else per_row.sum() / keep.sum()
        for a in result.attentions:
            a.retain_grad()
        loss.backward()
        out.append(torch.stack([(a * a.grad).sum((-1, -2)) for a in result.attentions], 1))
        model.zero_grad(set_to_none=True)
    return torch.cat(out).detach()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_scores_equal_an_independent_eager_computation(family):
    model = tiny_model(family)  # the family's default attention (SDPA where it has it)
    reference_model = tiny_model(family, attn="eager")  # the same weights, eager
    heads = resolve(model)
    rows = encoded_rows(make_byte_tokenizer())
    for convention in ("sample", "paper"):
        ours = score_encoded(model, rows, heads.n_layers, heads.n_heads, pad_id=0,
                             convention=convention, batch_size=4, progress=False)["per_sample"]
        expected = independent_scores(reference_model, rows, convention, batch_size=4)
        assert expected.abs().max() > 0
        assert rel_diff(ours, expected) <= 1e-5, (family, convention, rel_diff(ours, expected))


@pytest.mark.parametrize("family", sorted(TINY_CONFIGS))
def test_cli_scores_a_saved_folder_of_every_family(family, tmp_path, capsys):
    folder = tmp_path / family
    tiny_model(family).save_pretrained(folder)
    tokenizer = make_byte_tokenizer(add_bos=True)
    tokenizer.save_pretrained(folder)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    reference_model = tiny_model(family, attn="eager")
    rows = encoded_rows(tokenizer)
    for convention in ("sample", "paper"):
        out = tmp_path / convention
        assert main(["score", "--model", str(folder), "--task", str(data), "--per-sample",
                     "--convention", convention, "-o", str(out), "--no-progress"]) == 0
        pattern = ActivationPattern.load(out)
        expected = independent_scores(reference_model, rows, convention, batch_size=4)
        assert rel_diff(pattern.per_sample, expected) <= 1e-5, (family, convention)
    capsys.readouterr()


def test_granite_and_cohere_scaling_reaches_the_loss():
    """The loss through the model's own forward includes Granite's logits_scaling and
    Cohere's logit_scale: headway's per-row loss equals the model's own loss."""
    tokenizer = make_byte_tokenizer()
    rows = encoded_rows(tokenizer)
    for family in ("granite", "cohere"):
        model = tiny_model(family)
        heads = resolve(model)
        ours = score_encoded(model, rows, heads.n_layers, heads.n_heads, pad_id=0,
                             progress=False)["loss"]
        for i, row in enumerate(rows):
            ids, labels = torch.tensor([row.input_ids]), torch.tensor([row.labels])
            with torch.no_grad():
                own = model(input_ids=ids, labels=labels).loss
            torch.testing.assert_close(ours[i], own, rtol=1e-5, atol=1e-6)
        unscaled = tiny_model(family)
        setattr(unscaled.config, "logits_scaling" if family == "granite" else "logit_scale", 1.0)
        if family == "cohere":
            unscaled.logit_scale = 1.0
        plain = score_encoded(unscaled, rows, heads.n_layers, heads.n_heads, pad_id=0,
                              progress=False)["loss"]
        assert float((plain - ours).abs().max()) > 1e-3, f"{family}: the scale matters"


def test_long_responses_are_scored_in_chunks_with_the_same_result():
    """Response positions beyond one LM-head chunk go through the model's forward again with
    the decoder's output recorded: the same scores and losses as one pass."""
    from headway.data.batching import collate
    from headway.scoring import loss as loss_module
    from headway.scoring.head_scores import gate_scores

    rows = encoded_rows(make_byte_tokenizer())
    for family in ("granite", "gemma3", "deepseek_v2"):
        model = tiny_model(family)
        batch = collate(rows, pad_id=0)
        one, loss_one, _ = gate_scores(model, batch, 4, "sample")
        original = loss_module.chunk_tokens
        try:
            loss_module.chunk_tokens = lambda vocab, budget=0: 5  # many chunks of 5
            chunked, loss_chunked, _ = gate_scores(model, batch, 4, "sample")
        finally:
            loss_module.chunk_tokens = original
        assert rel_diff(chunked, one) <= 1e-5, family
        torch.testing.assert_close(loss_chunked, loss_one, rtol=1e-6, atol=1e-6)


def test_a_family_without_heads_is_refused_from_its_config_alone(tmp_path, capsys,
                                                                 monkeypatch):
    """A config-only folder (no weights at all) of a family with no attention heads: one
    error line naming it and a registration hint, and no weight is ever loaded."""
    import transformers

    config = transformers.MambaConfig(vocab_size=300, hidden_size=32, num_hidden_layers=2)
    folder = tmp_path / "mamba"
    config.save_pretrained(folder)

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were loaded before the family was checked")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", no_weights)
    assert main(["score", "--model", str(folder), "--task", "arithmetic", "-n", "2"]) == 2
    err = capsys.readouterr().err
    assert "model_type 'mamba'" in err and "cannot find its attention heads" in err
    assert "register_architecture('mamba', layers='backbone.layers'" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("family", ["mixtral", "deepseek_v2"])
def test_tracking_records_per_expert_change_equal_to_a_hand_computation(family, tmp_path,
                                                                        capsys):
    """Two steps of full fine-tuning of a mixture of experts (and of MLA): the per-head and
    per-expert parameter change headway records equals the change computed by hand from the
    start and the trained weights."""
    folder = tmp_path / "base"
    tiny_model(family).save_pretrained(folder)
    make_byte_tokenizer(add_bos=True).save_pretrained(folder)
    run = tmp_path / "run"
    assert main(["train", "--model", str(folder), "--task", "arithmetic", "--rows", "8",
                 "--max_steps", "2", "--per_device_train_batch_size", "4",
                 "--learning_rate", "1e-2", "--track_every", "0", "--probe_rows", "4",
                 "--output_dir", str(run), "--disable_tqdm", "true"]) == 0
    capsys.readouterr()
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    change = load_file(str(run / "param_change" / "step_000002.safetensors"))
    start = AutoModelForCausalLM.from_pretrained(folder)
    trained = AutoModelForCausalLM.from_pretrained(run / "final")
    before = dict(start.named_parameters())
    after = dict(trained.named_parameters())
    experts = {n: p for n, p in before.items() if re.search(r"\.experts\.[a-z_]+$", n)
               and p.dim() == 3}
    assert experts, "the model has fused expert weights"
    n_experts = next(iter(experts.values())).shape[0]
    expected = torch.full((2, n_experts), float("nan"))
    for layer in range(2):
        mine = [n for n in experts if f".layers.{layer}." in n]
        if not mine:
            continue  # a dense layer (DeepSeek's first_k_dense_replace)
        moved = sum((after[n] - before[n]).pow(2).flatten(1).sum(1) for n in mine)
        size = sum(before[n].pow(2).flatten(1).sum(1) for n in mine)
        expected[layer] = (moved / size).sqrt()
    torch.testing.assert_close(change["mlp_experts"], expected, rtol=1e-4, atol=1e-7,
                               equal_nan=True)
    assert float(change["mlp_experts"].nan_to_num(0).min()) >= 0
    assert bool(torch.isfinite(change["mlp_experts"]).any())
    # q of head 0 in layer 0: its rows of the query projection, by hand
    heads = resolve(start)
    q = heads.projection(0, "q")
    name = next(n for n, m in start.named_modules() if m is q) + ".weight"
    rows = heads.rows("q")[0]
    by_hand = ((after[name][rows] - before[name][rows]).norm() / before[name][rows].norm())
    torch.testing.assert_close(change["q"][0, 0], by_hand, rtol=1e-4, atol=0)


def test_the_registration_example_of_the_docs_runs(monkeypatch):
    """docs/architectures.md's worked example: MPT's fused Wqkv is found by the walk as an
    unknown layout (scoring and o only); registered as 'stacked', its q/k/v slice per head."""
    from headway.models import architectures

    monkeypatch.setattr(architectures, "ARCHITECTURES", dict(architectures.ARCHITECTURES))
    doc = Path(__file__).parents[1] / "docs" / "architectures.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert blocks, "docs/architectures.md has a python example"
    namespace: dict = {}
    exec(blocks[0], namespace)  # builds `model`, registers MPT, checks it itself
    heads = resolve(namespace["model"])
    assert heads.has_qkv and heads.layout == "stacked"
    assert heads.rows("k")[1].tolist() == list(range(32 + 8, 32 + 16))


@pytest.mark.parametrize("family", ["gpt2", "falcon", "gpt_neox", "phi3", "deepseek_v2",
                                    "mixtral", "llama"])
@pytest.mark.parametrize("how", ["adapter", "mask"])
def test_head_selective_training_moves_only_the_selected_heads(family, how):
    """Fused (stacked, grouped, per-head), MLA and separate q/k/v: after a few optimizer steps
    on selected heads, exactly their q rows and o columns moved, every other weight entry is
    bit-identical, and the recorded per-head change is 0 for every other head's q and o."""
    from headway.data.batching import collate
    from headway.scoring.loss import response_token_losses
    from headway.training.head_adapter import add_head_adapter, merge
    from headway.training.heads import HeadSelection
    from headway.training.weight_change import relative_change, snapshot

    model = tiny_model(family).train()
    start_state = {k: v.clone() for k, v in model.state_dict().items()}
    start = snapshot(resolve(model))
    chosen = [(0, 1), (1, 2)]
    selection = None
    if how == "adapter":
        add_head_adapter(model, chosen)
    else:
        selection = HeadSelection(model, chosen).apply()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    batch = collate(encoded_rows(make_byte_tokenizer()), pad_id=0)
    for _ in range(3):
        loss_sum, n_tokens, _ = response_token_losses(model, batch)
        (loss_sum / n_tokens).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        if selection:
            selection.restore()
    if how == "adapter":
        merge(model)
    heads = resolve(model)
    change = relative_change(heads, start)
    selected = torch.zeros(2, 4, dtype=torch.bool)
    selected[0, 1] = selected[1, 2] = True
    for role in ("q", "o"):
        assert float(change[role][~selected].abs().max()) == 0.0, (family, role)
        assert float(change[role][selected].min()) > 0, (family, role)
    assert float(change["mlp"].nan_to_num(0).abs().max()) == 0.0
    moved = {k for k, v in model.state_dict().items()
             if k in start_state and not torch.equal(v, start_state[k])}
    allowed = {next(n for n, m in model.named_modules() if m is heads.projection(layer, role))
               for layer, _ in chosen for role in "qkvo"}
    assert moved and all(k.rsplit(".", 1)[0] in allowed for k in moved), (family, moved)
