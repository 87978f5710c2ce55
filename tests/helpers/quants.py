"""Helpers shared by the quantizer test modules (tests/quants/test_*.py)."""

from __future__ import annotations

import numpy as np
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gguf_recipe.quants import quantize, spec_for

FINITE_F32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


def imatrices(n_per_row: int) -> st.SearchStrategy[np.ndarray | None]:
    """No imatrix, or one non-negative weight per column (up to 1e6, no subnormals)."""
    weights = hnp.arrays(
        np.float32, (n_per_row,), elements=st.floats(0, 1e6, width=32, allow_subnormal=False)
    )
    return st.none() | weights


def round_trip(x: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """dequantize(quantize(x)) as float32 of x's shape, checking the byte size on the way."""
    q = quantize(x, qtype, imatrix, threads=1)
    assert q.dtype == np.uint8
    assert q.shape == (x.shape[0], spec_for(qtype).row_bytes(x.shape[1]))
    return np.asarray(dequantize(q, GGMLQuantizationType[qtype]), dtype=np.float32).reshape(x.shape)


def rel_rms_error(x: np.ndarray, y: np.ndarray) -> float:
    """RMS of the error relative to the RMS of x."""
    return float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2)))


def gaussian_round_trip(
    qtype: str, with_imatrix: bool, shape: tuple[int, int] = (8, 1024), seed: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """(x, dequantized x) for N(0, 1) rows, with an exponential imatrix or none."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    im = rng.exponential(size=shape[1]).astype(np.float32) if with_imatrix else None
    return x, round_trip(x, qtype, im)
