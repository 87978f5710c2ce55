"""Evaluate quantized models with llama.cpp: perplexity, and KL divergence against a reference.

The numbers are those of llama.cpp's ``llama-perplexity`` (``--kl-divergence-base`` then
``--kl-divergence``): the text is cut into chunks of ``n_ctx`` tokens, each evaluated from an empty KV
cache, and the second half of every chunk is scored. The reference model's log-probabilities are
computed once (:func:`compute_reference`) and cached on disk; then any number of models are compared
with it (:func:`evaluate`, or :func:`kld_against` on the reference's own tokens).

llama-cpp-python is an optional dependency (``pip install 'gguf-recipe[eval]'``), imported only when
a model is evaluated.
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
