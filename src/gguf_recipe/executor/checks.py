"""Data checks around quantization, as llama-quantize makes them.

Thin wrappers over ``gguf_recipe.quants.validate``: ``check_finite_rows`` (NaN/Inf in the source rows)
and ``validate_quantized_rows`` (ggml's ``ggml_validate_row_data`` on what would be written). Their
row numbers are relative to the chunk; these wrappers say which chunk, and raise
:class:`~gguf_recipe.executor.errors.NonFiniteError`.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType

from ..quants.validate import RowValidationError, check_finite_rows, validate_quantized_rows
from .errors import NonFiniteError

__all__ = ["check_finite", "validate_output"]


def check_finite(rows: npt.NDArray[np.float32], name: str, first_row: int) -> None:
    """Raise :class:`NonFiniteError` when the source rows hold NaN or Inf."""
    try:
        check_finite_rows(rows, name)
    except RowValidationError as exc:
        where = f" (rows counted from row {first_row} of the tensor)" if first_row else ""
        raise NonFiniteError(
            f"source tensor {exc}{where}; the model is damaged and llama-quantize refuses it too"
        ) from None


def validate_output(
    data: npt.NDArray[np.uint8], qtype: GGMLQuantizationType, name: str, first_row: int
) -> None:
    """Raise :class:`NonFiniteError` when ggml would reject the rows about to be written."""
    try:
        validate_quantized_rows(data, qtype, name)
    except RowValidationError as exc:
        where = f" (rows counted from row {first_row} of the tensor)" if first_row else ""
        raise NonFiniteError(f"quantized data validation failed: {exc}{where}") from None
