"""The executor: applies a frozen :class:`~gguf_recipe.plan.Plan` to a model and writes the GGUF.

``apply_plan(plan, model_path, out_path, ...)`` is the complete API (``recipe apply`` wraps it).
"""

from __future__ import annotations

from .errors import (
    ApplyInterrupted,
    ClusterError,
    EditedPlanError,
    ExecutorError,
    ImatrixError,
    NonFiniteError,
    OutputError,
    PlanMismatchError,
    RequantizeError,
    ResumeError,
    SourceFormatError,
    StalePlanError,
)
from .imatrix import Imatrix, entry_names, load_imatrix
from .progress import LineProgress, NullProgress, ProgressReporter, TerminalProgress
from .run import (
    DEFAULT_CHUNK_VALUES,
    ApplyResult,
    ImatrixCoverage,
    RequantizeWarning,
    apply_plan,
    plan_fingerprint,
)
from .source import SourceModel, model_fingerprint

__all__ = [
    "DEFAULT_CHUNK_VALUES",
    "ApplyInterrupted",
    "ApplyResult",
    "ClusterError",
    "EditedPlanError",
    "ExecutorError",
    "Imatrix",
    "ImatrixCoverage",
    "ImatrixError",
    "LineProgress",
    "NonFiniteError",
    "NullProgress",
    "OutputError",
    "PlanMismatchError",
    "ProgressReporter",
    "RequantizeError",
    "RequantizeWarning",
    "ResumeError",
    "SourceFormatError",
    "SourceModel",
    "StalePlanError",
    "TerminalProgress",
    "apply_plan",
    "entry_names",
    "load_imatrix",
    "model_fingerprint",
    "plan_fingerprint",
]
