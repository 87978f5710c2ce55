"""Evaluate quantized models with llama.cpp: perplexity, and KL divergence against a reference.

The numbers are those of llama.cpp's ``llama-perplexity`` (``--kl-divergence-base`` then
``--kl-divergence``): the text is cut into chunks of ``n_ctx`` tokens, each evaluated from an empty KV
cache, and the second half of every chunk is scored. The reference model's log-probabilities are
computed once (:func:`compute_reference`) and cached on disk; then any number of models are compared
with it (:func:`evaluate`, or :func:`kld_against` on the reference's own tokens).

llama-cpp-python is an optional dependency (``pip install 'gguf-recipe[eval]'``), imported only when
a model is evaluated.

Usage (the stable API)::

    from gguf_recipe.evaluate import compute_reference, evaluate, kld_against, comparison_rows

    text = open("wiki.test.raw", encoding="utf-8").read()
    r = evaluate("model-Q4_K_M.gguf", reference="model-F16.gguf", text=text, n_ctx=512, n_chunks=20)
    r.ppl, r.kld_mean, r.kld_p99, r.same_top            # an EvalResult (same_top is a fraction)

    ref = compute_reference("model-F16.gguf", text, n_ctx=512, n_chunks=20)  # cached on disk
    for f in candidates:                                # many variants of one model: no re-tokenizing
        print(f, kld_against(f, ref).kld_mean)

The reference cache is ``$XDG_CACHE_HOME/gguf-recipe/eval`` (:func:`cache_dir`), one float16 ``.npy`` of
``n_chunks * (n_ctx - 1 - n_ctx // 2) * n_vocab`` values per reference model, text, context and chunk
count (25 MB per chunk of 512 for a 49k vocabulary), plus a ``.json``; delete it freely.
"""

from __future__ import annotations

from .api import ComparisonRow, comparison_rows, evaluate, kld_against, model_size, perplexity
from .errors import EvalDependencyError, EvalError, MismatchError
from .reference import ReferenceLogits, cache_dir, compute_reference, read_text
from .render import render_comparison, results_json
from .result import EvalResult, PerplexityResult

__all__ = [
    "ComparisonRow",
    "EvalDependencyError",
    "EvalError",
    "EvalResult",
    "MismatchError",
    "PerplexityResult",
    "ReferenceLogits",
    "cache_dir",
    "comparison_rows",
    "compute_reference",
    "evaluate",
    "kld_against",
    "model_size",
    "perplexity",
    "read_text",
    "render_comparison",
    "results_json",
]
