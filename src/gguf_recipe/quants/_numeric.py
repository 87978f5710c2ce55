"""Numeric helpers shared by every quantizer family, written once.

ggml's reference quantizers are plain float32 C compiled without FMA; numpy float32 arithmetic done
step by step in the same order reproduces them bit for bit. These helpers are the places where the
exact C semantics matter (rounding, fp16/bf16 conversion).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32Array = npt.NDArray[np.float32]
I32Array = npt.NDArray[np.int32]
U8Array = npt.NDArray[np.uint8]
U16Array = npt.NDArray[np.uint16]

_MAGIC = np.float32(12582912.0)  # 1.5 * 2**23


def nearest_int(x: npt.NDArray[np.float32]) -> I32Array:
    """ggml's ``nearest_int``: round half to even via the 1.5*2^23 trick (valid for |x| <= 4194303)."""
    val = np.asarray(x, dtype=np.float32) + _MAGIC
    return (val.view(np.int32) & np.int32(0x007FFFFF)) - np.int32(0x00400000)


def fp32_to_fp16_bits(x: npt.NDArray[np.float32]) -> U16Array:
    """GGML_FP32_TO_FP16 as raw uint16 bits (IEEE round to nearest even, like ggml's software path)."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).view(np.uint16)


def fp16_round(x: npt.NDArray[np.float32]) -> F32Array:
    """GGML_FP16_TO_FP32(GGML_FP32_TO_FP16(x)): the value ggml reads back after storing an fp16 scale."""
    return np.asarray(x, dtype=np.float32).astype(np.float16).astype(np.float32)


def fp32_to_bf16_bits(x: npt.NDArray[np.float32]) -> U16Array:
    """ggml_compute_fp32_to_bf16: round to nearest even, NaN kept quiet (``(u >> 16) | 64``)."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    is_nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    quiet = (u >> np.uint32(16)) | np.uint32(64)
    return np.where(is_nan, quiet, rounded).astype(np.uint16)
