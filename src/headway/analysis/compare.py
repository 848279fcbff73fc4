"""ΔAP between two models on the same rows: ``headway compare A B --task T``.

Typical pairs: a base model and its instruct version, a model before and after one's own SFT.
Both are scored on the same rows with the same settings; the folder it writes holds
``A.{safetensors,json}``, ``B.{...}``, ``delta.{...}`` (ΔAP = AP(B) − AP(A)) and ``compare.json``
(concentration of both and its change, the heads gained and lost in the top-k, the
similarity of the two patterns); ``headway report FOLDER`` draws and shows it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import HeadwayError
from ..patterns import ActivationPattern


def _as_model(model, tokenizer, dtype: str, device):
    """A :class:`~headway.models.LoadedModel`: loaded from a name, or wrapping the user's."""
    from ..models.loading import LoadedModel, load_model, wrap_model

    if isinstance(model, (str, Path)):
        return load_model(str(model), dtype=dtype, device=device)
    if isinstance(model, LoadedModel):
        return model
    if tokenizer is None:
        raise HeadwayError("compare: a model object needs its tokenizer (tokenizer=...)")
    return wrap_model(model, tokenizer)


Head = tuple[int, int, float]  # (layer, head, score)


def _label(heads: list[Head]) -> list[str]:
    return [f"{layer}.{head}" for layer, head, _ in heads]


@dataclass(repr=False)
class Comparison:
    """Two models' patterns on the same rows: ``a`` and ``b``
    (:class:`~headway.patterns.ActivationPattern`), ``delta`` = ``b - a``, and, among the
    top-``k`` heads, those ``b`` ``gained`` (ranked by their score in ``b``) and ``lost``
    (ranked by their score in ``a``), as ``(layer, head, score)``, best first."""

    a: ActivationPattern
    b: ActivationPattern
    names: tuple[str, str] = ("A", "B")
    k: int = 10

    @property
    def delta(self) -> ActivationPattern:
        return self.b - self.a

    def _top(self, pattern: ActivationPattern) -> list[Head]:
        return pattern.top_heads(self.k)

    @property
    def kept(self) -> list[Head]:
        """Heads in both top-k lists, ranked by their score in ``b``."""
        top_a = {(layer, head) for layer, head, _ in self._top(self.a)}
        return [h for h in self._top(self.b) if h[:2] in top_a]

    @property
    def gained(self) -> list[Head]:
        top_a = {(layer, head) for layer, head, _ in self._top(self.a)}
        return [h for h in self._top(self.b) if h[:2] not in top_a]

    @property
    def lost(self) -> list[Head]:
        top_b = {(layer, head) for layer, head, _ in self._top(self.b)}
        return [h for h in self._top(self.a) if h[:2] not in top_b]

    @property
    def largest_change(self) -> list[Head]:
        """The ``k`` heads whose score changed most, as ``(layer, head, ΔAP)``."""
        d = (self.b.scores - self.a.scores)
        H = d.shape[1]
        order = np.argsort(-np.abs(d.numpy()).ravel(), kind="stable")[:self.k]
        return [(int(i) // H, int(i) % H, float(d.flatten()[int(i)])) for i in order]

    @property
    def concentration(self) -> dict:
        """Gini, CV and entropy of ``a``, of ``b`` and their change (``b - a``)."""
        from ..stats import concentration

        ca, cb = concentration(self.a.numpy()), concentration(self.b.numpy())
        return {"a": ca, "b": cb, "change": {key: cb[key] - ca[key] for key in ca}}

    @property
    def gini_change(self) -> float:
        return self.concentration["change"]["gini"]

    @property
    def cv_change(self) -> float:
        return self.concentration["change"]["cv"]

    @property
    def similarity(self) -> dict[str, float]:
        """Pearson, Spearman and cosine similarity of the two patterns over heads."""
        from ..stats import SIMILARITIES

        return {m: float(f(self.a.numpy(), self.b.numpy())) for m, f in SIMILARITIES.items()}

    def summary(self) -> dict:
        """What ``compare.json`` holds (heads as ``"layer.head"``, best first)."""
        d = (self.b.scores - self.a.scores).numpy()
        return {"kind": "headway.Compare", "names": list(self.names),
                "models": [self.a.meta.get("model"), self.b.meta.get("model")],
                "task": self.a.meta.get("task"), **self.concentration, "k": self.k,
                "top_a": _label(self._top(self.a)), "top_b": _label(self._top(self.b)),
                "kept": _label(self.kept), "gained": _label(self.gained),
                "lost": _label(self.lost), "largest_delta": _label(self.largest_change),
                "delta_norm": float(np.linalg.norm(d)), "similarity": self.similarity}

    def save(self, folder: str | Path) -> Path:
        """Write both patterns, ΔAP and ``compare.json`` into ``folder``; ``headway report
        FOLDER`` draws and shows them."""
        from ..storage import atomic_write_json, check_writable

        folder = check_writable(folder)
        for name, pattern in zip(self.names, (self.a, self.b)):
            pattern.save(folder / name)
        self.delta.save(folder / "delta")
        atomic_write_json(folder / "compare.json", self.summary())
        return folder

    def __repr__(self) -> str:
        a, b = self.names
        return (f"<Comparison {a} -> {b}: Gini {self.concentration['a']['gini']:.3f} -> "
                f"{self.concentration['b']['gini']:.3f}, gained "
                f"{' '.join(_label(self.gained)) or '-'}, lost "
                f"{' '.join(_label(self.lost)) or '-'}>")


def compare(model_a, model_b, tokenizer=None, data=None, *, output_dir=None, k: int = 10,
            names: tuple[str, str] = ("A", "B"), dtype: str = "float32", device=None,
            progress: bool = True, **score_options) -> Comparison:
    """Score ``data`` on two models and compare the patterns: a :class:`Comparison`, whether
    or not it is also saved (``output_dir``: both patterns, ΔAP and ``compare.json``).

    ``model_a``, ``model_b``: model names (alias, folder, hub id) or model objects (then
    ``tokenizer`` is theirs; both must share it). ``data``: as for :func:`headway.score`.
    ``score_options``: any keyword of :func:`headway.score` (``rows``, ``template``,
    ``max_length``, ``convention``, ...); the template follows the rows' columns unless given.
    ΔAP is B − A.
    """
    from ..scoring.score import score
    from ..storage import check_writable

    if data is None:
        raise HeadwayError("compare: no data given")
    out = check_writable(output_dir) if output_dir else None
    patterns = []
    for model, name in zip((model_a, model_b), names):
        lm = _as_model(model, tokenizer, dtype, device)
        save_to = out / name if out else None
        patterns.append(score(lm, lm.tokenizer, data, progress=progress, save_to=save_to,
                              **score_options))  # the LoadedModel: its identity is kept
        del lm
    result = Comparison(*patterns, names=tuple(names), k=k)
    if out:
        result.save(out)
    return result


def read_summary(folder: str | Path) -> dict:
    """``compare.json`` of a comparison folder."""
    path = Path(folder) / "compare.json"
    if not path.is_file():
        raise FileNotFoundError(f"no compare.json in {folder}")
    return json.loads(path.read_text())
