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
    """ggml_compute_fp32_to_bf16 (same bits as ``_numeric.fp32_to_bf16_bits``, in fewer passes).

    ``(u + 0x7FFF) >> 16`` is the round-to-nearest-even result except for exact ties whose kept part
    is odd (low half 0x8000, bit 16 set): those must round up and are exactly the values where
    ``(u + 0x7FFF) | 0xFFFE0000`` is all ones, so one max finds them. NaNs are patched afterwards.
    """
    del imatrix
    x = np.ascontiguousarray(rows, dtype=np.float32)
    u = x.view(np.uint32)
    s = np.add(u, np.uint32(0x7FFF), out=scratch("bf16.s", u.shape, np.uint32))  # NaNs may wrap
    has_nan = x.size > 0 and bool(np.isnan(x.min()))  # while x is in cache; min propagates NaN
    odd_tie = np.bitwise_or(s, np.uint32(0xFFFE0000), out=scratch("bf16.t", u.shape, np.uint32))
    ties = x.size > 0 and odd_tie.max() == np.uint32(0xFFFFFFFF)
    s >>= np.uint32(16)
    dst = _destination(x, np.dtype("<u2"), out)
    np.copyto(dst, s, casting="unsafe")
    if ties:
        dst[odd_tie == np.uint32(0xFFFFFFFF)] += np.uint16(1)
    if has_nan:
        nan = np.isnan(x)
        dst[nan] = fp32_to_bf16_bits(x[nan])
    return dst.view(np.uint8).reshape(x.shape[0], -1)
