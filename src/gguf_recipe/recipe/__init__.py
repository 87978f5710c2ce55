"""The recipe language: pydantic models (schema version 1) and, from the loader, ``load_recipe``."""

from __future__ import annotations

from .model import (
    CATEGORIES,
    RECIPE_SCHEMA_VERSION,
    Category,
    Condition,
    ImatrixSettings,
    MetadataValue,
    Recipe,
    Rule,
    recipe_json_schema,
)

__all__ = [
    "CATEGORIES",
    "RECIPE_SCHEMA_VERSION",
    "Category",
    "Condition",
    "ImatrixSettings",
    "MetadataValue",
    "Recipe",
    "Rule",
    "recipe_json_schema",
]

try:  # the loader is written by the language-surface helper
    from .loader import load_recipe

    __all__ += ["load_recipe"]
except ImportError:  # pragma: no cover - until the loader lands
    pass
