"""Errors of the evaluation stage."""

from __future__ import annotations

from ..errors import GGUFRecipeError

__all__ = ["EvalDependencyError", "EvalError", "MismatchError"]


class EvalError(GGUFRecipeError):
    """An evaluation cannot be done (missing file, unreadable model, text too short, ...)."""


class EvalDependencyError(EvalError):
    """llama-cpp-python is not installed (``pip install 'gguf-recipe[eval]'``)."""


class MismatchError(EvalError):
    """The model and the reference cannot be compared: another vocabulary, another tokenization of the
    text, another text or context size."""
