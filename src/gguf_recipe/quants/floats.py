"""Plain float types: F32 (a copy), F16 and BF16 (ggml's rounding conversions).

ggml_quantize_chunk converts with ``ggml_fp32_to_fp16_row`` (round to nearest even; values past the
fp16 range become inf, NaN stays NaN) and ``ggml_fp32_to_bf16_row_ref`` (round to nearest even, NaN
forced quiet). The imatrix is ignored by ggml for all three.
"""

from __future__ import annotations

import numpy as np

from ._numeric import F32Array, U8Array, fp32_to_bf16_bits, fp32_to_fp16_bits, scratch

__all__ = ["quantize_bf16", "quantize_f16", "quantize_f32"]


def _as_bytes(a: np.ndarray, n_rows: int) -> U8Array:
    out: U8Array = np.ascontiguousarray(a).view(np.uint8).reshape(n_rows, -1)
    return out


def quantize_f32(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    del imatrix  # ggml ignores it
    return _as_bytes(np.array(rows, dtype=np.float32, copy=True), rows.shape[0])


def quantize_f16(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    del imatrix
    with np.errstate(over="ignore", invalid="ignore"):  # |x| > 65504 becomes inf, as in ggml
        bits = fp32_to_fp16_bits(rows)
    return _as_bytes(bits.astype("<u2", copy=False), rows.shape[0])


def quantize_bf16(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    """ggml_compute_fp32_to_bf16 (same bits as ``_numeric.fp32_to_bf16_bits``, in fewer passes)."""
    del imatrix
    x = np.ascontiguousarray(rows, dtype=np.float32)
    u = x.view(np.uint32)
    r = np.right_shift(u, np.uint32(16), out=scratch("bf16.r", u.shape, np.uint32))
    r &= np.uint32(1)
    r += u
    r += np.uint32(0x7FFF)  # wraps for the top NaN patterns; those are replaced below
    r >>= np.uint32(16)
    out = r.astype("<u2")
    if x.size and np.isnan(x.min()):  # min propagates NaN: one cheap reduction finds them
        nan = np.isnan(x)
        out[nan] = fp32_to_bf16_bits(x[nan])
    return _as_bytes(out, rows.shape[0])
