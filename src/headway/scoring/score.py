"""Score attention heads: s_i[l,h] = <Γ_lh(x_i), ∂L/∂Γ_lh> for every sample, layer and head.

Fast path (``method="gate"``). With O = Γ V the head's output before the output projection,
<Γ, ∂L/∂Γ> = <O, ∂L/∂O>. Every layer's head slice (the input of its output projection,
``[B, T, H*d]``) is multiplied by a gate g = 1 of shape ``[B, H]``; one forward and one
backward pass give ∂L/∂g[b,h] = <O_bh, ∂L/∂O_bh> = s_b[l,h] for all heads at once. No weight
gradient is computed, attention runs in SDPA/flash kernels and no T x T matrix is stored.

Reference path (``method="reference"``). The released script's method: eager attention,
``output_attentions=True``, ``retain_grad()`` on every Γ, one ordinary backward, then
s_b[l,h] = sum over query and key positions of Γ * ∂L/∂Γ. It exists to prove the fast path.

Loss conventions (L in the formula above):
    sample  L = Σ_b L_b, L_b = sample b's mean loss over its response tokens. Because no sample
            influences another, ∂L/∂g_b = ∂L_b/∂g_b: scores do not depend on batch size or
            batch mates.
    paper   L = (Σ_b Σ_t loss_bt) / (Σ_b n_b), the Hugging Face batch mean of the released
            script (batch size 4, rows in file order): a sample's score depends on its batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn

from ..data.batching import collate, make_batches
from ..distributed import barrier, rank_world
from ..locks import owning
from ..models.placement import input_device
from ..models.sharding import is_sharded
from ..patterns import ActivationPattern
from ..storage import atomic_save_tensors, check_free_space
from .head_scores import (
    CONVENTIONS,
    METHODS,
    ScoringError,
    check_batch_size,
    gate_scores,
    reference_scores,
)
from .hooks import on_head_slices
from .memory import checkpointed_layers, offloaded, split_on_oom


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode (no dropout) for the duration; the mode the model was in is restored, also
    per submodule."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class ScoreCheckpoint:
    """Per-sample results of finished batches, saved atomically so a crashed run resumes.

    ``key`` identifies the run (model, data, convention, batching); a file written under another
    key is ignored rather than mixed in.
    """

    def __init__(self, path: str | Path | None, key: dict, every_s: float = 30.0):
        self.path = Path(path) if path else None
        self.key = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
        self.every_s = every_s
        self.last_save = time.monotonic()
        self.started = time.perf_counter()
        self.prior_s = 0.0  # seconds spent by earlier, interrupted sessions of this run

    def elapsed(self) -> float:
        """Seconds spent on this run over all its sessions, up to now."""
        return self.prior_s + time.perf_counter() - self.started

    def load(self, like: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor] | None:
        """The saved state of this run, or None: no file, another run's file, a file whose
        tensors differ in name, shape or dtype from ``like`` (the fresh state), or a file that
        cannot be read (moved aside to ``<path>.corrupt`` with a warning)."""
        if not (self.path and self.path.is_file()):
            return None
        from safetensors import SafetensorError, safe_open
        try:
            with safe_open(str(self.path), framework="pt") as f:
                header = f.metadata() or {}
                if header.get("key") != self.key:
                    return None
            state = load_file(str(self.path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as err:
            self._set_aside(err)
            return None
        if like is not None and {k: (v.shape, v.dtype) for k, v in state.items()} != {
                k: (v.shape, v.dtype) for k, v in like.items()}:
            _warn(f"{self.path}: its tensors do not fit this run; ignoring it and starting over")
            return None
        try:
            self.prior_s = float(header.get("elapsed_s", 0.0))
        except ValueError:
            self.prior_s = 0.0
        return state

    def _set_aside(self, err: BaseException) -> None:
        """Rename an unreadable resume file to ``<path>.corrupt`` so that it stops blocking
        reruns; say so on stderr."""
        corrupt = self.path.with_name(self.path.name + ".corrupt")
        try:
            os.replace(self.path, corrupt)
            where = f"moved it to {corrupt}"
        except OSError:
            where = "could not move it aside"
        reason = str(err).splitlines()[0] if str(err).strip() else type(err).__name__
        _warn(f"{self.path}: unreadable resume file ({reason}); {where}; scoring starts over")

    def save(self, state: dict[str, torch.Tensor], force: bool = False) -> None:
        """Write ``state`` when ``every_s`` seconds passed since the last write (or ``force``)."""
        if self.path and (force or time.monotonic() - self.last_save >= self.every_s):
            atomic_save_tensors(self.path, state, metadata={"key": self.key,
                                                            "elapsed_s": f"{self.elapsed():.3f}"})
            self.last_save = time.monotonic()

    def remove(self) -> None:
        if self.path:
            self.path.unlink(missing_ok=True)


def _warn(message: str) -> None:
    """One ``headway: warning:`` line on stderr."""
    print(f"headway: warning: {message}", file=sys.stderr, flush=True)


def score_encoded(model: nn.Module, encoded: Sequence, n_layers: int, n_heads: int,
                  pad_id: int, convention: str = "sample", method: str = "gate",
                  batch_size: int | None = None, pad_to: int | None = None,
                  progress: bool = True, checkpoint: ScoreCheckpoint | None = None,
                  desc: str = "scoring", checkpoint_layers: bool | None = None,
                  per_token: bool = False) -> dict[str, torch.Tensor]:
    """Score every encoded row; return ``{"per_sample": [N, L, H] signed, "loss": [N]}``
    (and ``"compute_dtype"``; with ``per_token``, ``"per_token"``: for each row its
    ``[T_i, L, H]`` float32 contributions of each token position, summing to its
    ``per_sample`` row; the resume file is not used then).

    ``sample`` sorts rows by length (less padding); ``paper`` keeps file order in batches of
    ``batch_size`` (default 4), as the released script does. Finished batches are skipped on
    resume when ``checkpoint`` holds them. ``checkpoint_layers``: recompute each decoder layer
    in the backward pass (:mod:`headway.scoring.memory`; None: when weights are offloaded).
    A batch that runs out of accelerator memory is halved (``sample`` convention).

    Under ``torch.distributed`` (``accelerate launch`` / ``torchrun``) process r computes
    batches r, r + W, r + 2W, ... and the per-sample results are summed across processes, so
    every process returns the full result, equal to a single-process run. Of a sharded model
    (FSDP2) every process runs the same number of batches (see :mod:`headway.sharding`).
    """
    import torch.distributed as dist
    from tqdm.auto import tqdm

    rank, world = rank_world()
    if convention not in CONVENTIONS:
        raise ScoringError(f"unknown loss convention {convention!r}; choose one of {CONVENTIONS}")
    if method not in METHODS:
        raise ScoringError(f"unknown method {method!r}; choose one of {METHODS}")
    if per_token and method != "gate":
        raise ScoringError("per-token attribution comes from the gate path (method='gate')")
    if per_token:
        checkpoint = None  # variable-length values: a per-token run starts over
    if not encoded:
        raise ScoringError("nothing to score: no rows left after encoding")
    batch_size = check_batch_size(batch_size, convention)
    N = len(encoded)
    fresh = {"per_sample": torch.zeros(N, n_layers, n_heads), "loss": torch.zeros(N),
             "done": torch.zeros(N, dtype=torch.bool)}
    state = (checkpoint.load(like=fresh) if checkpoint else None) or fresh
    batches = make_batches([len(e.input_ids) for e in encoded], batch_size,
                           sort_by_length=convention == "sample")
    # a sharded model's every forward is a collective: all processes run as many batches,
    # the ones short of work run the first batch again and drop its result
    sharded = world > 1 and is_sharded(model)
    padding = [None] * (-(-len(batches) // world) - len(batches[rank::world])) if sharded else []
    spare = batches[0]
    batches = batches[rank::world] + padding
    device = input_device(model)
    step = gate_scores if method == "gate" else reference_scores
    mine = sum(len(rows) for rows in batches if rows is not None)
    done = sum(int(state["done"][rows].sum()) for rows in batches if rows is not None)
    limit = [batch_size]  # lowered for good after an out-of-memory error

    tokens: dict[int, torch.Tensor] = {}  # row -> [T_i, L, H], with per_token

    def score_rows(rows):
        batch = collate([encoded[i] for i in rows], pad_id, pad_to, device)
        if not per_token:
            return step(model, batch, n_heads, convention)
        kept: list = []
        out = step(model, batch, n_heads, convention, per_token=kept)
        for b, row in enumerate(rows):
            tokens[row] = kept[0][b, :len(encoded[row].input_ids)].cpu()
        return out

    layers = offloaded(model) if checkpoint_layers is None else checkpoint_layers
    seen: set = set()  # the dtype reaching the output projections: what computes

    def note_dtype(layer: int, x: torch.Tensor) -> None:
        seen.add(str(x.dtype).removeprefix("torch."))

    with eval_mode(model), checkpointed_layers(model, layers), \
            on_head_slices(model, note_dtype), \
            tqdm(total=mine, initial=done, desc=desc, unit="sample",
                 disable=not progress or rank != 0, dynamic_ncols=True) as bar:
        try:
            for rows in batches:
                if rows is None:
                    step(model, collate([encoded[i] for i in spare], pad_id, pad_to, device),
                         n_heads, convention)
                    continue
                if bool(state["done"][rows].all()) and not sharded:
                    continue
                # a sharded forward is a collective: no process may split its batch alone
                results = ([(rows, score_rows(rows))] if sharded
                           else split_on_oom(score_rows, rows, convention, limit))
                for piece, (scores, loss_sum, n_tokens) in results:
                    state["per_sample"][piece] = scores.cpu()
                    state["loss"][piece] = (loss_sum / n_tokens.clamp(min=1)).float().cpu()
                state["done"][rows] = True
                bar.update(len(rows))
                if checkpoint:
                    checkpoint.save(state)
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: keep every finished batch
            if checkpoint:
                checkpoint.save(state, force=True)
            raise
    if world > 1:  # each row was computed by one process and is zero in the others
        for name in ("per_sample", "loss"):
            summed = state[name].to(device)
            dist.all_reduce(summed)
            state[name] = summed.cpu()
        if per_token:
            parts = [None] * world
            dist.all_gather_object(parts, tokens)
            tokens = {row: t for part in parts for row, t in part.items()}
    out = {"per_sample": state["per_sample"], "loss": state["loss"],
           "compute_dtype": ",".join(sorted(seen)) or None}
    if per_token:
        out["per_token"] = [tokens[i] for i in range(N)]
    return out


def score_task(lm, task, convention: str = "sample", method: str = "gate",
               batch_size: int | None = None, template: str | None = None,
               max_length: int = 1024, overlong: str = "truncate",
               keep_per_sample: bool = False, progress: bool = True,
               save_to: str | Path | None = None, pad_to: int | None = None,
               checkpoint_layers: bool | None = None, per_token: bool = False):
    """Activation pattern of ``task`` (a :class:`headway.data.rows.Task`) on ``lm`` (a
    :class:`headway.models.loading.LoadedModel`): see :func:`score`, which takes the user's
    own objects and calls this."""
    from ..data.encoding import encode_examples, template_for
    from ..data.rows import task_record
    from ..patterns import ActivationPattern, pattern_meta, pattern_paths

    template = template_for(task, "qa" if template is None and convention == "paper"
                            else template)
    if convention == "paper" and template != "qa":
        raise ScoringError("the paper convention uses the released script's 'qa' template")
    start = time.perf_counter()
    encoded, stats = encode_examples(task.examples, lm.tokenizer, template=template,
                                     max_length=max_length, overlong=overlong, source=task.source,
                                     prompt_field=getattr(task, "prompt_field", None))
    check_token_ids(encoded, lm)
    batch_size = check_batch_size(batch_size, convention)
    settings = {"convention": convention, "method": method, "batch_size": batch_size,
                "template": template, "max_length": max_length, "overlong": overlong}
    key = {"model": lm.describe(), "data_hash": task.data_hash, **settings}
    checkpoint = None
    rank, world = rank_world()
    if save_to:
        tensor_file, _ = pattern_paths(save_to)
        suffix = ".partial.safetensors" if world == 1 else f".partial-{rank}-of-{world}.safetensors"
        checkpoint = ScoreCheckpoint(tensor_file.with_suffix(suffix), key)
        if rank == 0:  # the result and its resume file: N x L x H float32 scores each
            check_free_space(tensor_file.parent, 2 * 4 * len(encoded) * lm.n_layers
                             * lm.n_heads + (1 << 20), "the scores of this task")
    # one process scores into these files at a time (the resume file is theirs too)
    with owning(save_to, f"output {save_to}") if save_to else contextlib.nullcontext():
        result = score_encoded(lm.model, encoded, lm.n_layers, lm.n_heads, lm.pad_id,
                               convention=convention, method=method, batch_size=batch_size,
                               pad_to=pad_to, progress=progress, checkpoint=checkpoint,
                               desc=f"scoring {task.name}",
                               checkpoint_layers=checkpoint_layers, per_token=per_token)
        per_sample = result["per_sample"]
        meta = pattern_meta(
            lm.describe(), task_record(task), settings, n_samples=len(encoded),
            mean_loss=float(result["loss"].mean()),
            n_input_rows=stats.n_in, n_truncated=stats.n_truncated, n_dropped=stats.n_dropped,
            n_tokens=stats.n_tokens, n_response_tokens=stats.n_response_tokens,
            n_zero_scores=int((per_sample == 0).sum()),  # underflow shows here (float16)
            compute_dtype=result["compute_dtype"],
            elapsed_s=round(checkpoint.elapsed() if checkpoint else time.perf_counter() - start, 3),
            world_size=world)  # elapsed_s: over every session of a resumed run
        pattern = ActivationPattern(
            scores=per_sample.abs().mean(0), meta=meta,
            per_sample=per_sample if keep_per_sample or per_token else None,
            loss=result["loss"], index=torch.tensor([e.index for e in encoded], dtype=torch.long))
        if per_token:
            pattern.per_token = result["per_token"]
            pattern.tokens = [token_pieces(lm.tokenizer, e.input_ids) for e in encoded]
            pattern.response = [[label != -100 for label in e.labels] for e in encoded]
        if save_to:
            if rank == 0:
                pattern.save(save_to)
            barrier()
            checkpoint.remove()
    return pattern


def token_pieces(tokenizer, ids: list[int]) -> list[str]:
    """Each token of a row as the text it stands for (for display)."""
    return [tokenizer.decode([i]) for i in ids]


def check_token_ids(encoded, lm) -> None:
    """Refuse token ids the model has no embedding for (a tokenizer of another model)."""
    rows = lm.model.get_input_embeddings().num_embeddings
    biggest = max((max(e.input_ids) for e in encoded), default=0)
    if biggest >= rows:
        name = getattr(lm.tokenizer, "name_or_path", "") or type(lm.tokenizer).__name__
        raise ScoringError(f"the tokenizer ({name}) makes token id {biggest}, but the model's "
                           f"embeddings hold {rows} ids: the tokenizer belongs to another model",
                           hint="pass the tokenizer saved with this model")


def score(model, tokenizer=None, data=None, *, rows: int | None = None, offset: int = 0,
          seed: int | None = None, shuffle: bool = False, prompt_field: str | None = None,
          response_field: str | None = None, template: str | None = None,
          convention: str = "sample", method: str = "gate", batch_size: int | None = None,
          max_length: int = 1024, overlong: str = "truncate", per_sample: bool = False,
          per_token: bool = False, checkpoint_layers: bool | None = None,
          progress: bool = True, save_to: str | Path | None = None, dtype: str = "float32",
          device: str | None = None) -> ActivationPattern:
    """The activation pattern of ``data`` on ``model``: AP[l, h] = mean_i |s_i[l, h]|.

    ``model``: a transformers ``PreTrainedModel`` of a supported family, or a PEFT model
    around one, in any mode (scores are computed in eval mode, and the mode is restored); or a
    model name (built-in alias, folder, hub id), loaded with its tokenizer in ``dtype`` on
    ``device``. ``tokenizer``: the model's Hugging Face tokenizer (one without a pad token is
    fine; it is not changed). ``data``: a ``datasets.Dataset``, a list of dicts, a pandas
    DataFrame, a file path or a task name (:func:`headway.as_task`), with prompt/response
    columns or conversational ``messages`` rows.

    Rows, as the command line's flags: ``rows`` (default: all; 64 for a built-in task) after
    ``offset``, in order or shuffled (``shuffle``) with ``seed``. ``template``: None chooses from the
    columns (:func:`headway.data.encoding.template_for`: prompt/completion -> raw, messages ->
    chat, else qa). ``convention``, ``method``, ``batch_size`` (None: 8, or 4 for ``paper``),
    ``max_length``, ``overlong``, ``checkpoint_layers``: as ``headway score``.

    Returns an :class:`~headway.patterns.ActivationPattern`: ``scores`` ``[L, H]`` float32,
    ``loss`` ``[N]`` (each row's mean response-token loss, nats), ``index`` ``[N]``; with
    ``per_sample=True`` the signed ``per_sample`` ``[N, L, H]``; with ``per_token=True`` also
    ``per_token``: for each row its ``[T_i, L, H]`` signed contributions of every token
    position (the gate's sum before it runs over tokens; per row they sum to ``per_sample``),
    with the row's ``tokens``. ``save_to``: also write it there (``.safetensors`` +
    ``.json``), resuming from ``<save_to>.partial.safetensors``.
    """
    from ..data.user import as_task
    from ..models.loading import LoadedModel, load_model, wrap_model

    if isinstance(model, LoadedModel) and data is None and tokenizer is not None \
            and not callable(tokenizer):  # score(lm, task): headway's own objects
        tokenizer, data = model.tokenizer, tokenizer
    if isinstance(model, (str, os.PathLike)):
        given = tokenizer if _is_tokenizer(tokenizer) else None
        if data is None and tokenizer is not None and given is None:
            data = tokenizer  # score("name", rows)
        model = load_model(str(model), dtype=dtype, device=device, tokenizer=given)
        tokenizer = given or model.tokenizer
    elif isinstance(model, LoadedModel) and tokenizer is None:
        tokenizer = model.tokenizer
    if data is None:
        if tokenizer is not None and not _is_tokenizer(tokenizer):
            raise ScoringError(f"score(model, tokenizer, data): the second argument is a "
                               f"{type(tokenizer).__name__}, not a tokenizer; pass "
                               f"score(model, tokenizer, rows)")
        raise ScoringError("score(model, tokenizer, data): no data given")
    if not _is_tokenizer(tokenizer):
        raise ScoringError(f"score(model, tokenizer, data): expected a Hugging Face tokenizer "
                           f"as the second argument, got {type(tokenizer).__name__}")
    check_batch_size(batch_size, convention)
    lm = wrap_model(model, tokenizer)
    task = as_task(data, prompt_field=prompt_field, response_field=response_field, rows=rows,
                   offset=offset, seed=seed, shuffle=shuffle)
    return score_task(lm, task, convention=convention, method=method, batch_size=batch_size,
                      template=template, max_length=max_length, overlong=overlong,
                      keep_per_sample=per_sample, progress=progress, save_to=save_to,
                      checkpoint_layers=checkpoint_layers, per_token=per_token)


def _is_tokenizer(obj) -> bool:
    """A Hugging Face tokenizer (or processor): callable, with ``encode`` and ``decode``."""
    return callable(obj) and hasattr(obj, "decode") and (hasattr(obj, "encode")
                                                         or hasattr(obj, "tokenizer"))
