"""Plain float types: F32 (a copy), F16 and BF16 (ggml's rounding conversions).

ggml_quantize_chunk converts with ``ggml_fp32_to_fp16_row`` (round to nearest even; values past the
fp16 range become inf, NaN stays NaN) and ``ggml_fp32_to_bf16_row_ref`` (round to nearest even, NaN
forced quiet). The imatrix is ignored by ggml for all three.

These conversions stream through memory, so each also takes ``out`` (the caller's output rows) and
writes there directly instead of returning a new array to be copied.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from ._numeric import F32Array, U8Array, fp32_to_bf16_bits, fp32_to_fp16_bits, scratch

__all__ = ["quantize_bf16", "quantize_f16", "quantize_f32"]


def _destination(rows: F32Array, item: np.dtype[Any], out: U8Array | None) -> npt.NDArray[Any]:
    """``out`` (or a new array) seen as ``rows.shape`` elements of ``item``."""
    if out is None:
        out = np.empty((rows.shape[0], rows.shape[1] * item.itemsize), dtype=np.uint8)
    return out.view(item).reshape(rows.shape)


def quantize_f32(rows: F32Array, imatrix: F32Array | None, out: U8Array | None = None) -> U8Array:
    del imatrix  # ggml ignores it
    dst = _destination(rows, np.dtype("<f4"), out)
    np.copyto(dst, rows)
    return dst.view(np.uint8).reshape(rows.shape[0], -1)


def quantize_f16(rows: F32Array, imatrix: F32Array | None, out: U8Array | None = None) -> U8Array:
    del imatrix
    dst = _destination(rows, np.dtype("<u2"), out)
    with np.errstate(over="ignore", invalid="ignore"):  # |x| > 65504 becomes inf, as in ggml
        fp32_to_fp16_bits(rows, out=dst)
    return dst.view(np.uint8).reshape(rows.shape[0], -1)


def quantize_bf16(rows: F32Array, imatrix: F32Array | None, out: U8Array | None = None) -> U8Array:
    """ggml_compute_fp32_to_bf16 (same bits as ``_numeric.fp32_to_bf16_bits``, in fewer passes)."""
    del imatrix
    x = np.ascontiguousarray(rows, dtype=np.float32)
    u = x.view(np.uint32)
    r = np.right_shift(u, np.uint32(16), out=scratch("bf16.r", u.shape, np.uint32))
    r &= np.uint32(1)
    r += u
    r += np.uint32(0x7FFF)  # wraps for the top NaN patterns; those are replaced below
    r >>= np.uint32(16)
    dst = _destination(x, np.dtype("<u2"), out)
    np.copyto(dst, r, casting="unsafe")
    if x.size and np.isnan(x.min()):  # min propagates NaN: one cheap reduction finds them
        nan = np.isnan(x)
        dst[nan] = fp32_to_bf16_bits(x[nan])
    return dst.view(np.uint8).reshape(x.shape[0], -1)
