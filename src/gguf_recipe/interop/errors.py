"""The error of the llama-quantize translation."""

from __future__ import annotations

from ..errors import GGUFRecipeError

__all__ = ["InteropError"]


class InteropError(GGUFRecipeError, ValueError):
    """A command line or a recipe that cannot be translated; the message says why."""
