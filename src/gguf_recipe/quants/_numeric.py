"""Numeric helpers shared by every quantizer family, written once.

ggml's reference quantizers are plain float32 C compiled without FMA; numpy float32 arithmetic done
step by step in the same order reproduces them bit for bit. These helpers are the places where the
exact C semantics matter (rounding, fp16/bf16 conversion).
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Callable
from typing import Any, TypeVar

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


_FP16_FAST_MIN_SIZE = 4096  # below this numpy's own conversion is cheaper than the integer passes


_T = TypeVar("_T", bound=np.generic)


def take_flat(a: npt.NDArray[_T], idx: npt.NDArray[np.integer[Any]]) -> npt.NDArray[_T]:
    """``a.reshape(-1)[idx]`` for indices known to be in range. ``mode="clip"`` skips numpy's bounds
    check and its buffered ``out=`` path; the method, not ``np.take``, whose Python wrapper costs ~1 us
    a call (the searches make thousands of these calls a chunk)."""
    out: npt.NDArray[_T] = a.take(idx, mode="clip")
    return out


def fp32_to_fp16_bits(x: npt.NDArray[np.float32], out: U16Array | None = None) -> U16Array:
    """GGML_FP32_TO_FP16 as raw uint16 bits (IEEE round to nearest even, like ggml's software path),
    written into ``out`` (same shape) when given.

    numpy's float16 cast converts element by element in scalar code; for big arrays the rounding is
    done here in uint32 passes instead (same bits). Results that are not normal fp16 numbers (zero,
    subnormal, overflow to inf, NaN) are rare and are recomputed with numpy's cast.
    """
    xf = np.ascontiguousarray(x, dtype=np.float32)
    if xf.size < _FP16_FAST_MIN_SIZE:
        small: U16Array = cast_fp16_bits(xf)
        if out is None:
            return small
        np.copyto(out, small)
        return out
    u = xf.view(np.uint32)
    # round to nearest even at bit 13: add 0xFFF plus the lowest kept bit, truncate. The sign bit rides along.
    t = np.right_shift(u, np.uint32(13), out=scratch("f16.t", u.shape, np.uint32))
    t &= np.uint32(1)
    t += u
    t += np.uint32(0xFFF)
    t >>= np.uint32(13)  # sign at bit 18, rounded float32 exponent+mantissa (10 bits) below
    sign = np.right_shift(t, np.uint32(3), out=scratch("f16.s", u.shape, np.uint32))
    sign &= np.uint32(0x8000)
    # normal fp16 results: rounded magnitude in [2^-14, 65504], float32 exponent field 113..142
    t &= np.uint32(0x3FFFF)
    t -= np.uint32(0x1C400)
    special = np.greater_equal(t, np.uint32(0x23C00 - 0x1C400), out=scratch("f16.b", u.shape, np.bool_))
    t += np.uint32(0x400)  # rebias: float32 exponent e -> fp16 exponent e - 112
    t |= sign
    if out is None:
        out = np.empty(u.shape, dtype=np.uint16)
    np.copyto(out, t, casting="unsafe")  # the low 16 bits
    if special.any():
        idx = np.flatnonzero(special)
        out.flat[idx] = cast_fp16_bits(xf.reshape(-1)[idx])  # any layout of `out`
    return out


def cast_fp16_bits(x: npt.NDArray[np.float32]) -> U16Array:
    """numpy's fp16 cast with ggml's NaN: numpy keeps a NaN's payload, ggml writes ``sign | 0x7E00``."""
    bits: U16Array = x.astype(np.float16).view(np.uint16)
    nan = (bits & np.uint16(0x7FFF)) > np.uint16(0x7C00)
    if nan.any():
        bits[nan] = (bits[nan] & np.uint16(0x8000)) | np.uint16(0x7E00)
    return bits


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


_F0 = np.float32(0.0)


def seq_sum(
    a: npt.ArrayLike, axis: int = 0, *, from_first: bool = False, out: F32Array | None = None
) -> F32Array:
    """C's sequential float32 sum along ``axis``: ``float s = 0; for (i...) s += a[i];``.

    ``from_first=True`` is ``float s = a[0]; for (i = 1...) s += a[i];`` (keeps a leading -0.0).

    ``np.add.reduce`` over a non-innermost axis of a C-contiguous array adds whole slices in order,
    which is C's order; but when the axes after ``axis`` hold a single element, numpy makes the summed
    axis the inner loop and sums it pairwise. Such an axis is moved to the front (one copy, then whole
    slices add in order, 5-10x faster than accumulating along a short inner axis); only a sum with
    nothing beside it goes through ``np.add.accumulate``, which is always sequential.
    """
    arr = np.ascontiguousarray(a, dtype=np.float32)
    ax = axis % arr.ndim
    if math.prod(arr.shape[ax + 1 :]) == 1 and math.prod(arr.shape[:ax]) > 1:
        arr, ax = np.ascontiguousarray(np.moveaxis(arr, ax, 0)), 0
    if arr.shape[ax] == 0:
        res0 = np.zeros(arr.shape[:ax] + arr.shape[ax + 1 :], dtype=np.float32)
        if out is None:
            return res0
        np.copyto(out, res0)
        return out
    if math.prod(arr.shape[ax + 1 :]) > 1:
        res: F32Array = np.add.reduce(arr, axis=ax, initial=_F0, out=out)
        if from_first:
            # Starting from a[0] instead of +0.0 differs only where every term is -0.0 (the sum stays -0.0).
            flat = res.reshape(-1)
            zero = np.flatnonzero(flat == 0)
            if zero.size:
                terms = np.moveaxis(arr, ax, 0).reshape(arr.shape[ax], -1)[:, zero]
                flat[zero[np.signbit(terms).all(axis=0) & (terms == 0).all(axis=0)]] = -0.0
        return res
    last = np.take(np.add.accumulate(arr, axis=ax), -1, axis=ax)
    if from_first:
        if out is None:
            return last  # type: ignore[no-any-return]
        np.copyto(out, last)
        return out
    # s = 0 + a[0] turns a leading -0.0 into +0.0; adding +0.0 at the end does the same (only an
    # all-(-0.0) sum differs between the two orders).
    return np.add(last, _F0, out=out)  # type: ignore[no-any-return]


def out_blocks(dest: U8Array | None, nb: int, size: int) -> U8Array:
    """The ``(n_blocks, size)`` blocks to write: ``dest`` itself (the caller's ``(n_rows, row_bytes)``
    output rows) when it is contiguous, else a new array (``finish_blocks`` copies it over)."""
    if dest is not None and dest.flags.c_contiguous:
        return dest.reshape(nb, size)
    return np.empty((nb, size), dtype=np.uint8)


def finish_blocks(out: U8Array, n_rows: int, dest: U8Array | None) -> U8Array:
    """The ``(n_rows, row_bytes)`` result of the blocks from ``out_blocks(dest, ...)``."""
    if dest is None:
        res: U8Array = out.reshape(n_rows, -1)
        return res
    if not dest.flags.c_contiguous:
        dest[...] = out.reshape(n_rows, -1)
    return dest


_TLS = threading.local()
_SCRATCH_CACHE_LIMIT = 1 << 20  # elements; bigger buffers (very long rows) are not kept between calls


_PAGE = 4096
_HUGE_PAGE = 2 << 20


def page_aligned(*specs: tuple[tuple[int, ...], type[np.generic]]) -> list[npt.NDArray[Any]]:
    """Empty arrays of the given (shape, dtype), carved from one allocation, each on a page boundary.

    numpy's own arrays start at arbitrary 16-byte offsets (large ones 16 bytes into a page), and
    numpy's loops run measurably slower on such work arrays than on page-aligned ones (the legacy quad
    paths 2-4%). numpy advises an allocation of 4 MiB or more for transparent huge pages; a set of
    2 MiB or more then starts on a huge page boundary (fewer TLB misses: another 1-2%, measured on
    64x4096 chunks). The alignment slack is never touched, so it costs address space only.
    """
    sizes = [-(-math.prod(shape) * np.dtype(dt).itemsize // _PAGE) * _PAGE for shape, dt in specs]
    total = sum(sizes)
    align = _HUGE_PAGE if total >= _HUGE_PAGE else _PAGE
    raw = np.empty(total + align, dtype=np.uint8)
    off = -raw.ctypes.data % align
    arrays = []
    for (shape, dt), size in zip(specs, sizes, strict=True):
        n = math.prod(shape) * np.dtype(dt).itemsize
        arrays.append(raw[off : off + n].view(dt).reshape(shape))
        off += size
    return arrays


def scratch(key: str, shape: tuple[int, ...], dtype: type[np.generic] = np.float32) -> npt.NDArray[Any]:
    """A work array of ``shape`` owned by this thread, reused between calls (contents undefined).

    Fresh multi-100-KB temporaries cost page faults (glibc maps and unmaps them, the kernel zeroes them)
    on every allocation, more than the arithmetic done in them. Each caller uses its own key prefix; a
    buffer must not be used after the same key is requested again.
    """
    pool: dict[str, npt.NDArray[Any]] | None = getattr(_TLS, "pool", None)
    if pool is None:
        pool = {}
        _TLS.pool = pool
    size = 1
    for d in shape:
        size *= d
    buf = pool.get(key)
    if buf is None or buf.size < size or buf.dtype != dtype:
        (buf,) = page_aligned(((size,), dtype))
        if size <= _SCRATCH_CACHE_LIMIT:
            pool[key] = buf
    return buf[:size].reshape(shape)


QuantFn = Callable[[F32Array, "F32Array | None"], U8Array]


def quiet_fp(fn: QuantFn) -> QuantFn:
    """Run a quantizer with numpy's FP warnings off: inf/NaN intermediates (overflowing fp16 scales,
    1/d of a subnormal d, 0/0 in all-zero blocks) are part of ggml's behaviour, not errors."""

    @functools.wraps(fn)
    def run(rows: F32Array, imatrix: F32Array | None) -> U8Array:
        with np.errstate(all="ignore"):
            return fn(rows, imatrix)

    return run
