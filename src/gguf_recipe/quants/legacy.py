"""Legacy 32-element block types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Without an imatrix these follow ``quantize_row_*_ref``; with one, ``quantize_row_q{4,5}_{0,1}_impl``
(a weighted ``make_qx_quants`` / ``make_qkx3_quants`` search). Q8_0 ignores the imatrix.

Layout: every function works on the chunk transposed to ``(32, n_blocks)`` so that each step is one
contiguous vector op over all blocks and a sum over the block (axis 0) is numpy's sequential
row-by-row reduction, i.e. C's ``s += a[i]`` order. The bytes are transposed back once at the end.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from ._numeric import F32Array, U8Array, fp32_to_fp16_bits

__all__ = ["quantize_q4_0", "quantize_q4_1", "quantize_q5_0", "quantize_q5_1", "quantize_q8_0"]

QK = 32
_F = np.float32


def _quiet(
    fn: Callable[[F32Array, F32Array | None], U8Array],
) -> Callable[[F32Array, F32Array | None], U8Array]:
    """Run a quantizer with numpy's FP warnings off: inf/NaN intermediates (overflowing fp16 scales,
    1/d of a subnormal d) are part of ggml's behaviour and must not surface as warnings."""

    @functools.wraps(fn)
    def run(rows: F32Array, imatrix: F32Array | None) -> U8Array:
        with np.errstate(all="ignore"):
            return fn(rows, imatrix)

    return run


# roundf(v) == trunc(v + copysign(nextafter(0.5, 0), v)) for every float32 (checked exhaustively on [0, 130]).
_HALF_DOWN = np.nextafter(_F(0.5), _F(0.0))
_GROUP_MAX_EPS = _F(1e-15)


# --------------------------------------------------------------------------------------------- helpers


def _blocks_t(rows: F32Array) -> F32Array:
    """The chunk as ``(32, n_blocks)``: column ``b`` is block ``b`` (row-major block order)."""
    xt: F32Array = np.ascontiguousarray(rows.reshape(-1, QK).T)
    return xt


def _weights_t(imatrix: F32Array, n_rows: int) -> F32Array:
    """The imatrix laid out like ``_blocks_t`` (the same weights for every row)."""
    per_row = imatrix.reshape(-1, QK).T
    qw: F32Array = np.ascontiguousarray(np.tile(per_row, (1, n_rows)))
    return qw


def _fp16_bytes(v: F32Array) -> U8Array:
    with np.errstate(over="ignore"):  # scales past 65504 become inf, exactly as ggml stores them
        bits = fp32_to_fp16_bits(v).astype("<u2", copy=False)
    out: U8Array = bits.view(np.uint8).reshape(-1, 2)
    return out


def _assemble(n_rows: int, parts: list[U8Array]) -> U8Array:
    """Concatenate per-block byte fields; each part is ``(n_blocks, k)`` or ``(k, n_blocks)``-transposed."""
    nb = parts[0].shape[0]
    size = sum(p.shape[1] for p in parts)
    out = np.empty((nb, size), dtype=np.uint8)
    pos = 0
    for p in parts:
        out[:, pos : pos + p.shape[1]] = p
        pos += p.shape[1]
    res: U8Array = out.reshape(n_rows, -1)
    return res


def _nibbles(q: U8Array) -> U8Array:
    """qs[j] = q[j] | q[j+16] << 4 (low 4 bits of each), as ``(n_blocks, 16)``."""
    lo = q[:16] & np.uint8(0x0F)
    lo |= q[16:] << np.uint8(4)
    res: U8Array = lo.T
    return res


def _high_bits(q: U8Array) -> U8Array:
    """qh: bit j of a little-endian uint32 is bit 4 of q[j], as ``(n_blocks, 4)``."""
    h = (q >> np.uint8(4)) & np.uint8(1)
    packed: U8Array = np.packbits(h, axis=0, bitorder="little").T
    return packed


def _first_absmax(xt: F32Array) -> F32Array:
    """C's ``if (amax < fabsf(v)) { amax = fabsf(v); max = v; }``: the first element of largest |x|.

    +0.0 for an all-zero block (the initial value is never replaced).
    """
    mx = xt.max(axis=0)
    mn = xt.min(axis=0)
    neg = -mn
    # "+ 0.0" turns a -0.0 into +0.0 (all-zero blocks) and leaves everything else alone.
    m: F32Array = np.where(neg > mx, mn, mx) + _F(0.0)
    tie = np.flatnonzero((neg == mx) & (mx != 0))
    if tie.size:
        sub = xt[:, tie]
        first_pos = np.argmax(sub == mx[tie], axis=0)
        first_neg = np.argmax(sub == mn[tie], axis=0)
        m[tie] = np.where(first_neg < first_pos, mn[tie], mx[tie])
    return m


def _first_min(xt: F32Array) -> F32Array:
    """C's ``if (v < min) min = v;``: the minimum, with the sign of the first zero when it is zero."""
    mn: F32Array = xt.min(axis=0)
    zero = np.flatnonzero(mn == 0)
    if zero.size:
        sub = xt[:, zero]
        first = np.argmax(sub == 0, axis=0)
        mn[zero] = sub[first, np.arange(zero.size)]
    return mn


def _inverse(d: F32Array) -> F32Array:
    """``d ? 1.0f/d : 0.0f``."""
    inv = np.zeros_like(d)
    np.divide(_F(1.0), d, out=inv, where=d != 0)
    return inv


def _seq_sum(a: F32Array) -> F32Array:
    """``float s = 0; for i: s += a[i]`` over axis 0 (numpy reduces a non-inner axis row by row)."""
    s: F32Array = np.add.reduce(a, axis=0)
    return s


def _seq_sum_from_first(a: F32Array) -> F32Array:
    """``float s = a[0]; for i >= 1: s += a[i]`` (keeps the sign of a leading -0.0)."""
    s: F32Array = a[0].copy()
    for i in range(1, a.shape[0]):
        s += a[i]
    return s


def _row_sigma2(rows: F32Array) -> F32Array:
    """``sum_x2/n_per_row`` per row, with ``sum_x2 += x[j]*x[j]`` accumulated in order."""
    sq = rows * rows
    sum_x2 = np.add.accumulate(sq, axis=1)[:, -1]
    sigma2: F32Array = sum_x2 / _F(rows.shape[1])
    return sigma2


def _imatrix_weights(rows: F32Array, xt: F32Array, imatrix: F32Array) -> F32Array:
    """``weight[j] = qw[j] * sqrtf(sigma2 + x[j]*x[j])`` in block layout."""
    n_rows, n_per_row = rows.shape
    sigma2 = np.repeat(_row_sigma2(rows), n_per_row // QK)
    w = xt * xt
    w += sigma2
    np.sqrt(w, out=w)
    w *= _weights_t(imatrix, n_rows)
    return w


# ------------------------------------------------------------------------------- weighted searches


def _make_qx_quants(xt: F32Array, wt: F32Array, nmax: int) -> tuple[F32Array, U8Array]:
    """``make_qx_quants(32, nmax, x, L, rmse_type=1, qw)``: returns (scale, L) with L in [0, 2*nmax)."""
    mx = _first_absmax(xt)
    zero = np.abs(mx) < _GROUP_MAX_EPS
    safe = np.where(zero, _F(1.0), mx)
    wx = wt * xt
    lo, hi = _F(-nmax), _F(nmax - 1)
    buf = np.empty_like(xt)
    tmp = np.empty_like(xt)

    def sums(iscale: F32Array) -> tuple[F32Array, F32Array]:
        np.multiply(xt, iscale, out=buf)
        np.clip(buf, lo, hi, out=buf)
        np.rint(buf, out=buf)  # nearest_int then clamp == clamp then round (integer bounds)
        np.multiply(wx, buf, out=tmp)
        sumlx = _seq_sum(tmp)
        np.multiply(wt, buf, out=tmp)
        np.multiply(tmp, buf, out=tmp)
        return sumlx, _seq_sum(tmp)

    best_iscale = _F(-nmax) / safe
    sumlx, suml2 = sums(best_iscale)
    scale = np.zeros_like(sumlx)
    np.divide(sumlx, suml2, out=scale, where=suml2 != 0)
    best = scale * sumlx
    for step in (*range(-9, 0), *range(1, 10)):
        iscale = -(_F(nmax) + _F(0.1) * _F(step)) / safe
        sumlx, suml2 = sums(iscale)
        with np.errstate(invalid="ignore", divide="ignore"):
            upd = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            scale = np.where(upd, sumlx / suml2, scale)
        best = np.where(upd, scale * sumlx, best)
        best_iscale = np.where(upd, iscale, best_iscale)
    np.multiply(xt, best_iscale, out=buf)
    np.clip(buf, lo, hi, out=buf)
    np.rint(buf, out=buf)
    buf += _F(nmax)
    levels = buf.astype(np.uint8)
    levels[:, zero] = 0
    scale[zero] = 0
    return scale, levels


def _make_qkx3_quants(
    xt: F32Array, wt: F32Array, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[F32Array, F32Array, U8Array]:
    """``make_qkx3_quants(32, nmax, x, w, L, &the_min, Laux, rmin, rdelta, nstep, use_mad=false)``.

    Returns (scale, min, L) where ``min`` is the offset ggml stores (``-the_min``).
    """
    fnmax = _F(nmax)
    mn = _first_min(xt)
    mx = xt.max(axis=0)
    wx = wt * xt
    sum_w = _seq_sum_from_first(wt)
    sum_x = _seq_sum_from_first(wx)
    mn = np.where(mn > 0, _F(0.0), mn)
    flat = mx <= mn  # L = 0, scale 0, the_min = -min
    live = ~flat
    span = np.where(flat, _F(1.0), mx - mn)
    iscale = fnmax / span
    scale = _F(1.0) / iscale

    buf = np.empty_like(xt)
    tmp = np.empty_like(xt)
    wl = np.empty_like(xt)

    def levels_into(out: F32Array, isc: F32Array, m: F32Array) -> None:
        np.subtract(xt, m, out=out)
        out *= isc
        # v > 0 ? nearest_int(MIN(v, nmax)) : 0; fmax/fmin map NaN (inf*0) to 0 like "v > 0" does.
        np.fmax(out, _F(0.0), out=out)
        np.fmin(out, fnmax, out=out)
        np.rint(out, out=out)

    def weighted_sq_err(s: F32Array, m: F32Array, lv: F32Array) -> F32Array:
        np.multiply(lv, s, out=tmp)
        np.add(tmp, m, out=tmp)
        np.subtract(tmp, xt, out=tmp)
        np.multiply(tmp, tmp, out=tmp)
        np.multiply(tmp, wt, out=tmp)
        return _seq_sum(tmp)

    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        levels_into(buf, iscale, mn)
        best_mad = weighted_sq_err(scale, mn, buf)
        acc_iscale = iscale
        acc_min = mn
        for step in range(nstep + 1):
            isc = (_F(rmin) + _F(rdelta) * _F(step) + fnmax) / (mx - mn)
            levels_into(buf, isc, mn)
            np.multiply(wt, buf, out=wl)
            sum_l = _seq_sum(wl)
            np.multiply(wl, buf, out=tmp)
            sum_l2 = _seq_sum(tmp)
            np.multiply(wl, xt, out=tmp)
            sum_xl = _seq_sum(tmp)
            det = sum_w * sum_l2 - sum_l * sum_l
            ok = (det > 0) & live
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            pos = this_min > 0
            this_min = np.where(pos, _F(0.0), this_min)
            this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
            mad = weighted_sq_err(this_scale, this_min, buf)
            upd = ok & (mad < best_mad)
            best_mad = np.where(upd, mad, best_mad)
            scale = np.where(upd, this_scale, scale)
            acc_iscale = np.where(upd, isc, acc_iscale)
            acc_min = np.where(upd, mn, acc_min)
            mn = np.where(upd, this_min, mn)
        levels_into(buf, acc_iscale, acc_min)
    levels = buf.astype(np.uint8)
    levels[:, flat] = 0
    scale = np.where(flat, _F(0.0), scale)
    return scale, mn, levels


# ------------------------------------------------------------------------------------------- types


@_quiet
def quantize_q8_0(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    del imatrix  # quantize_q8_0 ignores it
    xt = _blocks_t(rows)
    # MAX(amax, fabsf(v)) from amax = 0.0f never yields -0.0; "+ 0.0" clears numpy's zero sign.
    amax = np.maximum(xt.max(axis=0), -xt.min(axis=0)) + _F(0.0)
    d = amax / _F(127)
    v = xt * _inverse(d)
    h = np.copysign(_HALF_DOWN, v)
    v += h
    with np.errstate(invalid="ignore"):
        q = v.astype(np.int8).view(np.uint8)
    return _assemble(rows.shape[0], [_fp16_bytes(d), q.T])


def _q_0_ref(xt: F32Array, nmax: int) -> tuple[F32Array, U8Array]:
    """quantize_row_q{4,5}_0_ref: d = max/-nmax, q = MIN(2*nmax-1, (int8)(x*id + nmax + 0.5))."""
    d = _first_absmax(xt) / _F(-nmax)
    v = xt * _inverse(d)
    v += _F(nmax + 0.5)
    q = v.astype(np.uint8)
    np.minimum(q, np.uint8(2 * nmax - 1), out=q)
    return d, q


def _q_1_ref(xt: F32Array, levels: int) -> tuple[F32Array, F32Array, U8Array]:
    """quantize_row_q{4,5}_1_ref: d = (max-min)/levels, q = (uint8)((x-min)*id + 0.5)."""
    mn = _first_min(xt)
    # max - min of one element with itself is +0.0 whatever numpy's zero signs are; "+ 0.0" does that.
    d = (xt.max(axis=0) - mn + _F(0.0)) / _F(levels)
    v = xt - mn
    v *= _inverse(d)
    v += _F(0.5)
    q = v.astype(np.uint8)
    np.minimum(q, np.uint8(levels), out=q)
    return d, mn, q


@_quiet
def quantize_q4_0(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    xt = _blocks_t(rows)
    if imatrix is None:
        d, q = _q_0_ref(xt, 8)
    else:
        d, q = _make_qx_quants(xt, _imatrix_weights(rows, xt, imatrix), 8)
    return _assemble(rows.shape[0], [_fp16_bytes(d), _nibbles(q)])


@_quiet
def quantize_q5_0(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    xt = _blocks_t(rows)
    if imatrix is None:
        d, q = _q_0_ref(xt, 16)
    else:
        d, q = _make_qx_quants(xt, _imatrix_weights(rows, xt, imatrix), 16)
    return _assemble(rows.shape[0], [_fp16_bytes(d), _high_bits(q), _nibbles(q)])


@_quiet
def quantize_q4_1(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    xt = _blocks_t(rows)
    if imatrix is None:
        d, m, q = _q_1_ref(xt, 15)
    else:
        d, m, q = _make_qkx3_quants(xt, _imatrix_weights(rows, xt, imatrix), 15, -0.9, 0.05, 36)
    return _assemble(rows.shape[0], [_fp16_bytes(d), _fp16_bytes(m), _nibbles(q)])


@_quiet
def quantize_q5_1(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    xt = _blocks_t(rows)
    if imatrix is None:
        d, m, q = _q_1_ref(xt, 31)
    else:
        d, m, q = _make_qkx3_quants(xt, _imatrix_weights(rows, xt, imatrix), 31, -0.9, 0.05, 36)
    return _assemble(rows.shape[0], [_fp16_bytes(d), _fp16_bytes(m), _high_bits(q), _nibbles(q)])
