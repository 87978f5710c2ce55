"""The recipe language: pydantic models (schema version 1) and, from the loader, ``load_recipe``."""

from __future__ import annotations

from . import model
from .loader import load_recipe
from .model import *  # noqa: F403 - re-exports model.__all__

__all__: list[str] = [*model.__all__, "load_recipe"]
