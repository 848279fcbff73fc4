"""ActivationPattern: a task's L x H head-activation matrix, with what is needed to trust it.

On disk a pattern is two files that share a stem: ``NAME.safetensors`` (tensors, metadata
also in its header) and ``NAME.json`` (the same metadata, for people and other tools).

Tensors:
    scores       [n_layers, n_heads]      AP[l,h] = mean_i |s_i[l,h]|  (Zhao et al. 2025, Eq. 2)
    per_sample   [N, n_layers, n_heads]   signed s_i[l,h] = <Γ_lh(x_i), ∂L/∂Γ_lh>   (optional)
    loss         [N]                      each sample's mean response-token loss (nats)
    index        [N]                      each sample's row index in its task source
    per_token    [ΣT_i, n_layers, n_heads] each token position's signed share of s_i: the rows
                                          one after another (optional, with per_token_offsets
                                          [N + 1] and per_token_response [ΣT_i], whether a
                                          token is part of the response; the tokens' text is
                                          in the metadata's "tokens")

:meth:`ActivationPattern.load` checks all of this (and that the ``.json`` sidecar, when there is
one, records the same tensor shapes) and raises :class:`PatternError` naming the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from .errors import HeadwayError
from .storage import atomic_save_tensors, atomic_write_json

OPTIONAL_TENSORS = ("per_sample", "loss", "index")
PER_TOKEN_TENSORS = ("per_token", "per_token_offsets", "per_token_response")


class PatternError(HeadwayError, ValueError):
    """A pattern file that cannot be read or is not a consistent activation pattern."""


def pattern_paths(path: str | Path) -> tuple[Path, Path]:
    """``(tensor_file, json_file)`` for a pattern path given with or without its suffix."""
    path = Path(path)
    if path.suffix in {".safetensors", ".json"}:
        path = path.with_suffix("")
    return path.with_name(path.name + ".safetensors"), path.with_name(path.name + ".json")


@dataclass(repr=False)
class ActivationPattern:
    """A task's activation pattern: ``scores`` ``[L, H]`` (AP, float32, >= 0; signed for a
    difference) and what is needed to trust and explore it. ``per_token`` (when scored with
    it): for each row its ``[T_i, L, H]`` contributions of every token position, with the
    row's ``tokens`` (text) and ``response`` (True where the token is part of the response).
    """

    scores: torch.Tensor  # [n_layers, n_heads], float32, >= 0
    meta: dict = field(default_factory=dict)
    per_sample: torch.Tensor | None = None  # [N, n_layers, n_heads], signed
    loss: torch.Tensor | None = None  # [N]
    index: torch.Tensor | None = None  # [N], int64
    per_token: list[torch.Tensor] | None = None  # N x [T_i, n_layers, n_heads], signed
    tokens: list[list[str]] | None = None  # N x T_i token texts
    response: list[list[bool]] | None = None  # N x T_i: part of the response

    @property
    def n_layers(self) -> int:
        return self.scores.shape[0]

    @property
    def n_heads(self) -> int:
        return self.scores.shape[1]

    def top_heads(self, k: int = 10) -> list[tuple[int, int, float]]:
        """The ``k`` highest-scoring heads as ``(layer, head, score)``, best first."""
        values, flat = self.scores.flatten().topk(min(k, self.scores.numel()))
        return [(int(i) // self.n_heads, int(i) % self.n_heads, float(v))
                for v, i in zip(values, flat)]

    def numpy(self):
        """``scores`` as a numpy array ``[L, H]``."""
        return self.scores.detach().cpu().numpy()

    def to_pandas(self):
        """One row per head: ``layer``, ``head``, ``score``, ``rank`` (1 = highest), and, when
        kept, one column ``sample_<index>`` per row of its signed per-sample score."""
        import pandas as pd

        L, H = self.n_layers, self.n_heads
        flat = self.scores.flatten()
        ranks = torch.empty_like(flat, dtype=torch.long)
        ranks[flat.argsort(descending=True, stable=True)] = torch.arange(1, flat.numel() + 1)
        frame = pd.DataFrame({"layer": torch.arange(L).repeat_interleave(H).numpy(),
                              "head": torch.arange(H).repeat(L).numpy(),
                              "score": flat.numpy(), "rank": ranks.numpy()})
        if self.per_sample is not None:
            index = (self.index.tolist() if self.index is not None
                     else range(self.per_sample.shape[0]))
            samples = pd.DataFrame(self.per_sample.reshape(len(index), -1).T.numpy(),
                                   columns=[f"sample_{i}" for i in index])
            frame = pd.concat([frame, samples], axis=1)
        return frame

    def __sub__(self, other: ActivationPattern) -> ActivationPattern:
        """``after - before``: :func:`delta` (the same checks)."""
        if not isinstance(other, ActivationPattern):
            return NotImplemented
        return delta(self, other)

    def __repr__(self) -> str:
        task = (self.meta.get("task") or {}).get("name", "?")
        model = (self.meta.get("model") or {}).get("name", "?")
        kind = "ΔAP" if self.meta.get("kind") == DELTA_KIND else "ActivationPattern"
        n = self.meta.get("n_samples", self.per_sample.shape[0] if self.per_sample is not None
                          else "?")
        top = ", ".join(f"{layer}.{head} {value:.3g}" for layer, head, value in self.top_heads(3))
        return (f"<{kind} {self.n_layers} layers x {self.n_heads} heads; task {task}; model "
                f"{model}; N = {n}; top {top}>")

    def heatmap(self, ax=None, top: int = 5, title: str | None = None):
        """Draw the L x H pattern (layers down, heads across) on a matplotlib ``ax`` (a new
        figure when None), the ``top`` heads outlined; return the axes. Differences
        (:func:`delta`) get a diverging scale centred on 0."""
        from .pattern_views import draw_heatmap

        task = self.meta.get("task", {}).get("name", "")
        model = (self.meta.get("model") or {}).get("name", "")
        is_delta = self.meta.get("kind") == DELTA_KIND
        return draw_heatmap(self.scores.numpy(), ax=ax, top=self.top_heads(top) if top else None,
                            diverging=is_delta, title=title if title is not None else
                            f"{'ΔAP ' if is_delta else ''}{task} on {model}".strip(),
                            label="ΔAP" if is_delta else "activation  mean |<Γ, ∂L/∂Γ>|")

    def token_view(self, row: int, layer: int, head: int, ax=None):
        """Draw row ``row``'s tokens shaded by their signed contribution to head
        ``layer.head``'s score (red adds, blue takes away; the response in bold)
        on a matplotlib ``ax`` (a new figure when None); return the axes. Needs a pattern
        scored with ``per_token=True``."""
        from .pattern_views import draw_tokens

        if self.per_token is None or self.tokens is None:
            raise PatternError("this pattern has no per-token scores: score it with "
                               "per_token=True (headway score --per-token)")
        if not 0 <= row < len(self.per_token):
            raise PatternError(f"row {row}: the pattern has rows 0..{len(self.per_token) - 1}")
        values = self.per_token[row][:, layer, head]
        total = float(values.sum())
        return draw_tokens(self.tokens[row], values.numpy(),
                           self.response[row] if self.response else None, ax=ax,
                           title=f"row {row}, head {layer}.{head}: contributions sum to "
                                 f"{total:.4g}")

    def save(self, path: str | Path) -> Path:
        """Write ``path``.safetensors and ``path``.json atomically; return the tensor file."""
        tensor_file, json_file = pattern_paths(path)
        tensors = {"scores": self.scores.float()}
        for name in OPTIONAL_TENSORS:
            value = getattr(self, name)
            if value is not None:
                tensors[name] = value
        meta = dict(self.meta)
        if self.per_token is not None:
            lengths = [t.shape[0] for t in self.per_token]
            tensors["per_token"] = torch.cat(self.per_token).float()
            tensors["per_token_offsets"] = torch.tensor([0, *lengths]).cumsum(0)
            tensors["per_token_response"] = torch.tensor(
                [flag for row in (self.response or [[False] * n for n in lengths])
                 for flag in row], dtype=torch.bool)
            meta["tokens"] = self.tokens
        header = {"headway": json.dumps(meta, sort_keys=True)}
        atomic_save_tensors(tensor_file, tensors, metadata=header)
        atomic_write_json(json_file, {**meta, "tensors": {
            k: list(v.shape) for k, v in tensors.items()}})
        return tensor_file

    @classmethod
    def load(cls, path: str | Path) -> ActivationPattern:
        """Read a pattern written by :meth:`save` (``NAME``, ``NAME.safetensors`` or
        ``NAME.json``). Raises FileNotFoundError without the tensor file and
        :class:`PatternError` for a damaged or inconsistent one."""
        tensor_file, json_file = pattern_paths(path)
        if not tensor_file.is_file():
            raise FileNotFoundError(f"no activation pattern at {tensor_file}")
        tensors, meta = _read_tensor_file(tensor_file)
        _check_shapes(tensor_file, tensors)
        _check_sidecar(tensor_file, json_file, tensors)
        pattern = cls(scores=tensors["scores"], meta=meta, per_sample=tensors.get("per_sample"),
                      loss=tensors.get("loss"), index=tensors.get("index"))
        if "per_token" in tensors:
            bounds = tensors["per_token_offsets"].tolist()
            pattern.per_token = [tensors["per_token"][a:b] for a, b in zip(bounds, bounds[1:])]
            flags = tensors.get("per_token_response")
            pattern.response = [flags[a:b].tolist() for a, b in zip(bounds, bounds[1:])] \
                if flags is not None else None
            pattern.tokens = meta.pop("tokens", None)
        return pattern


def _read_tensor_file(tensor_file: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and the ``headway`` metadata of a pattern's safetensors file."""
    from safetensors import SafetensorError

    try:
        with safe_open(str(tensor_file), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise PatternError(f"{tensor_file}: not a readable safetensors file (truncated or "
                           f"corrupt): {_first_line(err)}",
                           hint="score the task again to rewrite it") from err
    if "scores" not in tensors:
        raise PatternError(f"{tensor_file} is not a headway activation pattern (no 'scores' "
                           f"tensor; it has {sorted(tensors) or 'none'})")
    try:
        meta = json.loads(header.get("headway", "{}"))
    except ValueError as err:
        raise PatternError(f"{tensor_file}: its 'headway' metadata is not valid JSON: "
                           f"{err}") from err
    if not isinstance(meta, dict):
        raise PatternError(f"{tensor_file}: its 'headway' metadata is not a JSON object")
    return tensors, meta


def _check_shapes(tensor_file: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Raise PatternError unless scores is [L, H] (floats) and per_sample [N, L, H], loss [N]
    and index [N] agree with it and with each other."""
    def bad(what: str) -> PatternError:
        shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in sorted(tensors.items()))
        return PatternError(f"{tensor_file}: {what} ({shapes})")

    scores = tensors["scores"]
    if scores.ndim != 2 or 0 in scores.shape or not scores.is_floating_point():
        raise bad("'scores' must be a non-empty [n_layers, n_heads] float tensor")
    per_sample = tensors.get("per_sample")
    if per_sample is not None and (per_sample.ndim != 3 or per_sample.shape[1:] != scores.shape):
        raise bad("'per_sample' must be [N, n_layers, n_heads] with the layers and heads of "
                  "'scores'")
    for name in ("loss", "index"):
        if name in tensors and tensors[name].ndim != 1:
            raise bad(f"{name!r} must be a [N] vector")
    lengths = {k: tensors[k].shape[0] for k in OPTIONAL_TENSORS if k in tensors}
    if "per_token" in tensors:
        per_token, offsets = tensors["per_token"], tensors.get("per_token_offsets")
        if per_token.ndim != 3 or per_token.shape[1:] != scores.shape or offsets is None or \
                offsets.ndim != 1 or int(offsets[-1]) != per_token.shape[0]:
            raise bad("'per_token' must be [sum of row lengths, n_layers, n_heads] with "
                      "'per_token_offsets' [N + 1] ending at its length")
        lengths["per_token_offsets - 1"] = offsets.shape[0] - 1
    if len(set(lengths.values())) > 1:
        raise bad(f"per-sample tensors disagree on N ({', '.join(f'{k} {n}' for k, n in lengths.items())})")


def _check_sidecar(tensor_file: Path, json_file: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Raise PatternError when ``json_file`` exists but cannot be read or records other tensor
    shapes than ``tensor_file`` holds (the two files come from different runs)."""
    if not json_file.is_file():
        return
    hint = (f"the two files were written by different runs, or one was damaged: score again, "
            f"or delete {json_file.name} to use {tensor_file.name} alone")
    try:
        sidecar = json.loads(json_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise PatternError(f"{json_file}: cannot read this sidecar of {tensor_file}: "
                           f"{_first_line(err)}", hint=hint) from err
    recorded = sidecar.get("tensors") if isinstance(sidecar, dict) else None
    if recorded is None:
        return  # written by something that records no shapes
    actual = {k: list(v.shape) for k, v in tensors.items()}
    if recorded != actual:
        raise PatternError(f"{json_file} records tensors {_shapes(recorded)} but {tensor_file} "
                           f"holds {_shapes(actual)}", hint=hint)


def _shapes(shapes) -> str:
    """``{"scores": [2, 4]}`` as ``scores [2, 4]``, sorted by name."""
    if not isinstance(shapes, dict):
        return repr(shapes)
    return ", ".join(f"{k} {v}" for k, v in sorted(shapes.items()))


def _first_line(err: BaseException) -> str:
    """The first non-blank line of an exception's message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def load_pattern(path: str | Path) -> ActivationPattern:
    """Read a saved pattern (``NAME``, ``NAME.safetensors`` or ``NAME.json``)."""
    return ActivationPattern.load(path)


DELTA_KIND = "headway.PatternDelta"
# what two patterns must share to be subtracted: the same rows, scored the same way
SAME_SCORING = ("task.data_hash", "convention", "method", "template", "max_length", "overlong",
                "n_samples", "model.n_layers", "model.n_heads")


def _field(meta: dict, dotted: str):
    for part in dotted.split("."):
        meta = meta.get(part) if isinstance(meta, dict) else None
    return meta


def delta(after: ActivationPattern, before: ActivationPattern) -> ActivationPattern:
    """ΔAP = AP(after) − AP(before), ``[L, H]``, signed: e.g. a model after SFT minus the base
    model, on the same rows. Refuses (``PatternError``, naming the field) patterns of other
    geometry, rows or scoring settings. The result's metadata keeps both models."""
    if tuple(after.scores.shape) != tuple(before.scores.shape):
        raise PatternError(f"cannot subtract a {before.n_layers} x {before.n_heads} pattern from "
                           f"a {after.n_layers} x {after.n_heads} one (geometry differs)")
    for name in SAME_SCORING:
        a, b = _field(after.meta, name), _field(before.meta, name)
        if a is not None and b is not None and a != b:
            raise PatternError(f"cannot subtract patterns scored differently: {name} is {a!r} "
                               f"after and {b!r} before",
                               hint="score both models on the same rows with the same settings")
    if after.index is not None and before.index is not None and not torch.equal(
            after.index, before.index):
        raise PatternError("cannot subtract patterns of different rows (index differs)")
    dtypes = [(p.meta.get("model") or {}).get("dtype") for p in (after, before)]
    if None not in dtypes and dtypes[0] != dtypes[1]:
        import warnings

        warnings.warn(f"delta of a {dtypes[0]} pattern and a {dtypes[1]} one: part of the "
                      f"difference is the precision, not the model", stacklevel=2)
    meta = {key: after.meta[key] for key in ("task", *SAME_SCORING[1:7]) if key in after.meta}
    meta.update(kind=DELTA_KIND, after=after.meta.get("model"), before=before.meta.get("model"),
                model=after.meta.get("model"))
    return ActivationPattern(scores=after.scores - before.scores, meta=meta)


def library_versions() -> dict[str, str]:
    """Installed versions of headway, torch and transformers, for result metadata."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("headway", "torch", "transformers"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def pattern_meta(model: dict, task: dict, settings: dict, n_samples: int, mean_loss: float,
                 **extra) -> dict:
    """The metadata every saved pattern carries: model identity, task (name, source,
    data_hash), scoring settings, N, mean response loss, time and library versions."""
    import time

    return {"kind": "headway.ActivationPattern", "format_version": 1, "model": model,
            "task": task, **settings, "n_samples": n_samples, "mean_loss": mean_loss, **extra,
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "versions": library_versions()}
