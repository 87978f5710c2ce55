"""The root of every error gguf-recipe raises on purpose: ``except GGUFRecipeError`` catches what a
caller can report to its user (a bad recipe, an unreadable model, a refused plan, ...). Each stage's
errors also keep their standard base (``ValueError``, ``OSError``, ``RuntimeError``)."""

from __future__ import annotations

__all__ = ["GGUFRecipeError"]


class GGUFRecipeError(Exception):
    """Something gguf-recipe cannot do with the inputs it was given; the message says what and why."""
