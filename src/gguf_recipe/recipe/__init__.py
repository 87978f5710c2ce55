"""The recipe language: pydantic models (schema version 1) and, from the loader, ``load_recipe``."""

from __future__ import annotations

from . import model
from .model import *  # noqa: F403 - re-exports model.__all__

__all__: list[str] = []
__all__ += model.__all__

try:  # the loader is written by the language-surface helper
    from .loader import load_recipe

    __all__ += ["load_recipe"]
except ImportError:  # pragma: no cover - until the loader lands
    pass
