"""Errors the executor raises. Every one says what went wrong in words a user can act on."""

from __future__ import annotations

from ..errors import GGUFRecipeError


class ExecutorError(GGUFRecipeError, RuntimeError):
    """Base class: applying a plan failed; nothing was written at the output path."""


class SourceFormatError(ExecutorError):
    """The source model (or an imatrix GGUF) is not a readable GGUF file: foreign, truncated or corrupt."""


class StalePlanError(ExecutorError):
    """The plan was made for a different model, recipe or imatrix than the ones given."""


class EditedPlanError(StalePlanError):
    """The plan's decisions are not what its recipe gives for this model (it was edited by hand)."""


class PlanMismatchError(ExecutorError):
    """The plan cannot be applied to this model at all (missing tensors, other shapes or types)."""


class ImatrixError(ExecutorError):
    """The importance matrix cannot be read or does not fit the model."""


class RequantizeError(ExecutorError):
    """A tensor is already quantized and requantizing was not allowed."""


class NonFiniteError(ExecutorError):
    """A tensor holds NaN or infinite values."""


class OutputError(ExecutorError):
    """The output cannot be written (same as input, disk full, permissions...)."""


class ResumeError(ExecutorError):
    """``resume=True`` but the checkpoint beside the output belongs to a different run."""


class ApplyInterrupted(ExecutorError):
    """The run was interrupted (Ctrl-C); the partial file is kept so ``resume=True`` can continue it."""


class ClusterError(ExecutorError):
    """The Dask cluster cannot be reached, has no workers, or a worker cannot read the source model."""
