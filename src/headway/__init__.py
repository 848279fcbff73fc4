"""headway: which attention heads a language model relies on for a task.

The public API acts on your own objects (a transformers model, its tokenizer, a
``datasets.Dataset``, your ``Trainer``)::

    import headway

    pattern = headway.score(model, tokenizer, dataset)      # ActivationPattern, scores [L, H]
    pattern.top_heads(10)                                    # [(layer, head, score), ...]
    pattern.heatmap()                                        # matplotlib axes
    change = headway.delta(after, before)                    # ΔAP, same rows and settings
    trainer.add_callback(headway.PatternCallback({"task": probe_rows}, tokenizer, every=25))
    headway.trajectory("out/", base="base-model", probes={"task": probe_rows})
    run = headway.train(headway.TrainConfig(task="gsm8k.jsonl", output_dir="runs/gsm8k"))
    headway.compare(model_a, model_b, tokenizer, dataset, output_dir="cmp")

Names are imported lazily, so ``import headway`` is cheap and has no side effects.
"""

from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("headway")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0"

_EXPORTS = {
    "score": "scoring.score",
    "ActivationPattern": "patterns",
    "load_pattern": "patterns",
    "delta": "patterns",
    "PatternCallback": "training.callback",
    "trajectory": "training.trajectory",
    "compare": "analysis.compare",
    "Comparison": "analysis.compare",
    "analyze": "analysis.findings",
    "Analysis": "analysis.findings",
    "train": "training.trainer",
    "TrainConfig": "training.config",
    "load_run": "training.run",
    "Run": "training.run",
    "load_model": "models.loading",
    "register_architecture": "models.architectures",
    "as_task": "data.user",
    "HeadwayError": "errors",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'headway' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
