"""Evaluate models: perplexity, and KL divergence against a reference, as llama-perplexity does."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import EvalError, MismatchError
from .metrics import Workspace, chunk_kld, log_softmax, mean_and_uncertainty
from .reference import ReferenceLogits, chunk_tokens, compute_reference, scored_range, text_bytes
from .result import EvalResult, PerplexityResult
from .runner import LoadedModel

__all__ = ["ComparisonRow", "comparison_rows", "evaluate", "kld_against", "model_size", "perplexity"]

Progress = Callable[[int, int], None]


def model_size(path: str | os.PathLike[str]) -> tuple[int, float | None]:
    """``(file bytes, bits per weight)`` of a GGUF model (all its split files; bpw of the tensor data,
    None when the header cannot be read)."""
    from ..model import GGUFReadError, read_model, split_paths

    p = Path(path)
    try:
        info = read_model(p)
    except (GGUFReadError, ValueError, OSError):
        return (p.stat().st_size if p.is_file() else 0), None
    size = sum(Path(f).stat().st_size for f in split_paths(p))
    bpw = info.n_bytes * 8 / info.n_elements if info.n_elements else None
    return size, bpw


def perplexity(
    model_path: str | os.PathLike[str],
    text: str | bytes,
    *,
    n_ctx: int = 512,
    n_chunks: int | None = None,
    threads: int | None = None,
    progress: Progress | None = None,
) -> PerplexityResult:
    """``llama-perplexity``'s perplexity of a model on a text: chunks of ``n_ctx`` tokens (the first of
    each replaced by BOS when the model adds one), each from an empty KV cache, scoring the second half
    of every chunk; ``PPL = exp(mean NLL)`` with its standard error."""
    t0 = time.perf_counter()
    with LoadedModel(model_path, n_ctx=n_ctx, threads=threads) as model:
        chunks = chunk_tokens(model, text_bytes(text), n_ctx, n_chunks)
        first, per_chunk = scored_range(n_ctx)
        ws = Workspace(per_chunk, model.n_vocab)
        nll = np.empty(len(chunks) * per_chunk)
        for c in range(len(chunks)):
            logits = model.decode_chunk(chunks[c], first)
            nll[c * per_chunk : (c + 1) * per_chunk] = log_softmax(logits, chunks[c, first + 1 :], ws).nll
            if progress is not None:
                progress(c + 1, len(chunks))
    mean, err = mean_and_uncertainty(float(nll.sum()), float((nll * nll).sum()), len(nll))
    ppl = float(np.exp(mean))
    return PerplexityResult(
        model=str(model_path),
        n_ctx=n_ctx,
        n_chunks=len(chunks),
        n_tokens=len(nll),
        ppl=ppl,
        ppl_err=ppl * err,
        seconds=time.perf_counter() - t0,
    )


def _run(model: LoadedModel, ref: ReferenceLogits, progress: Progress | None, t0: float) -> EvalResult:
    ref.check_model(model)
    first, per_chunk = ref.first, ref.per_chunk
    n = ref.n_tokens
    nll = np.empty(n)
    kld = np.empty(n)
    same = np.empty(n, dtype=np.bool_)
    p_diff = np.empty(n)
    ws = Workspace(per_chunk, ref.n_vocab)
    for c in range(ref.n_chunks):
        logits = model.decode_chunk(ref.tokens[c], first)
        rows = ref.rows(c)
        st = chunk_kld(logits, ref.targets(c), ref.logprobs[rows], ref.top[rows], ref.nll[rows], ws)
        nll[rows], kld[rows], same[rows], p_diff[rows] = st.nll, st.kld, st.same_top, st.p_diff
        if progress is not None:
            progress(c + 1, ref.n_chunks)
    size, bpw = model_size(model.path)
    return EvalResult.from_values(
        model=str(model.path),
        reference=ref.reference,
        n_ctx=ref.n_ctx,
        n_chunks=ref.n_chunks,
        nll=nll,
        ref_nll=ref.nll,
        kld=kld,
        same_top=same,
        p_diff=p_diff,
        seconds=time.perf_counter() - t0,
        file_bytes=size,
        bpw=bpw,
    )


def kld_against(
    model_path: str | os.PathLike[str],
    ref: ReferenceLogits,
    *,
    threads: int | None = None,
    progress: Progress | None = None,
) -> EvalResult:
    """Perplexity and KL divergence of ``model_path`` against ``ref``, on the reference's own token
    chunks (the fast path for evaluating many variants of one model: no text, no tokenization; the
    vocabulary is still checked by size, BOS and a short probe of the text, :class:`MismatchError`
    otherwise). ``progress(done, total)`` is called after each chunk."""
    t0 = time.perf_counter()
    with LoadedModel(model_path, n_ctx=ref.n_ctx, threads=threads) as model:
        return _run(model, ref, progress, t0)


def evaluate(
    model_path: str | os.PathLike[str],
    reference: ReferenceLogits | str | os.PathLike[str],
    text: str | bytes,
    *,
    n_ctx: int | None = None,
    n_chunks: int | None = None,
    threads: int | None = None,
    cache: bool | str | os.PathLike[str] = True,
    progress: Progress | None = None,
) -> EvalResult:
    """Perplexity of ``model_path`` on ``text`` and its KL divergence from ``reference``, as
    ``llama-perplexity --kl-divergence`` computes them.

    ``reference``: the reference model's path (its log-probabilities are computed by
    :func:`compute_reference` with ``n_ctx`` (default 512), ``n_chunks`` (default: every whole chunk of
    the text), ``threads`` and ``cache``, or loaded from the cache), or a :class:`ReferenceLogits`
    already computed on this text (then ``n_ctx`` / ``n_chunks``, when given, must be the ones it was
    computed with).

    Raises :class:`EvalError` (missing or unreadable file, text too short for one chunk, ...),
    :class:`MismatchError` (another vocabulary or tokenization than the reference's, another text,
    context or chunk count), :class:`EvalDependencyError` (llama-cpp-python not installed)."""
    if isinstance(reference, ReferenceLogits):
        ref = reference
        if n_ctx is not None and n_ctx != ref.n_ctx:
            raise MismatchError(f"context {n_ctx} differs from the reference's {ref.n_ctx}")
        if n_chunks is not None and n_chunks not in (ref.n_chunks, ref.n_chunks_requested):
            raise MismatchError(f"{n_chunks} chunks asked for, the reference has {ref.n_chunks}")
    else:
        ref = compute_reference(
            reference,
            text,
            n_ctx=512 if n_ctx is None else n_ctx,
            n_chunks=n_chunks,
            threads=threads,
            cache=cache,
        )
    ref.check_text(text)
    t0 = time.perf_counter()
    with LoadedModel(model_path, n_ctx=ref.n_ctx, threads=threads) as model:
        ref.check_model(model)
        tokens = model.tokenize(text_bytes(text))
        want = ref.tokens.ravel()
        if len(tokens) < len(want) or not np.array_equal(tokens[: len(want)], want):
            raise MismatchError(f"{model.path.name} tokenizes the text differently from the reference")
        return _run(model, ref, progress, t0)


@dataclass(frozen=True)
class ComparisonRow:
    """One line of a comparison table (the reference's line has no KL divergence)."""

    model: str
    file_bytes: int
    bpw: float | None
    ppl: float
    ppl_err: float
    ln_ppl_ratio: float | None
    ln_ppl_ratio_err: float | None
    kld_mean: float | None
    kld_err: float | None
    kld_p99: float | None
    same_top: float | None
    same_top_err: float | None
    is_reference: bool = False


def comparison_rows(results: Sequence[EvalResult], *, include_reference: bool = True) -> list[ComparisonRow]:
    """Rows for a comparison table of models evaluated against the same reference (first: the
    reference itself, when ``include_reference``)."""
    if not results:
        return []
    refs = {(r.reference, r.n_ctx, r.n_tokens) for r in results}
    if len(refs) > 1:
        raise EvalError("the results were not all evaluated against the same reference and text")
    rows: list[ComparisonRow] = []
    r0 = results[0]
    if include_reference:
        size, bpw = model_size(r0.reference) if Path(r0.reference).is_file() else (0, None)
        rows.append(
            ComparisonRow(
                r0.reference,
                size,
                bpw,
                r0.ref_ppl,
                r0.ref_ppl_err,
                None,
                None,
                None,
                None,
                None,
                None,
                None,
                True,
            )
        )
    for r in results:
        rows.append(
            ComparisonRow(
                r.model,
                r.file_bytes,
                r.bpw,
                r.ppl,
                r.ppl_err,
                r.ln_ppl_ratio,
                r.ln_ppl_ratio_err,
                r.kld_mean,
                r.kld_err,
                r.kld_p99,
                r.same_top,
                r.same_top_err,
            )
        )
    return rows
