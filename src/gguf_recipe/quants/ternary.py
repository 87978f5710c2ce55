"""Ternary and microscaling types: TQ1_0, TQ2_0 (``quantize_row_tq*_ref``) and MXFP4
(``quantize_row_mxfp4_ref``). ggml ignores the imatrix for all three.
"""

from __future__ import annotations

import functools

import numpy as np
import numpy.typing as npt

from ._numeric import F32Array, I32Array, U8Array, fp32_to_fp16_bits, quiet_fp, scratch
from .legacy import _lanes_into, _pack, _quads, _work

__all__ = ["quantize_mxfp4", "quantize_tq1_0", "quantize_tq2_0"]

_F = np.float32


QK_K = 256
QK_MXFP4 = 32


def _abs_max(blocks: F32Array) -> F32Array:
    """max |x| per row of ``blocks`` as C's ``MAX(amax, fabsf(v))`` from 0.0f (never -0.0).

    Reduced on the integer view: for non-negative floats the bit patterns order like the values,
    and an integer max has no NaN bookkeeping, so it is much faster than a float max.
    """
    bits = blocks.view(np.int32) & np.int32(0x7FFFFFFF)
    amax: F32Array = bits.max(axis=1).view(np.float32)
    return amax


def _fp16_bytes(v: F32Array) -> U8Array:
    with np.errstate(over="ignore"):  # |d| > 65504 overflows to inf, exactly as ggml stores it
        bits = fp32_to_fp16_bits(v).astype("<u2", copy=False)
    out: U8Array = bits.view(np.uint8).reshape(-1, 2)
    return out


def _c_amax(blocks: F32Array) -> F32Array:
    """``amax = MAX(amax, fabsf(v))`` for blocks holding a NaN: ``amax > NaN`` is false, so a NaN
    replaces amax and the next ``|v|`` replaces the NaN; amax is the max over the elements after
    the block's last NaN, or NaN when the block ends with one."""
    nan = np.isnan(blocks)
    n = blocks.shape[1]
    last = n - 1 - np.argmax(nan[:, ::-1], axis=1)
    after = np.arange(n)[None, :] > last[:, None]
    amax: F32Array = np.where(after, np.abs(blocks), _F(0.0)).max(axis=1)
    amax[last == n - 1] = np.nan
    return amax


def _c_lround_plus1(v: F32Array) -> U8Array:
    """``(uint8_t)((int)lroundf(v) + 1)`` for any v: half away from zero below 2^31 (exact in
    float64); larger values are multiples of 256 and inf/NaN give LONG_MIN, whose int is 0."""
    v64 = v.astype(np.float64)
    ok = np.abs(v64) < 2.0**31  # False for NaN
    r = np.trunc(v64 + np.copysign(0.5, v64), where=ok, out=np.zeros_like(v64))
    xi: U8Array = (r.astype(np.int64) + 1).astype(np.uint8)
    return xi


def _ternary_digits(rows: F32Array) -> tuple[F32Array, U8Array, bool]:
    """(d, xi, odd) with d = amax per 256-block and xi = lroundf(x/d) + 1 in {0, 1, 2}, shape
    (nb, 256); ``odd`` when some block went through C's out-of-range conversions (a NaN, or 1/d
    overflowing for a subnormal d), where xi is the low byte of ``(int)lroundf(x*id) + 1``."""
    blocks = rows.reshape(-1, QK_K)
    d = _abs_max(blocks)
    nan_blocks = np.flatnonzero(np.isnan(d))
    if nan_blocks.size:
        d[nan_blocks] = _c_amax(blocks[nan_blocks])
    inv = np.zeros_like(d)
    np.divide(_F(1.0), d, out=inv, where=d != 0)  # d ? 1.0f/d : 0.0f (a NaN d gives a NaN id)
    v = blocks * inv[:, None]
    # |v| <= 1, so lroundf(v) + 1 is 2 for v >= 0.5, 0 for v <= -0.5, else 1.
    xi = (v >= _F(0.5)).view(np.uint8) + np.uint8(1)
    xi -= (v <= _F(-0.5)).view(np.uint8)
    odd = np.union1d(nan_blocks, np.flatnonzero(np.isinf(inv)))  # |v| may exceed 1 after a NaN
    if odd.size:
        xi[odd] = _c_lround_plus1(v[odd])
    return d, xi, bool(odd.size)


@quiet_fp
def quantize_tq2_0(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    del imatrix  # quantize_tq2_0 ignores it
    d, xi, odd = _ternary_digits(rows)
    nb = xi.shape[0]
    if odd:
        xi &= np.uint8(3)  # q += (xi & 3) << (2*n)
    # byte c*32 + m holds the elements c*128 + n*32 + m (n = 0..3) at bit 2n.
    g = xi.reshape(nb, 2, 4, 32)
    qs = g[:, :, 0] | (g[:, :, 1] << np.uint8(2))
    qs |= g[:, :, 2] << np.uint8(4)
    qs |= g[:, :, 3] << np.uint8(6)
    out = np.empty((nb, 66), dtype=np.uint8)
    out[:, :64] = qs.reshape(nb, 64)
    out[:, 64:] = _fp16_bytes(d)
    res: U8Array = out.reshape(rows.shape[0], -1)
    return res


def _pack_trits(digits: U8Array, n_digits: int) -> U8Array:
    """Horner ``q = q*3 + xi`` over axis 1 (most significant first), then ggml's ceiling scaling."""
    q8 = digits[:, 0].copy()  # uint8_t q: wraps like C where an out-of-range xi makes it overflow
    for n in range(1, n_digits):
        q8 *= np.uint8(3)
        q8 += digits[:, n]
    if n_digits == 4:  # qh: shift the first value to the most significant of five trits
        q8 *= np.uint8(3)
    q = q8.astype(np.uint16)
    q = (q * np.uint16(256) + np.uint16(242)) // np.uint16(243)
    packed: U8Array = q.astype(np.uint8)
    return packed


@quiet_fp
def quantize_tq1_0(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    del imatrix  # quantize_tq1_0 ignores it
    d, xi, _ = _ternary_digits(rows)
    nb = xi.shape[0]
    out = np.empty((nb, 54), dtype=np.uint8)
    # qs[m], m < 32: elements m + 32n (n = 0..4); qs[32+m], m < 16: 160 + m + 16n; qh[j]: 240 + j + 4m.
    out[:, :32] = _pack_trits(xi[:, :160].reshape(nb, 5, 32), 5)
    out[:, 32:48] = _pack_trits(xi[:, 160:240].reshape(nb, 5, 16), 5)
    out[:, 48:52] = _pack_trits(xi[:, 240:].reshape(nb, 4, 4), 4)
    out[:, 52:] = _fp16_bytes(d)
    res: U8Array = out.reshape(rows.shape[0], -1)
    return res


# kvalues_mxfp4 = {0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12} (in units of d).
# best_index_mxfp4 picks the first index of least |k*d - x|. For x >= 0 that is the nearest of the
# positive values 0..12 (index 0..7), ties going to the smaller one; for x < 0 the mirror image with
# index 8 + i (index 0 for a result of 0). All differences near a tie are exact (Sterbenz), so the tie
# is an exact midpoint: with t = ceil(2|x|/d), the index is the number of doubled midpoints
# (1, 3, 5, 7, 10, 14, 20) below t.
_MIDPOINTS2 = np.array([1, 3, 5, 7, 10, 14, 20])
_MAG_INDEX = np.searchsorted(_MIDPOINTS2, np.arange(33), side="left").astype(np.uint8)
_INDEX_LUT = np.concatenate([_MAG_INDEX, np.where(_MAG_INDEX > 0, _MAG_INDEX + 8, 0)]).astype(np.uint8)


def _e8m0_half(e: U8Array) -> F32Array:
    """GGML_E8M0_TO_FP32_HALF: 2^(e-128) (subnormal patterns for e < 2)."""
    e32 = e.astype(np.uint32)
    bits = np.where(e32 < 2, np.uint32(0x00200000) << e32, (e32 - np.uint32(1)) << np.uint32(23))
    d: F32Array = bits.astype(np.uint32).view(np.float32)
    return d


def _mxfp4_exponent(amax: F32Array) -> U8Array:
    """``amax > 0 ? (uint8_t)(floorf(log2f(amax)) - 2 + 127) : 0``.

    glibc's log2f is the float64 log2 rounded to float (checked at every power-of-two boundary);
    the float->uint8 conversion of an out-of-range value keeps the low byte of the int32, as x86 does.
    """
    with np.errstate(divide="ignore"):
        lg = np.log2(amax.astype(np.float64)).astype(np.float32)
    v = np.floor(lg) - _F(2) + _F(127)
    e_int: I32Array = np.where(amax > 0, v, _F(0)).astype(np.int32)
    e: U8Array = (e_int & np.int32(0xFF)).astype(np.uint8)
    return e


_KVALUES_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], dtype=np.float32)


def _c_best_index(blocks: F32Array, d: F32Array) -> U8Array:
    """``best_index_mxfp4(x, d)`` as written: the first k of least ``fabsf(kvalues[k]*d - x)`` in
    float32, a NaN error never winning (and a NaN first error keeping index 0)."""
    kd = _KVALUES_MXFP4[None, :] * d[:, None]
    err = np.abs(kd[:, None, :] - blocks[:, :, None])
    first_nan = np.isnan(err[:, :, 0])
    err[np.isnan(err)] = np.inf
    best = np.argmin(err, axis=2)
    best[first_nan] = 0
    out: U8Array = best.astype(np.uint8)
    return out


_TOP_BIT = np.uint32(0x7FFFFFFF)
_EXP_INF = np.uint32(0x7F800000)


@quiet_fp
def quantize_mxfp4(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    """quantize_row_mxfp4_ref on the quad layout (see legacy._quads); chunks holding NaN/inf or
    extreme scales take :func:`_mxfp4_general`."""
    del imatrix  # quantize_mxfp4 ignores it
    w = _work(rows.size // 32)
    xq = _quads(rows, w)
    bits = xq.view(np.uint32)
    ab = np.bitwise_and(bits, _TOP_BIT, out=scratch("mx.ab", bits.shape, np.uint32))  # |x|
    amax_bits = _lane_max(ab.max(axis=0))
    if amax_bits.size == 0 or amax_bits.max() >= _EXP_INF:  # a NaN or inf somewhere
        return _mxfp4_general(rows)
    amax = amax_bits.view(np.float32)
    e = _mxfp4_exponent(amax)
    d = _e8m0_half(e)
    # 2/d is a power of two, so |x| * (2/d) is exact; below 32 for every x when the block's amax is.
    two_over_d = (2.0 / d.astype(np.float64)).astype(np.float32)
    if not (two_over_d.max() <= 2.0**127 and (amax * two_over_d).max() < 32):
        return _mxfp4_general(rows)
    u = np.multiply(ab.view(np.float32), _lanes_into(w, two_over_d), out=scratch("mx.u", xq.shape))
    np.ceil(u, out=u)
    k = scratch("mx.k", xq.shape, np.uint8)  # t = ceil(2|x|/d) in [0, 32]
    np.copyto(k, u, casting="unsafe")
    # index = number of doubled midpoints (1, 3, 5, 7, 10, 14, 20) below t: t >> 1 up to t = 8
    m = np.minimum(k, _const_u8(8, k.shape[-1]), out=scratch("mx.m", xq.shape, np.uint8))
    m >>= np.uint8(1)
    flag = scratch("mx.f", xq.shape, np.bool_)
    for c in (10, 14, 20):
        m += np.greater(k, _const_u8(c, k.shape[-1]), out=flag).view(np.uint8)
    # negative x: index 8 + m, except 0 for m == 0
    neg = np.greater(bits, _TOP_BIT, out=flag)
    neg &= np.greater(m, _const_u8(0, k.shape[-1]), out=scratch("mx.nz", xq.shape, np.bool_))
    m += np.left_shift(neg.view(np.uint8), np.uint8(3), out=k)
    words = m.view("<u4")  # quad layout: byte j of a block's qs gets levels j and j + 16
    qs = np.left_shift(words[4:], np.uint32(4), out=scratch("mx.qs", (4, words.shape[1]), np.uint32))
    qs |= words[:4]
    return _pack(rows.shape[0], 17, [(0, e), (1, qs)])


def _lane_max(lanes: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint32]:
    """Per-block max of the 4 lanes (quad layout)."""
    v = lanes.reshape(-1, 4)
    res: npt.NDArray[np.uint32] = np.maximum(v[:, 0], v[:, 1])
    np.maximum(res, v[:, 2], out=res)
    np.maximum(res, v[:, 3], out=res)
    return res


@functools.lru_cache(maxsize=32)
def _const_u8(value: int, n: int) -> U8Array:
    """``n`` copies of ``value`` (numpy's uint8 minimum/compare with a scalar is not vectorized)."""
    a = np.full(n, value, dtype=np.uint8)
    a.flags.writeable = False
    return a


def _mxfp4_general(rows: F32Array) -> U8Array:
    """quantize_row_mxfp4_ref for any input: NaN/inf, and scales where |x| * 2/d needs care."""
    blocks = rows.reshape(-1, QK_MXFP4)
    nb = blocks.shape[0]
    amax = _abs_max(blocks)
    finite = bool(np.isfinite(amax).all())
    if not finite:  # "if (amax < fabsf(v))" never picks a NaN
        nan_blocks = np.flatnonzero(np.isnan(amax))
        amax[nan_blocks] = _abs_max(np.where(np.isnan(blocks[nan_blocks]), _F(0.0), blocks[nan_blocks]))
    e = _mxfp4_exponent(amax)
    d = _e8m0_half(e)
    # 2/d is a power of two, so |x| * (2/d) is exact; in float64 it cannot overflow for tiny d.
    two_over_d = 2.0 / d.astype(np.float64)
    a = np.abs(blocks)
    if np.all(two_over_d <= 2.0**127):
        s = a * two_over_d.astype(np.float32)[:, None]
    else:
        s = (a.astype(np.float64) * two_over_d[:, None]).astype(np.float32)
    np.ceil(s, out=s)
    np.minimum(s, _F(32), out=s)
    key = s.astype(np.uint8)
    key += np.signbit(blocks).view(np.uint8) * np.uint8(33)
    if not finite:  # best_index_mxfp4: every err is inf or NaN for x = +-inf or NaN, so index 0
        key[~np.isfinite(blocks)] = 0
    idx = _INDEX_LUT[key]
    if not finite:
        # An infinite amax gives e = (uint8_t)inf = 0 and d = 2^-128: then k*d - x rounds to -x for
        # most x, the exact-midpoint argument above fails, and C's loop is redone as written.
        inf_blocks = np.flatnonzero(np.isinf(amax))
        if inf_blocks.size:
            idx[inf_blocks] = _c_best_index(blocks[inf_blocks], d[inf_blocks])
    out = np.empty((nb, 17), dtype=np.uint8)
    out[:, 0] = e
    out[:, 1:] = idx[:, :16] | (idx[:, 16:] << np.uint8(4))
    res: U8Array = out.reshape(rows.shape[0], -1)
    return res
