"""Tune: the best mix of types for a size budget, from a measurement, written as a readable recipe.

A stage on top of measure, the compiler and the executor; nothing below imports it.
"""

from __future__ import annotations

from .solver import Allocation, InfeasibleBudget, Item, Option, lower_hull, solve
from .tuner import Budget, TuneError, TuneResult, tune_model

__all__ = [
    "Allocation",
    "Budget",
    "InfeasibleBudget",
    "Item",
    "Option",
    "TuneError",
    "TuneResult",
    "lower_hull",
    "solve",
    "tune_model",
]
