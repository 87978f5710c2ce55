"""Legacy 32-element block types: Q8_0, Q4_0, Q4_1, Q5_0, Q5_1.

Without an imatrix these follow ``quantize_row_*_ref``; with one, ``quantize_row_q{4,5}_{0,1}_impl``
(a weighted ``make_qx_quants`` / ``make_qkx3_quants`` search). Q8_0 ignores the imatrix.

Layouts: the imatrix searches work on the chunk transposed to ``(32, n_blocks)`` so that each step is
one contiguous vector op over all blocks and a sum over the block (axis 0) is numpy's row-by-row
reduction, i.e. C's ``s += a[i]`` order. The reference paths need no ordered sums and use a cheaper
"quad" layout (see ``_quads``), where the packing happens. The searches' levels are computed in the
``(32, n_blocks)`` layout (the make_qx_quants search keeps only each block's best iscale and computes
them once at the end) and moved to the quad layout as bytes.

The quad-layout paths keep their work arrays per thread (``_Work``): with ~40 numpy calls per chunk,
per-call costs (allocation, numpy scalars, Python wrappers) are a noticeable part of the time.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import numpy.typing as npt

from ._numeric import (
    F32Array,
    U8Array,
    cast_fp16_bits,
    finish_blocks,
    out_blocks,
    page_aligned,
    scratch,
    seq_sum,
)
from ._scale_search import clamped_levels, make_qx_quants_iscale

__all__ = ["quantize_q4_0", "quantize_q4_1", "quantize_q5_0", "quantize_q5_1", "quantize_q8_0"]

QK = 32
_F = np.float32


# roundf(v) == trunc(v + copysign(nextafter(0.5, 0), v)) for every float32 (checked exhaustively on [0, 130]).
_HALF_DOWN = np.nextafter(_F(0.5), _F(0.0))
_FLT_MAX = np.finfo(np.float32).max
_FLT_MIN = np.finfo(np.float32).tiny


# --------------------------------------------------------------------------------------------- helpers


_T_TILE = 256  # blocks per tile of the (32, n_blocks) transposition: the tile's rows stay in L1


def _blocks_t(rows: F32Array) -> F32Array:
    """The chunk as ``(32, n_blocks)``: column ``b`` is block ``b`` (row-major block order)."""
    nb = rows.size // QK
    src = rows.reshape(nb, QK)
    xt: F32Array = scratch("lg.xt", (QK, nb))
    for b0 in range(0, nb, _T_TILE):  # tiled: numpy's plain transposed copy is 1.5x slower
        np.copyto(xt[:, b0 : b0 + _T_TILE], src[b0 : b0 + _T_TILE].T)
    return xt


def _u32(v: int) -> npt.NDArray[np.uint32]:
    """A 0-d uint32 operand: numpy takes it faster than a scalar (~0.4 us a call, on ~40 calls)."""
    return np.array(v, dtype=np.uint32)


_F32_CONSTS: dict[float, F32Array] = {}


def _f32c(v: float) -> F32Array:
    """A cached 0-d float32 operand (see ``_u32``)."""
    c = _F32_CONSTS.get(v)
    if c is None:
        c = _F32_CONSTS[v] = np.array(v, dtype=np.float32)
    return c


_F16_BIAS = _u32((0xFFF - (112 << 23)) & 0xFFFFFFFF)  # round at bit 13; exponent bias 127 -> 15
_U1, _U4, _U13, _U16 = _u32(1), _u32(4), _u32(13), _u32(16)
_MAGNITUDE, _SIGN16, _NIBBLES = _u32(0x7FFFFFFF), _u32(0x8000), _u32(0x0F0F0F0F)
_SIGN32 = _u32(0x80000000)
_HALF_DOWN_BITS = _u32(int(_HALF_DOWN.view(np.uint32)))
_TWO_COPIES = np.array(0x100000001, dtype=np.uint64)
_NONE = slice(0)  # no rows
_TLS = threading.local()  # per-thread work arrays (_work) and tiled importances (_imatrix_tiled)


def _first_min(xt: F32Array) -> F32Array:
    """C's ``if (v < min) min = v;``: the minimum, with the sign of the first zero when it is zero."""
    mn: F32Array = xt.min(axis=0)
    zero = np.flatnonzero(mn == 0)
    if zero.size:
        sub = xt[:, zero]
        first = np.argmax(sub == 0, axis=0)
        mn[zero] = sub[first, np.arange(zero.size)]
    return mn


def _f32(a: npt.NDArray[Any]) -> F32Array:
    """Typing only: numpy's stubs widen float32 array arithmetic to float64; the values are float32."""
    return a


def _where(cond: npt.NDArray[np.bool_], a: F32Array | np.float32, b: F32Array | np.float32) -> F32Array:
    res: F32Array = np.where(cond, a, b)
    return res


def _inverse(d: F32Array) -> F32Array:
    """``d ? 1.0f/d : 0.0f``."""
    inv = np.divide(_F(1.0), d)
    if not d.all():
        inv[d == 0] = 0
    return inv


def _imatrix_weights(rows: F32Array, xt: F32Array, imatrix: F32Array) -> F32Array:
    """``weight[j] = qw[j] * sqrtf(sigma2 + x[j]*x[j])`` in block layout, where ``sigma2 = sum_x2 /
    n_per_row`` and ``sum_x2 += x[j]*x[j]`` runs over the whole row in order."""
    n_rows, n_per_row = rows.shape
    nbr = n_per_row // QK
    w: F32Array = np.multiply(xt, xt, out=scratch("lg.w", xt.shape))
    w3 = w.reshape(QK, n_rows, nbr)  # [i, row, block of the row]
    # In-order row sums: reduce the squares laid out as (n_per_row, n_rows) over axis 0. Built from
    # the block layout, far cheaper than transposing the rows themselves; one (n_rows, nbr) plane per
    # i, whose source (a contiguous block) stays in cache: 1.5x faster than one 3-D copy.
    seq = scratch("lg.seq", (nbr, QK, n_rows))
    for i in range(QK):
        np.copyto(seq[:, i, :], w3[i].T)
    sigma2 = seq_sum(seq.reshape(n_per_row, n_rows)) / _F(n_per_row)
    w += np.repeat(sigma2, nbr)
    np.sqrt(w, out=w)
    w *= _imatrix_tiled(imatrix, n_rows)
    return w


def _imatrix_tiled(imatrix: F32Array, n_rows: int) -> F32Array:
    """``qw`` in the block layout of ``n_rows`` rows (``(32, n_rows * nbr)``), kept per thread while the
    same importances come back (every chunk of a tensor): one plain multiply instead of a broadcast
    whose inner loop is one row's blocks (3x slower). The importances are compared bit for bit
    (a -0.0 or a NaN payload is a different importance vector)."""
    qw = np.ascontiguousarray(imatrix, dtype=np.float32).reshape(-1)
    nbr = qw.size // QK
    cached: tuple[F32Array, int, F32Array] | None = getattr(_TLS, "imatrix_tiled", None)
    if (
        cached is not None
        and cached[1] == n_rows
        and np.array_equal(cached[0].view(np.uint32), qw.view(np.uint32))
    ):
        return cached[2]
    tiled = np.empty((QK, n_rows, nbr), dtype=np.float32)
    np.copyto(tiled, qw.reshape(nbr, QK).T[:, None, :])
    res = tiled.reshape(QK, -1)
    _TLS.imatrix_tiled = (qw.copy(), n_rows, res)
    return res


# ------------------------------------------------------------------------------- weighted searches


def _levels_qx(
    w: _Work, xt: F32Array, iscale: F32Array, zero: npt.NDArray[np.bool_], nmax: int, finite: bool
) -> U8Array:
    """``make_qx_quants``' levels ``nmax + clamp(nearest_int(iscale * x))`` in quad layout, 0 in the
    ``zero`` blocks. Computed on the search's ``(32, n_blocks)`` layout, still in cache after the
    search (a new quad transposition of the rows reads them back from memory), then moved to the
    quad layout as bytes."""
    v = np.multiply(xt, iscale, out=scratch("lg.lv", xt.shape))
    clamped_levels(v, _F(-nmax), _F(nmax - 1), finite)
    v += _F(nmax)
    qt = scratch("lg.lt", xt.shape, np.uint8)
    np.copyto(qt, v, casting="unsafe")
    if zero.any():
        qt[:, zero] = 0
    return _quad_from_t(w, qt)


def _make_qkx3_quants(
    xt: F32Array, wt: F32Array, nmax: int, rmin: float, rdelta: float, nstep: int
) -> tuple[F32Array, F32Array, U8Array]:
    """``make_qkx3_quants(32, nmax, x, w, L, &the_min, Laux, rmin, rdelta, nstep, use_mad=false)``.

    Returns (scale, min, L) where ``min`` is the offset ggml stores (``-the_min``).
    """
    fnmax = _F(nmax)
    mn = _first_min(xt)
    mx = xt.max(axis=0)
    nan_blocks = np.flatnonzero(np.isnan(mx))
    if nan_blocks.size:
        # C's "if (x[i] < min) min = x[i]" (and max) skips NaNs, except a NaN x[0] that stays.
        sub = xt[:, nan_blocks]
        first_nan = np.isnan(sub[0])
        mx[nan_blocks] = np.where(first_nan, np.nan, np.fmax.reduce(sub, axis=0))
        mn[nan_blocks] = np.where(first_nan, np.nan, _first_min(np.where(np.isnan(sub), np.inf, sub)))
    wx = wt * xt
    sum_w = seq_sum(wt, from_first=True)
    sum_x = seq_sum(wx, from_first=True)
    mn = _where(mn > 0, _F(0.0), mn)
    flat = mx <= mn  # L = 0, scale 0, the_min = -min
    live = ~flat
    span = _where(flat, _F(1.0), mx - mn)
    iscale = fnmax / span
    scale = _F(1.0) / iscale

    buf = np.empty_like(xt)
    tmp = np.empty_like(xt)
    wl = np.empty_like(xt)
    nan_buf = np.empty(xt.shape, dtype=np.bool_)

    def levels_into(out: F32Array, isc: F32Array, m: F32Array) -> None:
        np.subtract(xt, m, out=out)
        out *= isc
        # MAX(0, MIN(nmax, nearest_int(v))): nearest_int's magic-number trick gives 0 for a NaN
        # v (inf*0) and -4194304 for +-inf (an inf iscale: max - min subnormal), so both give 0.
        bad = np.isfinite(out, out=nan_buf)
        np.logical_not(bad, out=bad)
        if bad.any():
            out[bad] = 0
        np.clip(out, _F(0.0), fnmax, out=out)
        np.rint(out, out=out)

    def weighted_sq_err(s: F32Array, m: F32Array, lv: F32Array) -> F32Array:
        np.multiply(lv, s, out=tmp)
        np.add(tmp, m, out=tmp)
        np.subtract(tmp, xt, out=tmp)
        np.multiply(tmp, tmp, out=tmp)
        np.multiply(tmp, wt, out=tmp)
        return seq_sum(tmp)

    # FP warnings are off (the callers' np.errstate): inf/NaN intermediates here mirror C.
    levels_into(buf, iscale, mn)
    best_mad = weighted_sq_err(scale, mn, buf)
    acc_iscale = iscale
    acc_min = mn
    for step in range(nstep + 1):
        isc = _f32((_F(rmin) + _F(rdelta) * _F(step) + fnmax) / (mx - mn))
        levels_into(buf, isc, mn)
        np.multiply(wt, buf, out=wl)
        sum_l = seq_sum(wl)
        np.multiply(wl, buf, out=tmp)
        sum_l2 = seq_sum(tmp)
        np.multiply(wl, xt, out=tmp)
        sum_xl = seq_sum(tmp)
        det = sum_w * sum_l2 - sum_l * sum_l
        ok = (det > 0) & live
        this_scale = _f32((sum_w * sum_xl - sum_x * sum_l) / det)
        this_min = _f32((sum_l2 * sum_x - sum_l * sum_xl) / det)
        pos = this_min > 0
        this_min = _where(pos, _F(0.0), this_min)
        this_scale = _where(pos, _f32(sum_xl / sum_l2), this_scale)
        mad = weighted_sq_err(this_scale, this_min, buf)
        upd = ok & (mad < best_mad)
        best_mad = _where(upd, mad, best_mad)
        scale = _where(upd, this_scale, scale)
        acc_iscale = _where(upd, isc, acc_iscale)
        acc_min = _where(upd, mn, acc_min)
        mn = _where(upd, this_min, mn)
    levels_into(buf, acc_iscale, acc_min)
    levels = buf.astype(np.uint8)
    levels[:, flat] = 0
    scale = _where(flat, _F(0.0), scale)
    return scale, mn, levels


# ------------------------------------------------------------------------------------------- types


# ----------------------------------------------------------------------- reference (no imatrix) paths
#
# The reference paths need no in-order sums, so they use a cheaper "quad" layout: the chunk's 16-byte
# groups (4 floats) are transposed as complex128 items, giving ``(8, n_blocks*4)`` where
# ``[k, 4*b + p]`` is element ``4*k + p`` of block ``b``. Per-block values are repeated 4 times to
# broadcast along the lanes; packed bytes come back as uint32 words transposed the same way.


_CHUNK_VALUES = 1 << 18  # quants.CHUNK_VALUES: a whole chunk's transposition is split in two
_WORK_CACHE_LIMIT = 1 << 20  # values per chunk; work arrays of bigger chunks are not kept between calls


class _Work:
    """The quad-layout paths' work arrays for chunks of ``nb`` blocks, with fixed views of them.

    Made once per thread and block count: one lookup per call instead of a ``scratch`` call (and a
    few reshapes) per array, which adds up over the ~40 numpy calls of a chunk.
    """

    quads: npt.NDArray[np.complex128]
    red: F32Array
    pairs: F32Array
    blk: F32Array
    bcast: F32Array
    pairs64: npt.NDArray[np.uint64]
    q: npt.NDArray[np.int8]
    h16: npt.NDArray[np.uint32]
    hi: npt.NDArray[np.uint32]
    lo: npt.NDArray[np.uint32]
    qh8: npt.NDArray[np.uint32]
    qh: npt.NDArray[np.uint32]

    def __init__(self, nb: int) -> None:
        n4 = 4 * nb
        self.nb = nb
        (
            self.quads,
            self.red,  # the 8-row reductions, per lane
            self.pairs,
            self.blk,  # per-block values; rows 0, 1: max, min
            self.bcast,  # per-block values repeated over the 4 lanes
            self.pairs64,
            self.q,
            self.h16,  # fp16 conversion of up to 2 scale rows
            self.hi,
            self.lo,
            self.qh8,
            self.qh,
        ) = page_aligned(
            ((8, nb), np.complex128),
            ((2, n4), _F),
            ((2, n4), _F),
            ((6, nb), _F),
            ((2, nb, 4), _F),
            ((2, nb), np.uint64),
            ((8, n4), np.int8),
            ((2, 2, nb), np.uint32),
            ((4, nb), np.uint32),
            ((4, nb), np.uint32),
            ((8, nb), np.uint32),
            ((nb,), np.uint32),
        )
        self.xq: F32Array = self.quads.view(np.float32).reshape(8, n4)
        self.lanes: F32Array = self.bcast.reshape(2, n4)
        self.bcast64: npt.NDArray[np.uint64] = self.bcast.view(np.uint64)  # (2, nb, 2)
        self.q_u8: U8Array = self.q.view(np.uint8)
        self._tops: dict[int, npt.NDArray[np.int8]] = {}
        self._half: npt.NDArray[np.uint32] | None = None
        # Fixed views, made once: a view costs 0.1-0.2 us, on a 1-row chunk's ~40 us.
        half = nb // 2 if nb * QK >= _CHUNK_VALUES else nb  # see _quads
        self.quad_tiles = [(b0, b0 + half, self.quads[:, b0 : b0 + half].T) for b0 in range(0, nb, half)]
        self.blk_rows = tuple(self.blk)
        self.blk_bits = tuple(r.view(np.uint32) for r in self.blk)
        # per reduction: the lanes, the shifted views of the pairwise combination, the block values
        self.combine = [
            (lanes, lanes[:-2], lanes[2:], pairs[:-2], pairs[0::4], pairs[1::4], out)
            for lanes, pairs, out in zip(self.red, self.pairs, self.blk_rows[:2], strict=True)
        ]
        self.q_words = _words(self.q_u8)  # (8, nb): the levels' bytes as words
        # _lanes_into's buffers by the number of rows: (uint64 pairs, the two uint64 lanes, result)
        self.lane_bufs = {
            k: (pairs, out[..., 0], out[..., 1], lanes)
            for k, pairs, out, lanes in (
                (1, self.pairs64[0], self.bcast64[0], self.lanes[0]),
                (2, self.pairs64, self.bcast64, self.lanes),
            )
        }
        self.h16_rows = {k: (self.h16[0, :k], self.h16[1, :k]) for k in (1, 2)}  # _scale_fp16_* buffers
        self.blk_2d = tuple(self.blk[i : i + 1] for i in range(self.blk.shape[0]))  # rows as (1, nb)
        self.q_words_lo, self.q_words_hi = self.q_words[:4], self.q_words[4:]

    def half_bits(self) -> npt.NDArray[np.uint32]:
        """A uint32 array the size of the quad layout (Q8_0's signed halves), made on first use."""
        if self._half is None:
            self._half = np.empty(self.xq.shape, dtype=np.uint32)
        return self._half

    def top(self, value: int) -> npt.NDArray[np.int8]:
        """``value`` repeated over a quad row, int8 (the MIN(...) of the levels)."""
        t = self._tops.get(value)
        if t is None:
            t = self._tops[value] = np.full(self.xq.shape[1], value, dtype=np.int8)
        return t


def _work(nb: int) -> _Work:
    cache: dict[int, _Work] | None = getattr(_TLS, "work", None)
    if cache is None:
        cache = _TLS.work = {}
    w = cache.get(nb)
    if w is None:
        w = _Work(nb)
        if nb * QK <= _WORK_CACHE_LIMIT:
            if len(cache) >= 2:  # a tensor's full chunks and its last one; ~3 MB each
                cache.clear()
            cache[nb] = w
    return w


def _quads(rows: F32Array, w: _Work | None = None) -> F32Array:
    """The chunk in quad layout (``w.xq``; the calling thread's work arrays when ``w`` is None)."""
    if w is None:
        w = _work(rows.size // QK)
    groups = np.ascontiguousarray(rows).reshape(w.nb, QK).view(np.complex128)  # items of 4 floats
    # Copies in the input's order (8 strided output streams): the input usually comes from memory,
    # where one sequential read of it beats 8 strided passes (measured). Two halves for a whole
    # chunk: each half's output stays in L2 (3-8% faster than one copy on a 64x4096 chunk, measured).
    for b0, b1, dst in w.quad_tiles:
        np.copyto(dst, groups[b0:b1])
    return w.xq


def _lane_max_min(w: _Work, skip_nan: bool = True) -> tuple[F32Array, F32Array]:
    """Per-block (max, min) of ``w.xq`` into ``w.blk[0]``, ``w.blk[1]``, ignoring NaNs (C's
    comparisons never pick one): reduce the 8 rows, then combine the 4 lanes of each block. A block
    of NaNs only gives NaN. With ``skip_nan=False``, any NaN in a block gives NaN (for callers that
    treat such blocks separately).

    Only the value matters, not which zero sign wins a +-0 tie: callers normalise zero signs.
    """
    reds = (np.fmax, np.fmin) if skip_nan else (np.maximum, np.minimum)
    xq = w.xq
    for red, (lanes, lanes02, lanes13, pairs, pair0, pair1, out) in zip(reds, w.combine, strict=True):
        red.reduce(xq, axis=0, out=lanes)
        # Lanes (0, 2) and (1, 3) in one contiguous op over shifted views, then the two pairs: half
        # the strided work of combining the 4 lanes one by one.
        red(lanes02, lanes13, out=pairs)
        red(pair0, pair1, out=out)
    return w.blk_rows[0], w.blk_rows[1]


def _block_max_again(w: _Work) -> F32Array:
    """The blocks' max (NaNs skipped) back into ``w.blk[0]`` from the lane pairs ``_lane_max_min``
    left in ``w.pairs[0]``, after the row was overwritten."""
    mx: F32Array = np.fmax(w.pairs[0, 0::4], w.pairs[0, 1::4], out=w.blk[0])
    return mx


def _lanes_into(w: _Work, v: F32Array) -> F32Array:
    """``v`` (``(n_blocks,)`` or ``(k <= 2, n_blocks)``) with each value repeated 4 times (one copy
    per lane of the quad layout), in ``w.lanes``.

    Each value's bits times 0x100000001 as uint64 are two copies of it; two strided uint64 copies
    then fill the 4 lanes (np.repeat's per-item loop, or 4 strided float copies, cost more).
    """
    if v.ndim == 1:
        pairs, lane01, lane23, res = w.lane_bufs[1]
    else:
        rows = v.shape[0]
        pairs, lane01, lane23, res = w.lane_bufs[2]
        if rows != 2:
            pairs, lane01, lane23, res = pairs[:rows], lane01[:rows], lane23[:rows], res[:rows]
    np.copyto(pairs, v.view(np.uint32))
    pairs *= _TWO_COPIES
    np.copyto(lane01, pairs)
    np.copyto(lane23, pairs)
    return res


def _pack(n_rows: int, size: int, fields: list[tuple[int, npt.NDArray[Any]]]) -> U8Array:
    """Blocks of ``size`` bytes from (byte offset, field) pairs. A field is one uint16 per block
    ``(nb,)`` (an fp16 scale) or uint32 words ``(n_words, nb)`` / ``(nb,)``, written through
    uint16/uint32 views of the output (numpy handles the misalignment), one strided 1-D copy per
    word: a 2-D copy would iterate the short word axis innermost. (Used by ternary.py's MXFP4.)"""
    nb = fields[0][1].shape[-1]
    out = np.empty((nb, size), dtype=np.uint8)
    for off, f in fields:
        width = f.dtype.itemsize
        view = out[:, off : off + width * (f.size // nb)].view(f"<u{width}")
        for i, word in enumerate(f.reshape(-1, nb)):
            view[:, i] = word
    res: U8Array = out.reshape(n_rows, -1)
    return res


def _levels_i8(w: _Work, v: F32Array, top: int) -> U8Array:
    """``(uint8_t)MIN(top, (int8_t)v)``: C's truncating conversion (an out-of-range or NaN v gives
    the low byte of x86's 0x80000000, i.e. 0, as numpy's cast does), then the signed clamp."""
    np.copyto(w.q, v, casting="unsafe")
    np.minimum(w.q, w.top(top), out=w.q)
    return w.q_u8


def _scale_0(w: _Work, rows: F32Array, nmax: int) -> tuple[F32Array, F32Array | None]:
    """``d = max / -nmax`` where ``max`` is C's ``if (amax < fabsf(v)) { amax = fabsf(v); max = v; }``
    from amax = max = 0: the first element of largest |x|, NaNs skipped, +0.0 for a block of zeros.
    Takes the blocks' max and min from ``w.blk[:2]``; returns ``d`` (``w.blk[0]``) and, unless some
    blocks were redone, ``|d|`` (``w.blk[4]``) with the sign bits of ``d`` in ``w.blk[2]``'s memory
    (for ``_scale_fp16_fast``)."""
    mx, mn, neg_mn, sign, mag = w.blk_rows[:5]
    bits = w.blk_bits
    np.negative(mn, out=neg_mn)
    # -(mx + mn): its sign is that of d; it is 0 or NaN on a +-tie (zeros, +-inf, all NaN).
    np.subtract(neg_mn, mx, out=sign)
    np.fmax(mx, neg_mn, out=mag)
    mag /= _f32c(nmax)  # |max| / nmax rounds like max / -nmax
    # d's sign from `sign` by OR-ing its sign bit into |d| (np.copysign is scalar code, 4x slower)
    np.bitwise_and(bits[3], _SIGN32, out=bits[2])
    d: F32Array = mx  # the max is not needed any more
    np.bitwise_or(bits[4], bits[2], out=bits[0])
    np.abs(sign, out=sign)
    if np.minimum.reduce(sign) > 0:  # (ndarray.min goes through a Python wrapper)
        return d, mag
    idx = np.flatnonzero(~(sign > 0))
    sub = rows.reshape(-1, QK)[idx]
    a = np.abs(sub)
    a[np.isnan(a)] = -1
    first = np.argmax(a, axis=1)
    pick = sub[np.arange(idx.size), first]
    d[idx] = np.where(a[np.arange(idx.size), first] > 0, pick, _F(0.0)) / _F(-nmax)
    return d, None


def _c_min_max(mx: F32Array, mn: F32Array, rows: F32Array) -> tuple[F32Array, F32Array]:
    """C's ``if (v < min) min = v; if (v > max) max = v;`` from min = FLT_MAX, max = -FLT_MAX.

    NaNs are skipped (a block of NaNs keeps the initial values). A zero minimum takes the sign of
    the block's first zero (the strict ``<`` keeps the first one); a zero maximum then too, so
    that max - min is +0.0 as in C.
    """
    np.fmin(mn, _FLT_MAX, out=mn)
    np.fmax(mx, -_FLT_MAX, out=mx)
    zero = mn == 0
    if zero.any():
        idx = np.flatnonzero(zero)
        sub = rows.reshape(-1, QK)[idx]
        first = sub[np.arange(idx.size), np.argmax(sub == 0, axis=1)]
        mn[idx] = first
        mx[idx] = np.where(mx[idx] == 0, first, mx[idx])
    return mx, mn


def _words(q: U8Array) -> npt.NDArray[np.uint32]:
    """Quad-layout bytes ``(k, n_blocks*4)`` as little-endian words ``(k, n_blocks)``."""
    w: npt.NDArray[np.uint32] = q.view("<u4")
    return w


# (w & 0x10101010) * 0x01020408 moves bit 4 of byte p of a word to bit 28 + p: the 16 partial
# products land on distinct bits, so there are no carries.
_BIT_GATHER = _u32(0x01020408)
_HIGH_BITS, _U28 = _u32(0x10101010), _u32(28)
_NIBBLE_SHIFT = (np.arange(8, dtype=np.uint32) * np.uint32(4))[:, None]


def _high_bits(w: _Work) -> npt.NDArray[np.uint32]:
    """Bit 4 of the levels q[4k + p] (``w.q_u8``) moved to bit 4k + p of a word, ``(8, n_blocks)``:
    OR-ed over k, it is qh (bit j of a little-endian uint32 is bit 4 of q[j])."""
    h: npt.NDArray[np.uint32] = np.bitwise_and(w.q_words, _HIGH_BITS, out=w.qh8)
    h *= _BIT_GATHER
    h >>= _U28
    h <<= _NIBBLE_SHIFT
    return h


def _half_of_magnitude(magnitude: npt.NDArray[np.uint32], t: npt.NDArray[np.uint32]) -> None:
    """fp16 bits (exponent and mantissa, no sign) of float32 magnitudes into ``t``: round to nearest
    even at bit 13, exponent bias 127 -> 15. Right only where the result is a normal fp16 number
    (``_all_normal_half``)."""
    np.right_shift(magnitude, _U13, out=t)
    t &= _U1
    t += magnitude
    t += _F16_BIAS
    t >>= _U13


def _all_normal_half(t: npt.NDArray[np.uint32]) -> bool:
    """Whether every result of ``_half_of_magnitude`` is a normal fp16 number (not zero, subnormal,
    inf or NaN, and no exponent rebias wrapped)."""
    return bool(np.minimum.reduce(t, axis=None) >= 0x400 and np.maximum.reduce(t, axis=None) < 0x7C00)


def _scale_fp16_into(w: _Work, v: F32Array, dst: npt.NDArray[np.uint16]) -> None:
    """GGML_FP32_TO_FP16 bits of per-block scales ``v`` (``(k <= 2, n_blocks)``) into ``dst``
    (``(n_blocks, k)``, a strided view of the output blocks).

    numpy's float16 cast is scalar code (2.5 ns a value, as much as a pass over the whole chunk for
    8192 blocks); this rounds to nearest even in uint32 passes on the magnitude. Magnitudes whose
    result is not a normal fp16 number (zero, subnormal, inf, NaN, and small inputs whose exponent
    rebias wraps) are recognised by the result's range and redone by ``cast_fp16_bits`` (numpy's cast
    with ggml's NaN). The same rounding as ``_numeric.fp32_to_fp16_bits``, whose passes are tuned for
    big arrays: on the (k, n_blocks) scales this is 4-9 us a chunk faster (measured).
    """
    k = v.shape[0]
    u = v.view(np.uint32)
    mag, t = w.h16[0, :k], w.h16[1, :k]
    _half_of_magnitude(np.bitwise_and(u, _MAGNITUDE, out=mag), t)
    odd = None if _all_normal_half(t) else (t < 0x400) | (t >= 0x7C00)
    sign = np.right_shift(u, _U16, out=mag)
    sign &= _SIGN16
    t |= sign
    for i in range(k):  # one strided row each: a 2-D copy would run along the short axis
        np.copyto(dst[:, i], t[i], casting="unsafe")  # the low 16 bits
        if odd is not None:
            idx = np.flatnonzero(odd[i])
            dst[idx, i] = cast_fp16_bits(v[i, idx])


def _scale_fp16_fast(
    w: _Work,
    v: F32Array,
    dst: npt.NDArray[np.uint16],
    signed: slice = slice(None),
    sign_bits: F32Array | None = None,
) -> bool:
    """``_scale_fp16_into`` for the common case, where every scale of ``v`` (``(k <= 2, n_blocks)``)
    converts to a normal fp16 number: writes ``dst`` and returns True; otherwise writes nothing and
    returns False (the caller fixes its special blocks, then uses ``_scale_fp16_into``). Only the
    rows in ``signed`` get a sign bit: the others must be known non-negative where the result is
    normal. The range test stands in for the callers' zero, NaN and subnormal tests. ``sign_bits``
    (one row, only bit 31 set or not, as float32 bits) gives the sign of a one-row ``v`` of
    magnitudes (``signed`` empty): the magnitude mask is then not needed."""
    k = v.shape[0]
    u = v.view(np.uint32)
    mag, t = w.h16_rows[k]
    magnitude = u if sign_bits is not None else np.bitwise_and(u, _MAGNITUDE, out=mag)
    _half_of_magnitude(magnitude, t)
    if not _all_normal_half(t):
        return False
    signed_rows = range(k)[signed]
    if sign_bits is not None:
        t |= np.right_shift(sign_bits.view(np.uint32), _U16, out=mag)
    elif 0 in signed_rows:
        sign = np.right_shift(u[:1], _U16, out=mag[:1])
        sign &= _SIGN16
        t[:1] |= sign
    if k == 2:  # both halves of each block's first word: one strided copy instead of two
        t[1] <<= _U16
        t[0] |= t[1]
        if 1 in signed_rows:  # the second half's sign is bit 31 of the word: one pass, not two
            t[0] |= np.bitwise_and(u[1], _SIGN32, out=mag[1])
        dst.view("<u4")[:, 0] = t[0]
    else:
        np.copyto(dst[:, 0], t[0], casting="unsafe")  # the low 16 bits
    return True


def _pack_nibble_blocks(
    w: _Work, out: U8Array, scales: F32Array | None, qs_off: int, qh_off: int | None
) -> None:
    """Blocks of ``out``: the fp16 ``scales`` (``(n_blocks,)`` or ``(k, n_blocks)``; None when the
    caller wrote them) at byte 0, ``qh`` (bit 4 of the 32 levels ``w.q_u8``, 5-bit types) at
    ``qh_off``, ``qs`` at ``qs_off``, each computed straight into its strided (possibly misaligned)
    view of ``out``.
    """
    nb = w.nb
    if scales is not None:
        k = scales.size // nb
        _scale_fp16_into(w, scales.reshape(k, nb), out[:, : 2 * k].view("<u2"))
    # qs[j] = q[j] | q[j+16] << 4 on 4 words per block (j = 4k + p sits at [k, 4b + p]); on whole
    # words because numpy's uint8 shift is scalar code. C's uint8 ``qs |= xi1 << 4`` keeps only the
    # low nibble of q[j+16]: 5-bit levels are masked first so that no byte spills into the next, and
    # keep only the low nibble of q[j] too. 4-bit levels are already in [0, 15] (never negative,
    # MIN(15, ...) in C), so they need no mask.
    hi, lo = w.hi, w.q_words_lo
    if qh_off is None:
        np.left_shift(w.q_words_hi, _U4, out=hi)
    else:
        np.bitwise_and(w.q_words_hi, _NIBBLES, out=hi)
        hi <<= _U4
        lo = np.bitwise_and(lo, _NIBBLES, out=w.lo)
        # reduced into a contiguous word row first: numpy's reduction into a strided output is 5x slower
        qh = np.bitwise_or.reduce(_high_bits(w), axis=0, out=w.qh)
        out[:, qh_off : qh_off + 4].view("<u4")[:, 0] = qh
    np.bitwise_or(hi, lo, out=out[:, qs_off : qs_off + 16].view("<u4").T)


def quantize_q8_0(rows: F32Array, imatrix: F32Array | None, out: U8Array | None = None) -> U8Array:
    del imatrix  # quantize_q8_0 ignores it
    with np.errstate(all="ignore"):  # as quiet_fp
        return _q8_0(rows, out)


def _q8_0(rows: F32Array, dest: U8Array | None) -> U8Array:
    """quantize_row_q8_0_ref into ``dest`` (the caller's ``(n_rows, row_bytes)`` rows) when given."""
    nb = rows.size // QK
    w = _work(nb)
    xq = _quads(rows, w)
    mx, mn = _lane_max_min(w, skip_nan=False)
    # MAX(amax, fabsf(v)) from amax = 0.0f never yields -0.0; "+ 0.0" clears numpy's zero sign.
    d = np.maximum(mx, np.negative(mn, out=w.blk[2]), out=w.blk[2])
    d += _f32c(0.0)
    d /= _f32c(127.0)
    nan_d = _q8_0_nan_block_scales(rows, d) if np.isnan(np.maximum.reduce(d)) else None
    # Out-of-range x*id (elements before a block's last NaN) wrap to their low byte like C's
    # roundf -> int8 conversion; NaN/inf give 0.
    v = np.multiply(xq, _lanes_into(w, _inverse(d)), out=xq)
    # roundf(v) == trunc(v + copysign(_HALF_DOWN, v)); the signed half is made from v's sign bit,
    # as np.copysign is scalar code (160 us a chunk against 45 for the two integer passes).
    half = np.bitwise_and(v.view(np.uint32), _SIGN32, out=w.half_bits())
    half |= _HALF_DOWN_BITS
    v += half.view(np.float32)
    np.copyto(w.q, v, casting="unsafe")
    out = out_blocks(dest, nb, 34)
    scale = out[:, :2].view("<u2")
    _scale_fp16_into(w, d.reshape(1, nb), scale)
    if nan_d is not None:
        scale[nan_d, 0] = 0x7E00  # GGML_FP32_TO_FP16 of any NaN (numpy keeps the payload)
    words = out[:, 2:].view("<u4")
    for i, row in enumerate(_words(w.q_u8)):  # one strided row each: a 2-D copy runs along the short axis
        words[:, i] = row
    return finish_blocks(out, rows.shape[0], dest)


def _q8_0_nan_block_scales(rows: F32Array, d: F32Array) -> npt.NDArray[np.intp]:
    """Redo ``d`` for the blocks holding a NaN (``d`` is NaN there) with C's ``amax = MAX(amax,
    fabsf(v))``: a NaN amax fails ``>`` and is replaced by the next ``|v|``, so amax is the max over
    the elements after the block's last NaN, or NaN when the block ends with one. Returns the blocks
    whose ``d`` stays NaN."""
    idx = np.flatnonzero(np.isnan(d))
    a = np.abs(rows.reshape(-1, QK)[idx].T)
    amax = np.zeros(idx.size, dtype=np.float32)
    for j in range(QK):
        amax = _where(amax > a[j], amax, a[j])
    d[idx] = amax / _F(127)
    res: npt.NDArray[np.intp] = idx[np.isnan(amax)]
    return res


def _q_0_ref(w: _Work, rows: F32Array, nmax: int, scale: npt.NDArray[np.uint16]) -> U8Array:
    """quantize_row_q{4,5}_0_ref: d = max/-nmax, q = MIN(2*nmax-1, (int8)(x*id + nmax + 0.5)); the
    fp16 d goes to ``scale`` (``(n_blocks, 1)``)."""
    xq = _quads(rows, w)
    _lane_max_min(w)
    d, mag = _scale_0(w, rows, nmax)
    inv = np.divide(_f32c(1.0), d, out=w.blk_rows[5])
    # a zero d (or a NaN, subnormal, ...) declines the fast conversion
    if mag is None or not _scale_fp16_fast(w, w.blk_2d[4], scale, signed=_NONE, sign_bits=w.blk_rows[2]):
        inv[d == 0] = 0  # d ? 1/d : 0
        _scale_fp16_into(w, w.blk_2d[0], scale)
    v = np.multiply(xq, _lanes_into(w, inv), out=xq)
    v += _f32c(nmax + 0.5)
    return _levels_i8(w, v, 2 * nmax - 1)


def _q_1_ref(w: _Work, rows: F32Array, levels: int, scales: npt.NDArray[np.uint16]) -> U8Array:
    """quantize_row_q{4,5}_1_ref: d = (max-min)/levels, q = (uint8)((x-min)*id + 0.5), through a
    MIN(levels, (int8)...) for Q4_1 only (Q5_1 has no MIN in C); the fp16 [d, min] go to ``scales``
    (``(n_blocks, 2)``)."""
    xq = _quads(rows, w)
    mx, mn = _lane_max_min(w)
    # rows [d, min, id] of w.blk: [d, min] is stored, [min, id] goes to the lanes
    d, inv = np.subtract(mx, mn, out=w.blk[0]), w.blk[2]  # d over the max
    d /= _f32c(levels)
    np.divide(_f32c(1.0), d, out=inv)
    # Normal fp16 scales leave out the special blocks: NaN (a block of NaNs or of one infinity,
    # where C keeps FLT_MAX / -FLT_MAX), a zero min (its sign), zero or subnormal scales.
    small = False
    if not _scale_fp16_fast(w, w.blk[:2], scales, signed=slice(1, 2)):
        if np.isnan(np.minimum.reduce(d)) or not np.minimum.reduce(np.abs(mn, out=inv)) > 0:
            _c_min_max(_block_max_again(w), mn, rows)
            np.subtract(mx, mn, out=d)
            d /= _f32c(levels)
        np.divide(_f32c(1.0), d, out=inv)
        # Only zero or subnormal scales need "d ? 1/d : 0" and can push (x-min)*id past levels + 0.5.
        small = not np.minimum.reduce(d) >= _FLT_MIN
        if small:
            inv[d == 0] = 0
        _scale_fp16_into(w, w.blk[:2], scales)
    lanes = _lanes_into(w, w.blk[1:3])
    v = np.subtract(xq, lanes[0], out=xq)
    v *= lanes[1]
    v += _f32c(0.5)
    if levels == 15 and small:
        return _levels_i8(w, v, levels)
    np.copyto(w.q_u8, v, casting="unsafe")  # same bytes as the int8 cast
    return w.q_u8


def _quad_from_t(w: _Work, q: U8Array) -> U8Array:
    """Levels from the ``(32, n_blocks)`` layout of the imatrix searches, in quad layout (``w.q_u8``):
    one strided copy per lane (3x faster than numpy's 3-D transposed copy of bytes)."""
    quads = w.q_u8.reshape(8, -1, 4)
    for p, lane in enumerate(q.reshape(8, 4, -1).transpose(1, 0, 2)):
        quads[:, :, p] = lane
    return w.q_u8


def _weighted_0(w: _Work, rows: F32Array, imatrix: F32Array, nmax: int) -> F32Array:
    """Q4_0 / Q5_0 with an imatrix: the scales of the weighted make_qx_quants search; its levels go
    to ``w.q_u8`` (quad layout)."""
    xt = _blocks_t(rows)
    d, iscale, zero, finite = make_qx_quants_iscale(xt, _imatrix_weights(rows, xt, imatrix), nmax)
    _levels_qx(w, xt, iscale, zero, nmax, finite)
    return d


def _weighted_1(w: _Work, rows: F32Array, imatrix: F32Array, levels: int) -> F32Array:
    """Q4_1 / Q5_1 with an imatrix: ``[scale, min]`` as ``(2, n_blocks)`` of the weighted
    make_qkx3_quants search; its levels go to ``w.q_u8`` (quad layout)."""
    xt = _blocks_t(rows)
    d, m, qt = _make_qkx3_quants(xt, _imatrix_weights(rows, xt, imatrix), levels, -0.9, 0.05, 36)
    _quad_from_t(w, qt)
    return np.stack([d, m])


def _quantize_nibbles(
    rows: F32Array, imatrix: F32Array | None, dest: U8Array | None, bits: int, offset: bool
) -> U8Array:
    """Q{bits}_0 (symmetric, ``d`` only, nmax = 2^(bits-1)) and Q{bits}_1 (``d`` and a min, 2^bits - 1
    levels). Block layout: the fp16 scales, qh (5-bit types), then 16 bytes of qs. The reference
    paths (no imatrix) write their fp16 scales themselves; the weighted searches return theirs."""
    n_scales = 2 if offset else 1
    qh_off = 2 * n_scales if bits == 5 else None
    qs_off = 2 * n_scales + (4 if bits == 5 else 0)
    nmax, levels = 1 << (bits - 1), (1 << bits) - 1
    with np.errstate(all="ignore"):  # as quiet_fp
        w = _work(rows.size // QK)
        out = out_blocks(dest, w.nb, qs_off + 16)
        scales: F32Array | None = None
        if imatrix is not None:
            # the levels go to w.q_u8
            scales = _weighted_1(w, rows, imatrix, levels) if offset else _weighted_0(w, rows, imatrix, nmax)
        elif offset:
            _q_1_ref(w, rows, levels, out[:, :4].view("<u2"))
        else:
            _q_0_ref(w, rows, nmax, out[:, :2].view("<u2"))
        _pack_nibble_blocks(w, out, scales, qs_off, qh_off)
        return finish_blocks(out, rows.shape[0], dest)


def quantize_q4_0(rows: F32Array, imatrix: F32Array | None, out: U8Array | None = None) -> U8Array:
    return _quantize_nibbles(rows, imatrix, out, 4, offset=False)


def quantize_q5_0(rows: F32Array, imatrix: F32Array | None, out: U8Array | None = None) -> U8Array:
    return _quantize_nibbles(rows, imatrix, out, 5, offset=False)


def quantize_q4_1(rows: F32Array, imatrix: F32Array | None, out: U8Array | None = None) -> U8Array:
    return _quantize_nibbles(rows, imatrix, out, 4, offset=True)


def quantize_q5_1(rows: F32Array, imatrix: F32Array | None, out: U8Array | None = None) -> U8Array:
    return _quantize_nibbles(rows, imatrix, out, 5, offset=True)
