"""ΔAP between two models on the same rows: ``headway compare A B --task T``.

Typical pairs: a base model and its instruct version, a model before and after one's own SFT.
Both are scored on the same rows with the same settings; the folder it writes holds
``A.{safetensors,json}``, ``B.{...}``, ``delta.{...}`` (ΔAP = AP(B) − AP(A)) and ``compare.json``
(concentration of both and its change, the heads gained and lost in the top-k, the
similarity of the two patterns); ``headway report FOLDER`` draws and shows it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import HeadwayError


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


def summarize(a, b, k: int = 10) -> dict:
    """Numbers of a comparison of two :class:`~headway.patterns.ActivationPattern` (a before,
    b after): concentration of each and its change, top-k heads kept, gained and lost, and
    Pearson / Spearman / cosine similarity of the two patterns over heads."""
    from ..stats import SIMILARITIES, concentration

    ca, cb = concentration(a.scores.numpy()), concentration(b.scores.numpy())
    top_a = {f"{l}.{h}" for l, h, _ in a.top_heads(k)}
    top_b = {f"{l}.{h}" for l, h, _ in b.top_heads(k)}
    d = (b.scores - a.scores).numpy()
    n_heads = d.shape[1]
    order = np.argsort(-np.abs(d).ravel(), kind="stable")[:k]
    return {"a": ca, "b": cb, "change": {key: cb[key] - ca[key] for key in ca},
            "k": k, "top_a": sorted(top_a), "top_b": sorted(top_b),
            "kept": sorted(top_a & top_b), "gained": sorted(top_b - top_a),
            "lost": sorted(top_a - top_b),
            "largest_delta": [f"{int(i) // n_heads}.{int(i) % n_heads}" for i in order],
            "delta_norm": float(np.linalg.norm(d)),
            "similarity": {m: float(f(a.scores.numpy(), b.scores.numpy()))
                           for m, f in SIMILARITIES.items()}}


def compare(model_a, model_b, tokenizer=None, data=None, *, output_dir=None, k: int = 10,
            names: tuple[str, str] = ("A", "B"), dtype: str = "float32", device=None,
            progress: bool = True, **score_options) -> dict:
    """Score ``data`` on two models and compare the patterns; return the summary (also in
    ``output_dir/compare.json`` when ``output_dir`` is given, with both patterns and ΔAP).

    ``model_a``, ``model_b``: model names (alias, folder, hub id) or model objects (then
    ``tokenizer`` is theirs; both must share it). ``data``: as for :func:`headway.score`.
    ``score_options``: any keyword of :func:`headway.score` (``template``, ``max_length``,
    ``convention``, ...). ΔAP is B − A.
    """
    from ..patterns import delta
    from ..scoring.score import score
    from ..storage import atomic_write_json, check_writable

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
    a, b = patterns
    change = delta(b, a)
    summary = {"kind": "headway.Compare", "names": list(names),
               "models": [p.meta.get("model") for p in patterns],
               "task": a.meta.get("task"), **summarize(a, b, k)}
    if out:
        change.save(out / "delta")
        atomic_write_json(out / "compare.json", summary)
    return summary


def read_summary(folder: str | Path) -> dict:
    """``compare.json`` of a comparison folder."""
    path = Path(folder) / "compare.json"
    if not path.is_file():
        raise FileNotFoundError(f"no compare.json in {folder}")
    return json.loads(path.read_text())
