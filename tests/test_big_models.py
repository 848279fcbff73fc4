"""Models spread over devices or offloaded (device_map through accelerate), quantised bases."""

from __future__ import annotations

import pytest
import torch

import headway
from headway.errors import ModelError
from headway.models.loading import load_model

ROWS = [{"question": f"What is {i} + {2 * i}?", "answer": f"{3 * i}"} for i in range(7)]


def test_device_map_with_cpu_and_disk_offload_scores_as_one_device(llama_dir, tmp_path):
    one = load_model(str(llama_dir))
    expected = headway.score(one.model, one.tokenizer, ROWS, per_sample=True, progress=False)
    placement = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu",
                 "model.layers.0": "cpu", "model.layers.1": "disk", "model.norm": "cpu",
                 "lm_head": "cpu"}
    spread = load_model(str(llama_dir), device_map=placement,
                        offload_folder=str(tmp_path / "offload"))
    assert spread.info["device_map"]["model.layers.1"] == "disk"
    assert any(p.device.type == "meta" for p in spread.model.parameters())  # really offloaded
    got = headway.score(spread.model, spread.tokenizer, ROWS, per_sample=True, progress=False)
    rel = (got.per_sample - expected.per_sample).abs().max() / expected.per_sample.abs().max()
    assert float(rel) <= 1e-6


def test_bad_device_map_and_missing_quantisation_backend_are_clear(llama_dir):
    with pytest.raises(ModelError, match="device_map 'everywhere'"):
        load_model(str(llama_dir), device_map="everywhere")
    with pytest.raises(ModelError, match="not valid JSON"):
        load_model(str(llama_dir), device_map="{model: cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="needs a CUDA GPU"):
            load_model(str(llama_dir), quantization="4bit")


def test_score_command_takes_a_device_map(llama_dir, tmp_path):
    import json

    from headway.cli import main

    placement = json.dumps({"model.embed_tokens": "cpu", "model.rotary_emb": "cpu",
                            "model.layers.0": "disk", "model.layers.1": "cpu",
                            "model.norm": "cpu", "lm_head": "cpu"})
    common = ["score", "--model", str(llama_dir), "--task", "arithmetic", "--rows", "6",
              "--per-sample", "--no-progress"]
    assert main([*common, "-o", str(tmp_path / "one")]) == 0
    assert main([*common, "--device-map", placement, "--offload-folder",
                 str(tmp_path / "off"), "-o", str(tmp_path / "spread")]) == 0
    one = headway.load_pattern(tmp_path / "one")
    spread = headway.load_pattern(tmp_path / "spread")
    assert spread.meta["model"]["device_map"]["model.layers.0"] == "disk"
    assert float((one.per_sample - spread.per_sample).abs().max()
                 / one.per_sample.abs().max()) <= 1e-6


def test_the_gpu_benchmark_runs_on_a_tiny_config(tmp_path):
    """benchmarks/bench_gpu.py --tiny: every path of the GPU benchmark, on the CPU, so that
    the script the GPU figures come from cannot rot."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "bench_gpu.py"
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(script), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    paths = {(r["tokens"], r["path"]) for r in rows if r["seconds"] and r["peak_gib"] >= 0}
    assert paths >= {(512, p) for p in ("forward", "gate AP", "gate AP, layers",
                                        "eager reference", "released config")}
    by = {(r["tokens"], r["path"]): r for r in rows}
    assert by[(512, "gate AP, layers")]["peak_gib"] < by[(512, "gate AP")]["peak_gib"]
