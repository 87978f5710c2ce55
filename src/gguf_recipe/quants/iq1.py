"""IQ1_S and IQ1_M: ggml's ``quantize_row_iq1_s_impl`` / ``quantize_row_iq1_m_impl`` in numpy.

Both split every sub-block (32 values for IQ1_S, 16 for IQ1_M) into three groups (-1, 0, +1 plus a
shift of +-IQ1_DELTA) by two split points over the values sorted ascending, trying every pair of split
points (and every shift) with a running "best so far" scan, then snap each group of 8 levels to the
2048-point grid (nearest neighbour under the weighted error when the code is off the grid).

Exact reproduction of the running scan: every candidate's sums are computed for all sub-blocks at once
(C's sums regrouped into fewer passes, with a proven bound on the relative error of the resulting
``s = sumqx^2 / sumq2`` near the maximum) and ``s`` ranks them. ggml's test
``sumqx*sumqx > best_score*sumq2`` agrees with ``s_k > s_best`` whenever the two differ by more than that
error plus a few ulps, so only the candidates whose ``s`` lies within ``eps`` of the sub-block maximum
(separated from the rest by a gap of at least ``_BAND_S`` / ``_BAND_M``, over twice the error) can
change the outcome: their sums are recomputed exactly as in C and ggml's scan is replayed over them. Sub-blocks where that argument does not hold (values near
float32 under/overflow, negative weights) replay the whole scan. The neighbour search works the same
way: approximate distances pick the few neighbours that can win, which get C's exact sequential sum.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from ._iq1_tables import NGRID_IQ1S, iq1_tables
from ._iq2_tables import first_min
from ._numeric import F32Array, U8Array, fp32_to_fp16_bits, nearest_int, scratch, seq_sum, take_flat

__all__ = ["quantize_iq1_m", "quantize_iq1_s"]

I32Array = npt.NDArray[np.int32]
I64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]
IntpArray = npt.NDArray[np.intp]

QK_K = 256
_F = np.float32
_XP = np.array([-1 + 0.125, 0.125, 1 + 0.125], dtype=_F)  # x_p; IQ1S_DELTA == IQ1M_DELTA == 0.125
_XM = np.array([-1 - 0.125, -0.125, 1 - 0.125], dtype=_F)  # x_m
_FLT_MAX = _F(np.finfo(np.float32).max)
_BAND = 1e-5  # relative gap around the contender threshold; >> the few ulps ggml's test can be off
# IQ1_S ranks with regrouped sums (see _iq1s_search), off C's scores by < 1.1e-5 relative near the
# maximum: the band must exceed twice that (wider bands leave more blocks unseparated)
_BAND_S = 4e-5
_BAND_M = 1e-4  # likewise for IQ1_M, whose regrouped scores are off by < 3.7e-5
_EPS_STEPS = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
_COLLECT_EPS = 1e-3  # IQ1_M keeps the candidates that the first steps of _EPS_STEPS can need
_NB_TOL = _F(1e-5)  # relative slack of the approximate neighbour distances (their error is < 1e-6)


# --------------------------------------------------------------------------------------------------
# shared pieces


def _sort_order(x: F32Array, transposed: bool = False) -> tuple[I64Array, I64Array, I64Array]:
    """ggml's ``qsort(pairs, n, 8, iq1_sort_helper)``: ascending by value, -0.0 == +0.0, ties keep the
    original order (glibc's qsort is a stable merge sort for these small arrays).

    Returns (flat, key, sorted key): flat (nb, n) the positions in ``x.reshape(-1)`` of each row's
    values in sorted order, (n, nb) contiguous if ``transposed``; key (nb, n) is unique per row and ranks
    like the sort; the sorted keys get an extra last column above every key (see
    :func:`_split_levels`)."""
    nb, n = x.shape
    # the key carries the value's flat position in its low bits: within a row it ranks like the
    # position, and the sorted keys give the flat positions with one mask
    bits = max(1, int(nb * n - 1).bit_length())
    assert bits <= 31
    b = x.view(np.int32)
    # value order as ints, -0.0 == +0.0: b >= 0 -> b, b < 0 -> -(b & 0x7FFFFFFF) = (b ^ 0x7FFFFFFF) + 1
    sgn = b >> 31
    k32 = b ^ (sgn & np.int32(0x7FFFFFFF))
    k32 -= sgn
    key = k32.astype(np.int64)
    key <<= bits
    key += np.arange(nb * n, dtype=np.int64).reshape(nb, n)
    ks = np.empty((nb, n + 1), dtype=np.int64)
    ks[:, :n] = key
    ks[:, :n].sort(axis=1)
    ks[:, n] = np.iinfo(np.int64).max
    mask = np.int64((1 << bits) - 1)
    if transposed:
        flat: I64Array = np.bitwise_and(ks[:, :n].T, mask, out=np.empty((n, nb), dtype=np.int64))
    else:
        flat = ks[:, :n] & mask
    return flat, key, ks


def _split_levels(key: I64Array, ks: I64Array, s1: I64Array, s2: I64Array) -> npt.NDArray[np.int8]:
    """Level (j >= s1) + (j >= s2) of every value, j its position in the sorted order (see
    :func:`_sort_order`): compares keys with the keys at the split points instead of scattering."""
    nb, n = key.shape
    base = np.arange(0, ks.size, ks.shape[1], dtype=np.int64)
    ksf = ks.reshape(-1)
    # thresholds repeated per value: numpy's broadcast over a short inner axis runs many tiny loops
    flat = key.reshape(-1)
    lv = np.greater_equal(flat, np.repeat(np.take(ksf, base + s1), n)).view(np.int8)
    lv += np.greater_equal(flat, np.repeat(np.take(ksf, base + s2), n)).view(np.int8)
    return lv.reshape(nb, n)


def _block_stats(x: F32Array, w: F32Array, wx: F32Array) -> tuple[F32Array, F32Array, F32Array]:
    """sum(|w*x|), min(w), max(w) per block (for :func:`_safe`); reductions over a transposed copy run
    across blocks (numpy's reductions along a short last axis are slow)."""
    wt = np.ascontiguousarray(w.T)
    wxt = np.abs(wx.T)
    return wxt.sum(axis=0), wt.min(axis=0), wt.max(axis=0)


def _block_stats_t(wx_t: F32Array, w_t: F32Array) -> tuple[F32Array, F32Array, F32Array]:
    """:func:`_block_stats` from the values already transposed (n, nb), in any order within a block:
    the sum's order only moves it by ulps, immaterial to the range check it serves."""
    return np.abs(wx_t).sum(axis=0), w_t.min(axis=0), w_t.max(axis=0)


def _prefix_t(*vs: F32Array) -> F32Array:
    """``s[0] = 0; s[j+1] = s[j] + v[:, j]`` sequentially in float32 for every v (nb, n), returned
    transposed and stacked: (len(vs), n+1, nb)."""
    nb, n = vs[0].shape
    z = np.empty((len(vs), n + 1, nb), dtype=_F)
    z[:, 0] = 0
    for k, v in enumerate(vs):
        z[k, 1:] = v.T
    for j in range(n):
        np.add(z[:, j], z[:, j + 1], out=z[:, j + 1])
    return z


class Collected(NamedTuple):
    """Candidates gathered while the scores were computed (see :func:`_contenders`)."""

    cand: I64Array  # in ascending order within each block (the scan order)
    block: I64Array
    score: F32Array
    eps: float  # every candidate with score >= m*(1-eps)*(1-band) of its block is listed
    ncand: int  # candidates per block
    columns: Callable[[IntpArray], F32Array]  # full score columns of the given blocks


def _contenders(
    score: F32Array | None,
    m: F32Array,
    wsum: F32Array,
    wxabs: F32Array,
    wmin: F32Array,
    wmax: F32Array,
    collected: Collected | None = None,
    band: float | None = None,
) -> tuple[I64Array, I64Array]:
    """(block, candidate) of every candidate that can influence ggml's running scan, sorted by block then
    candidate index (the scan order). ``score`` is (n_candidates, n_blocks), ``m`` its maximum per block;
    wsum, wxabs, wmin, wmax: per block sum(w), sum(|w*x|), min(w), max(w) for the range check
    (:func:`_safe`). Instead of the table, ``collected`` can hold the candidates near the maximum (a
    superset of the contenders up to its ``eps``) and give the table's columns on demand. ``band``: the
    relative gap, well above the relative error of the scores near the maximum (default ``_BAND``)."""
    if band is None:
        band = _BAND
    nb = m.shape[0]
    if collected is not None:
        ncand = collected.ncand
    else:
        assert score is not None
        ncand = score.shape[0]
    unsafe = ~_safe(m, wsum, wxabs, wmin)
    # all weights zero: every sumq2 is exactly 0, no candidate passes `sumq2 > 0`
    unsafe &= ~((wmax == 0) & (wmin == 0))
    blocks: list[I64Array] = []
    cands: list[I64Array] = []
    todo = np.flatnonzero(~unsafe)
    sub = score
    cols = np.arange(nb)  # block of each column of sub
    pool = collected  # shrinks to the entries of the blocks still to settle
    for eps in _EPS_STEPS:
        if todo.size == 0:
            break
        # contenders: s >= lo; the block is settled when none of them falls in the band [lo, thr)
        thr = (m.astype(np.float64) * (1.0 - eps)).astype(_F)
        lo = (thr.astype(np.float64) * (1.0 - band)).astype(_F)
        with np.errstate(invalid="ignore"):
            if pool is not None and eps <= pool.eps:
                sel = np.flatnonzero(pool.score >= lo[pool.block])
                c, b, val = pool.cand[sel], pool.block[sel], pool.score[sel]
            else:
                if sub is None:
                    assert pool is not None
                    sub = pool.columns(cols)
                flat = np.flatnonzero(sub >= lo[cols][None, :])
                c, col = np.divmod(flat, sub.shape[1])
                b = cols[col]
                val = sub.reshape(-1)[flat]
        amb = unsafe.copy()
        amb[b[val < thr[b]]] = True
        keep = ~amb[b]
        blocks.append(b[keep])
        cands.append(c[keep])
        todo = np.flatnonzero(amb & ~unsafe)
        cols = todo
        if pool is not None:
            keep_p = np.flatnonzero(amb[pool.block] & ~unsafe[pool.block])
            pool = pool._replace(cand=pool.cand[keep_p], block=pool.block[keep_p], score=pool.score[keep_p])
            sub = None
        else:
            assert score is not None
            sub = score[:, todo]
    # unsafe or never separated: every candidate
    todo = np.concatenate([todo, np.flatnonzero(unsafe)])
    if todo.size:
        b, c = np.nonzero(np.ones((todo.size, ncand), dtype=bool))
        blocks.append(todo[b])
        cands.append(c)
    blk = np.concatenate(blocks)
    cand = np.concatenate(cands)
    # every step lists each of its blocks' candidates in ascending order (the pool keeps the order in
    # which the slabs produced them), so a stable sort by block alone gives scan order; block numbers
    # as int16 make numpy's stable sort a radix sort
    by_block = np.argsort(blk.astype(np.int16) if nb <= 1 << 15 else blk, kind="stable")
    return np.take(blk, by_block), np.take(cand, by_block)


def _collect_factor(band: float) -> np.float32:
    """The running threshold factor (1-eps)*(1-2*band) of the collecting loops as one float32: its
    rounding (< 1e-7 relative) is far inside the extra band that :func:`_contenders` does not rely on."""
    return _F((1.0 - _COLLECT_EPS) * (1.0 - 2 * band))


_TAIL_BLOCKS = 4  # _replay finishes this few blocks one candidate at a time...
_TAIL_STEPS = 512  # ...when they have at most this many candidates left in all


def _replay(blk: I64Array, qx: F32Array, q2: F32Array, nb: int) -> tuple[I64Array, F32Array]:
    """ggml's scan ``if (sumq2 > 0 && sumqx*sumqx > best_score*sumq2) {scale = sumqx/sumq2;
    best_score = scale*sumqx; ...}`` over the listed candidates (grouped by block, in scan order),
    starting from ``best_score = -FLT_MAX``.

    Returns the winning position in the list per block (-1: none) and its scale."""
    count = np.bincount(blk, minlength=nb)
    start = np.cumsum(count) - count
    best = np.full(nb, -1, dtype=np.int64)
    scale = np.zeros(nb, dtype=_F)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        sq = qx * qx
        sc_all = qx / q2
        bs_all = sc_all * qx
        ok = (q2 > 0) & (sq > -_FLT_MAX * q2)  # the test against the initial best_score
        one = np.flatnonzero(count == 1)
        j = start[one]
        hit = ok[j]
        best[one[hit]] = j[hit]
        many = np.flatnonzero(count > 1)
        if many.size:
            # blocks with several candidates, most first: row t of the (width, nm) table holds the t-th
            # candidate of the blocks that have more than t, in its first n_active[t] columns
            cm = count[many]
            col_order = np.argsort(-cm, kind="stable")
            many, cm = many[col_order], cm[col_order]
            nm = many.size
            width = int(cm[0])
            n_active = nm - np.searchsorted(cm[::-1], np.arange(width), side="right")
            col = np.full(nb, -1, dtype=np.int64)
            col[many] = np.arange(nm)
            e = np.flatnonzero(col[blk] >= 0)
            dest = (e - start[blk[e]]) * nm + col[blk[e]]
            q2p = np.empty(width * nm, dtype=_F)
            sqp = np.empty(width * nm, dtype=_F)
            bsp = np.empty(width * nm, dtype=_F)
            q2p[dest] = q2[e]
            sqp[dest] = sq[e]
            bsp[dest] = bs_all[e]
            bsc = np.full(nm, -_FLT_MAX, dtype=_F)
            bt = np.full(nm, -1, dtype=np.int64)
            for t in range(width):
                k = int(n_active[t])
                if k <= _TAIL_BLOCKS and int(n_active[t:].sum()) <= _TAIL_STEPS:
                    # a few blocks with long lists left: numpy scalars (float32 arithmetic, NaN
                    # compares false as in the arrays) cost less than a round of array calls per step
                    for c in range(k):
                        bc, tc = bsc[c], int(bt[c])
                        for tt in range(t, int(cm[c])):
                            i = tt * nm + c
                            q = q2p[i]
                            if q > 0 and sqp[i] > bc * q:
                                bc, tc = bsp[i], tt
                        bsc[c], bt[c] = bc, tc
                    break
                r = slice(t * nm, t * nm + k)
                upd = (q2p[r] > 0) & (sqp[r] > bsc[:k] * q2p[r])
                np.copyto(bsc[:k], bsp[r], where=upd)
                np.copyto(bt[:k], t, where=upd)
            found = bt >= 0
            best[many[found]] = start[many][found] + bt[found]
        hasb = best >= 0
        scale[hasb] = sc_all[best[hasb]]
    return best, scale


def _c_max(v: F32Array) -> F32Array:
    """``m = 0; for i: m = MAX(m, v[:, i])`` with C's ``MAX(a, b) = a > b ? a : b`` (NaN handling)."""
    m = np.zeros(v.shape[0], dtype=_F)
    for i in range(v.shape[1]):
        m = np.where(m > v[:, i], m, v[:, i])
    return m


def _imatrix_weights(xsb: F32Array, qw: F32Array) -> F32Array:
    """``weight[i] = qw[i] * sqrtf(sigma2 + x[i]*x[i])``, sigma2 = 2*sum(x^2)/QK_K per super-block."""
    sumx2 = seq_sum(xsb * xsb, axis=-1)
    sigma2 = (_F(2) * sumx2) / _F(QK_K)
    return qw * np.sqrt(sigma2[:, None] + xsb * xsb)


def _safe(m: F32Array, wsum: F32Array, wxabs: F32Array, wmin: F32Array) -> BoolArray:
    """Sub-blocks whose candidate values stay well inside float32's normal range (see module doc)."""
    m64 = m.astype(np.float64)
    w64 = wsum.astype(np.float64)
    mw = m64 * w64
    with np.errstate(invalid="ignore", over="ignore"):
        ok = (
            np.isfinite(m64)
            & (m64 >= 1e-36)
            & (mw >= 1e-34)
            & (mw <= 1e37)
            & (w64 >= 1e-30)
            & (w64 <= 1e36)
            & (wxabs.astype(np.float64) >= 1e-30)
            & (wxabs.astype(np.float64) <= 1e18)
            & (wmin >= 0)
        )
    return np.asarray(ok, dtype=bool)


_NB_BUCKETS = 16  # groups are sorted by neighbour-list length and padded per bucket (8: ~3% slower)


@functools.cache
def _nb_padded() -> tuple[IntpArray, U8Array, U8Array]:
    """Per neighbour-table row, padded to the longest list: (grid index, base-3 code of levels 0..3,
    of levels 4..7). Padding points at code 81, an extra +inf column of the distance tables. The codes
    as bytes: their rows are gathered whole (cheap) and widened to intp by the offset add."""
    t = iq1_tables()
    lo = np.full(t.nb_padded.shape, 81, dtype=np.uint8)
    hi = np.full(t.nb_padded.shape, 81, dtype=np.uint8)
    r, j = np.nonzero(t.nb_valid)
    e = t.nb_start[r] + j
    lo[r, j] = t.nb_lo3[e]
    hi[r, j] = t.nb_hi3[e]
    return t.nb_padded.astype(np.intp), lo, hi


@functools.cache
def _grid_values() -> F32Array:
    """The grid points' level values (2*n_grid, 8): at x_p (rows 0..n_grid-1), then at x_m. Level l's
    value is (l - 1) + delta = l + x[0], exactly (all values are multiples of 1/8)."""
    g = iq1_tables().grid_levels.astype(_F)
    return np.concatenate([g + _XP[0], g + _XM[0]])


def _table4x(t: F32Array) -> F32Array:
    """Sums over 4 coordinates, in coordinate order, for every base-3 code c = c0 + 3*c1 + 9*c2 + 27*c3:
    t (4, 3, n) -> (n, 82), column 81 = +inf (the padding code)."""
    n = t.shape[2]
    p = t[0]
    for i in (1, 2):
        p = (p[None, :, :] + t[i][:, None, :]).reshape(-1, n)
    out = np.empty((n, 82), dtype=_F)
    np.add(p.T[:, None, :], t[3].T[:, :, None], out=out[:, :81].reshape(n, 3, 27))
    out[:, 81] = np.inf
    return out


def _neighbour_search(rows: IntpArray, terms: F32Array, every: BoolArray) -> I64Array:
    """``iq1_find_best_neighbour2`` for n off-grid groups at once: rows (n,) their neighbour-table rows,
    sorted by list length; terms (8, 3, n): the ``w*diff*diff`` of coordinate i at level l; every (n,):
    the groups to check against every neighbour exactly (their terms may be negative).

    A neighbour's distance is C's sequential float32 sum over its 8 terms; the first neighbour with the
    smallest one wins. Distances are first approximated from two 81-entry tables per group (sums over
    coordinates 0..3, exactly C's partial sums, and over 4..7); only neighbours within ``_NB_TOL`` of
    the group's approximate minimum get C's exact sum. The groups come sorted by list length (so every
    bucket's tables are one contiguous, cache-resident slice) and each bucket's lists are padded to its
    longest one.
    """
    n = rows.shape[0]
    best: I64Array = np.zeros(n, dtype=np.int64)
    if n == 0:
        return best
    tables = iq1_tables()
    nb_grid, nb_lo, nb_hi = _nb_padded()
    counts = np.take(tables.nb_count, rows)
    terms[0] += _F(0)  # C starts from d2 = 0: a -0.0 first term becomes +0.0
    t4 = terms[4:]
    nparts = min(_NB_BUCKETS, n)
    bounds = [n * k // nparts for k in range(nparts + 1)]
    off_all = (np.arange(bounds[1] + 1, dtype=np.intp) * 82)[:, None]
    for a, b in itertools.pairwise(bounds):
        if b == a:
            continue
        m = b - a
        width = int(counts[b - 1])
        r = rows[a:b]
        off = off_all[:m]
        pa = _table4x(terms[:4, :, a:b])  # exactly C's partial sums
        qa = _table4x(terms[4:, :, a:b])
        ilo = np.add(np.take(nb_lo, r, axis=0)[:, :width], off, dtype=np.intp)
        ihi = np.add(np.take(nb_hi, r, axis=0)[:, :width], off, dtype=np.intp)
        d2a = np.take(pa, ilo)
        d2a += np.take(qa, ihi)
        # the minimum via argmin (numpy's argmin along a row is about twice as fast as its min); a
        # NaN anywhere in the row makes it NaN as with min
        kmin_a = d2a.argmin(axis=1)
        kmin_a += np.arange(0, m * width, width)
        dmin = np.take(d2a, kmin_a)
        thr = dmin + dmin * _NB_TOL + _F(1e-37)
        cand: BoolArray = np.less_equal(d2a, thr[:, None])
        # negative terms (cancellation) or NaN: check every neighbour of the group exactly
        ev: BoolArray = np.asarray(every[a:b] | np.isnan(dmin))
        if ev.any():
            cand[ev] = tables.nb_valid[r[ev], :width]
        fc = np.flatnonzero(cand)
        gl, j = np.divmod(fc, width)
        fl = nb_grid[np.take(r, gl), j]
        if fc.size == m:  # a single candidate in every group (at least one each): it wins
            best[a:b] = fl
            continue
        # groups with one candidate take it; the others compare C's exact sequential distances
        seg = np.flatnonzero(np.concatenate(([True], gl[1:] != gl[:-1])))
        cnt = np.diff(seg, append=fc.size)
        several = np.repeat(cnt > 1, cnt)
        one = np.flatnonzero(~several)
        best[np.take(gl, one) + a] = np.take(fl, one)
        e = np.flatnonzero(several)
        gle, fle = np.take(gl, e), np.take(fl, e)
        lev = tables.grid_levels[fle, 4:].astype(np.intp)
        d2 = np.take(pa, np.take(ilo, np.take(fc, e)))
        tg = t4[:, :, a:b]
        for i in range(4):
            d2 += tg[i][lev[:, i], gle]
        seg = np.flatnonzero(np.concatenate(([True], gle[1:] != gle[:-1])))
        kmin = first_min(d2, seg)
        if np.isnan(d2[kmin]).any():  # C's `d2 < best` never picks a NaN
            kmin = first_min(np.where(np.isnan(d2), _F(np.inf), d2), seg)
        best[gle[kmin] + a] = fle[kmin]
    return best


def _best_neighbours(
    o: I64Array, codes: I64Array, xg: F32Array, wg: F32Array, scale: F32Array, minus: BoolArray
) -> I64Array:
    """``iq1_find_best_neighbour2`` for the off-grid groups ``o`` (n,) of all groups at once.

    codes (n,): their level codes; of all groups: xg/wg (ng, 8), scale (ng,), minus (ng,): the group's
    level values are x_m (else x_p).
    """
    tables = iq1_tables()
    n = codes.shape[0]
    rows = np.take(tables.nb_row, codes).astype(np.intp)
    # by neighbour-list length (<= 205: as int16, numpy's stable sort is a radix sort)
    order = np.argsort(np.take(tables.nb_count, rows).astype(np.int16), kind="stable")
    so = np.take(o, order)
    # inputs in that order, coordinates / levels first: (8, n), (3, n)
    x8t = np.ascontiguousarray(np.take(xg, so, axis=0).T)
    w8t = np.ascontiguousarray(np.take(wg, so, axis=0).T)
    xx_t = np.where(np.take(minus, so)[None, :], _XM[:, None], _XP[:, None])  # (3, n)
    sq = np.take(scale, so)[None, :] * xx_t
    # the 3 possible terms w*diff*diff of every coordinate (diff = scale*q - x), (8, 3, n)
    terms = np.empty((8, 3, n), dtype=_F)
    for lvl in range(3):
        diff = np.subtract(sq[lvl], x8t)
        t = terms[:, lvl]
        np.multiply(w8t, diff, out=t)
        t *= diff
    # w*diff*diff < 0 needs w < 0; NaN distances are caught in the search
    every: BoolArray = np.asarray((w8t < 0).any(axis=0))
    best = np.empty(n, dtype=np.int64)
    best[order] = _neighbour_search(np.take(rows, order), terms, every)
    return best


def _grid_lookup(
    lv: npt.NDArray[np.int8], xg: F32Array, wg: F32Array, scale_g: F32Array, minus_g: BoolArray
) -> tuple[I64Array, BoolArray]:
    """Grid index of each group of 8 levels ``lv`` (n, 8); off-grid ones go through the neighbour search.

    Returns (index, off_grid)."""
    tables = iq1_tables()
    # u = sum(lv[:, i] << 2*i): the 8 level bytes of a group read as one little-endian word, their
    # 2-bit values packed together by shifts
    v = np.ascontiguousarray(lv).view("<u8").reshape(-1)
    v = (v | (v >> np.uint64(6))) & np.uint64(0x000F000F000F000F)
    v = (v | (v >> np.uint64(12))) & np.uint64(0x000000FF000000FF)
    v = (v | (v >> np.uint64(24))) & np.uint64(0xFFFF)
    u = v.astype(np.int64)
    gi = tables.kmap[u].astype(np.int64)
    off = gi < 0
    if off.any():
        o = np.flatnonzero(off)
        gi[o] = _best_neighbours(o, np.take(u, o), xg, wg, scale_g, minus_g)
    return gi, off


def _sub_blocks(
    xsb: F32Array, wsb: F32Array, bs: int, eps: np.float32
) -> tuple[F32Array, F32Array, I64Array]:
    """Values and weights as (n_sub, bs) sub-blocks, and the sub-blocks whose max |x| reaches ``eps``."""
    x = xsb.reshape(-1, bs)
    w = wsb.reshape(-1, bs)
    big = np.abs(x) >= eps
    if np.isnan(x).any():  # numpy's max is NaN there: never active
        act: I64Array = np.flatnonzero(np.abs(x).max(axis=1) >= eps)
        return x, w, act
    # any() along the short axis, 8 flags at a time
    words = big.view(np.uint64)
    hit = words[:, 0].copy()
    for i in range(1, words.shape[1]):
        hit |= words[:, i]
    return x, w, np.flatnonzero(hit)


def _make_positive(
    lv: npt.NDArray[np.int8], scale: F32Array
) -> tuple[npt.NDArray[np.int8], F32Array, BoolArray]:
    """A negative scale is flipped: levels l -> 2 - l, |scale|. Returns (levels, scale, was negative)."""
    neg = scale < 0
    # lv + neg*(2 - 2*lv) with neg repeated per value (a broadcast over the short rows is slower)
    m = np.repeat(neg.view(np.int8), lv.shape[1]).reshape(lv.shape)
    flipped = np.multiply(lv, -2, dtype=np.int8)
    flipped += 2
    flipped *= m
    flipped += lv
    return flipped, np.where(neg, -scale, scale), neg


def _snap_and_refit(
    lv: npt.NDArray[np.int8], xa: F32Array, wa: F32Array, scale: F32Array, minus: BoolArray
) -> tuple[I64Array, F32Array, F32Array]:
    """Snap the levels lv (na, bs) of every group of 8 to the grid, at level values x_m where minus
    (na*bs/8,) is set, else x_p, and
    refit ``scale`` of the sub-blocks where a group went off the grid. Returns (grid index (na, bs/8), scale,
    level values (na, bs) of the snapped groups)."""
    na, bs = xa.shape
    ng = bs // 8
    gi, offg = _grid_lookup(
        lv.reshape(na * ng, 8), xa.reshape(na * ng, 8), wa.reshape(na * ng, 8), np.repeat(scale, ng), minus
    )
    # any() over each sub-block's ng (2 or 4) flags, read as one ng-byte word
    refit = np.ascontiguousarray(offg).view(f"u{ng}") != 0
    q = np.take(_grid_values(), gi + np.where(minus, gi.dtype.type(NGRID_IQ1S), 0), axis=0)
    q = q.reshape(na, bs)
    wq = wa * q
    sqx = seq_sum(wq * xa, axis=-1)
    sq2 = seq_sum(wq * q, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        newscale = sqx / sq2
    return gi.reshape(na, ng), np.where(refit & (sqx > 0) & (sq2 > 0), newscale, scale), q


# --------------------------------------------------------------------------------------------------
# IQ1_S


def _split_pairs(n: int) -> tuple[I64Array, I64Array]:
    i1, i2 = np.triu_indices(n + 1)
    return i1.astype(np.int64), i2.astype(np.int64)


# the most frequent winning splits (i1, i2) on Gaussian data, used to seed the candidate loops
_SEEDS_S = ((8, 23), (9, 24), (7, 22), (10, 25))
_SEEDS_M = ((3, 12), (4, 12), (4, 13), (2, 12))
_PAIRS_S = _split_pairs(32)
_PAIRS_M = _split_pairs(16)


def _iq1s_search(
    x: F32Array, w: F32Array
) -> tuple[npt.NDArray[np.int8], F32Array, npt.NDArray[np.int8], BoolArray]:
    """The split search of quantize_row_iq1_s_impl over sub-blocks x, w (nb, 32).

    Returns L (nb, 32) levels, scale (nb,), shift (nb,) in {-1, 0, 1} (0: none found), found (nb,)."""
    nb, bs = x.shape
    flat, key, ks = _sort_order(x)
    wx = w * x
    # prefix sums over the sorted values, transposed to (bs+1, nb) so every step runs over all blocks
    pref = _prefix_t(np.take(wx, flat), np.take(w, flat))
    sx, sw = pref[0], pref[1]
    xp0, xp1, xp2 = _XP
    xm0, _, xm2 = _XM
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        # C: ((sumx[i1]*x[0]) + (sumx[i2]-sumx[i1])*x[1]) + (sumx[n]-sumx[i2])*x[2], sumq2 likewise with
        # (.)*x[k]*x[k]: a1 = sumx[i1]*x[0], a3 = (sumx[n]-sumx[i2])*x[2], b1 and b3 the sumq2 terms.
        # The ranking only has to be accurate (the contenders are recomputed exactly below), so the sums
        # are regrouped into an i2-only and an i1-only term, e.g. qx(+) = (s8[i2] + a3p[i2]) +
        # (a1p[i1] - s8[i1]) with s8 = sx*x[1]: two passes instead of five per score. Error bound: with
        # S = sum|w*x| and u = 2^-24, every term is <= 1.25*S and qx is off C's value by < 8*u*S (both
        # roundings counted); a score within 10% of the block maximum m >= (0.875*S)^2/(1.27*W) has
        # q2 >= W/64 (all |q| >= 1/8), hence |qx| >= 0.09*S and a relative score error < 1.1e-5 (see
        # _BAND_S). q2's terms are all >= 0 (_safe demands w >= 0): a few ulps. The x[1] = +-1/8
        # scalings are exact except for denormals (absolute error << u*S, S >= 1e-30 by _safe).
        # Computed in place in reused buffers (sums taken the other way round: same bits).
        shape = (bs + 1, nb)
        s8 = np.multiply(sx, xp1, out=scratch("iq1s.t8", shape))
        r = np.subtract(sx[bs], sx, out=scratch("iq1s.r", shape))
        up = np.multiply(r, xp2, out=scratch("iq1s.up", shape))  # i2 terms: a3 +- s8
        up += s8
        um = np.multiply(r, xm2, out=scratch("iq1s.um", shape))
        um -= s8
        cxp = np.multiply(sx, xp0, out=scratch("iq1s.cxp", shape))  # i1 terms: a1 -+ s8
        cxp -= s8
        cxm = np.multiply(sx, xm0, out=scratch("iq1s.cxm", shape))
        cxm += s8
        w64 = np.multiply(sw, xp1, out=s8)
        w64 *= xp1
        rw = np.subtract(sw[bs], sw, out=r)
        vq_cq: list[F32Array] = []
        for v, (x0, x2) in enumerate(((xp0, xp2), (xm0, xm2))):
            vq = np.multiply(rw, x2, out=scratch(f"iq1s.vq{v}", shape))  # b3 + w64
            vq *= x2
            vq += w64
            cq = np.multiply(sw, x0, out=scratch(f"iq1s.cq{v}", shape))  # b1 - w64
            cq *= x0
            cq -= w64
            vq_cq += [vq, cq]
        vp, cqp, vm, cqm = vq_cq
        # The score table is never stored (as for IQ1_M): each i1 slab lists the candidates within
        # _COLLECT_EPS of the running maximum of their block; :func:`columns` recomputes whole columns.
        cs: list[I64Array] = []
        bsl: list[I64Array] = []
        vs: list[F32Array] = []
        terms = ((up, cxp, vp, cqp), (um, cxm, vm, cqm))
        slab = scratch("iq1s.slab", (2 * (bs + 1) * nb,))
        bx = scratch("iq1s.bx", (bs + 1, nb))
        smax = np.full(nb, -np.inf, dtype=_F)
        # seed the running maximum with a few typical splits (scores computed as in the slabs, so
        # the seed never exceeds the final maximum): early slabs then collect far fewer candidates
        for i1, i2 in _SEEDS_S:
            for u, c, vq, cq in terms:
                qx = u[i2] + c[i1]
                qx *= qx
                qx /= vq[i2] + cq[i1]
                np.maximum(smax, qx, out=smax)
        fac = _collect_factor(_BAND_S)
        row0 = 0
        for i1 in range(bs + 1):
            k = bs + 1 - i1
            # (i2 - i1, shift, block): row 2*(i2 - i1) + shift is candidate 2*(row0 + i2 - i1) + shift
            out = slab[: 2 * k * nb].reshape(k, 2, nb)
            for v, (u, c, vq, cq) in enumerate(terms):
                qx = np.add(u[i1:], c[i1], out=bx[:k])
                qx *= qx
                q2 = np.add(vq[i1:], cq[i1], out=out[:, v])
                np.divide(qx, q2, out=q2)
            sc = out.reshape(2 * k, nb)
            np.maximum(smax, sc.max(axis=0), out=smax)
            lo_run = np.multiply(smax, fac, out=scratch("iq1s.lo", smax.shape))
            f = np.flatnonzero(np.greater_equal(sc, lo_run, out=scratch("iq1s.ge", sc.shape, np.bool_)))
            r, col = np.divmod(f, nb)
            r += 2 * row0
            cs.append(r)  # ascending: the pool lists every block's candidates in scan order
            bsl.append(col)
            vs.append(np.take(sc, f))
            row0 += k

    def columns(cols: IntpArray) -> F32Array:
        """Every candidate's score for the blocks ``cols`` (few), computed as in the slabs."""
        p1, p2 = _PAIRS_S
        res = np.empty((p1.size, 2, cols.size), dtype=_F)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            for v, (u, c, vq, cq) in enumerate(terms):
                qx = np.take(u, cols, axis=1)[p2] + np.take(c, cols, axis=1)[p1]
                qx *= qx
                q2 = np.take(vq, cols, axis=1)[p2] + np.take(cq, cols, axis=1)[p1]
                np.divide(qx, q2, out=res[:, v])
        return res.reshape(-1, cols.size)

    blk, cand = _contenders(
        None,
        smax,
        sw[bs],
        *_block_stats(x, w, wx),
        Collected(
            np.concatenate(cs), np.concatenate(bsl), np.concatenate(vs), _COLLECT_EPS, 2 * row0, columns
        ),
        band=_BAND_S,
    )
    pair = cand >> 1
    minus = (cand & 1).astype(bool)
    p1 = _PAIRS_S[0][pair]
    p2 = _PAIRS_S[1][pair]
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        f1 = p1 * nb + blk  # flat positions in the (bs+1, nb) prefix tables
        f2 = p2 * nb + blk
        sx1, sx2, sw1, sw2 = take_flat(sx, f1), take_flat(sx, f2), take_flat(sw, f1), take_flat(sw, f2)
        r3 = take_flat(sx, blk + bs * nb) - sx2  # sumx[n] - sumx[i2]
        rw3 = take_flat(sw, blk + bs * nb) - sw2
        d8 = (sx2 - sx1) * xp1
        qq = ((sw2 - sw1) * xp1) * xp1
        qx = np.where(minus, (sx1 * xm0 - d8) + r3 * xm2, (sx1 * xp0 + d8) + r3 * xp2)
        q2 = np.where(
            minus,
            (((sw1 * xm0) * xm0) + qq) + ((rw3 * xm2) * xm2),
            (((sw1 * xp0) * xp0) + qq) + ((rw3 * xp2) * xp2),
        )
    best, scale = _replay(blk, qx.astype(_F), q2.astype(_F), nb)
    found = best >= 0
    bi = best[found]
    s1 = np.zeros(nb, dtype=np.int64)
    s2 = np.zeros(nb, dtype=np.int64)
    shift = np.zeros(nb, dtype=np.int8)
    s1[found] = p1[bi]
    s2[found] = p2[bi]
    shift[found] = np.where(minus[bi], -1, 1)
    return _split_levels(key, ks, s1, s2), scale, shift, found


def _superblocks(rows: F32Array, imatrix: F32Array | None) -> tuple[F32Array, F32Array | None]:
    """rows (nrows, n_per_row) -> super-blocks (nsb, 256), with the matching imatrix slice of each."""
    nrows, npr = rows.shape
    xsb = rows.reshape(-1, QK_K)
    if imatrix is None:
        return xsb, None
    qw = np.broadcast_to(imatrix.reshape(1, -1, QK_K), (nrows, npr // QK_K, QK_K)).reshape(-1, QK_K)
    return xsb, qw


# Super-blocks per batch. Neither search stores its full score table (the slab buffers take a few MB);
# bigger batches amortise the per-call overhead of the candidate loops. Measured (512x4096 N(0,1)):
# IQ1_S 256 -> 1024 about 25% faster (a whole 2^18-value work item in one batch). IQ1_M's candidate
# loop runs over tiles of _TILE_M sub-blocks (512 super-blocks): bigger slabs fall out of cache, smaller
# ones pay more calls (tiles of 4096 / 2048: 5% / 15% slower); the rest of IQ1_M gains from one batch
# per work item (1024 vs 512 super-blocks: about 4% faster overall).
_BATCH = 1024
_BATCH_M = 1024
_TILE_M = 8192


def _batched(
    fn: Callable[[F32Array, F32Array | None], U8Array],
    rows: F32Array,
    imatrix: F32Array | None,
    batch: int = _BATCH,
) -> U8Array:
    xsb, qw = _superblocks(rows, imatrix)
    parts = [
        fn(xsb[i : i + batch], None if qw is None else qw[i : i + batch])
        for i in range(0, xsb.shape[0], batch)
    ]
    out = parts[0] if len(parts) == 1 else np.concatenate(parts)
    return out.reshape(rows.shape[0], -1)


def _iq1s_blocks(xsb: F32Array, qw: F32Array | None) -> U8Array:
    """IQ1_S bytes (nsb, 50) of super-blocks xsb (nsb, 256) with imatrix slices qw."""
    if qw is None:
        raise ValueError("IQ1_S requires an importance matrix")
    nsb = xsb.shape[0]
    wsb = _imatrix_weights(xsb, qw)
    nb = nsb * 8
    x, w, act = _sub_blocks(xsb, wsb, 32, _F(1e-12))  # GROUP_MAX_EPS_IQ1_S

    scales = np.zeros(nb, dtype=_F)
    shifts = np.ones(nb, dtype=np.int8)
    index = np.zeros((nb, 4), dtype=np.int64)
    if act.size:
        xa, wa = (x, w) if act.size == nb else (x[act], w[act])
        lv, scale, shift, found = _iq1s_search(xa, wa)
        lv, scale, neg = _make_positive(lv, scale)
        shift = np.where(neg, -shift, shift).astype(np.int8)
        gi, scale, _ = _snap_and_refit(lv, xa, wa, scale, np.repeat(shift != 1, 4))
        ok = found
        scales[act[ok]] = scale[ok]
        shifts[act[ok]] = shift[ok]
        index[act[ok]] = gi[ok]

    qh = ((index >> 8) << (3 * np.arange(4, dtype=np.int64))).sum(axis=1)
    sc8 = scales.reshape(nsb, 8)
    max_scale = _c_max(sc8)
    has = max_scale != 0
    d = max_scale / _F(15)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        dbits = np.where(has, fp32_to_fp16_bits(d * _F(1.125)), 0).astype(np.uint16)
        idd = _F(1) / d
        lsc = nearest_int(_F(0.5) * (idd[:, None] * sc8 - _F(1)))
    lsc = np.clip(lsc, 0, 7).astype(np.int64)
    lsc = lsc | np.where(shifts.reshape(nsb, 8) == -1, 8, 0)
    lsc = np.where(has[:, None], lsc, 0)
    qh = qh.reshape(nsb, 8) | (lsc << 12)

    out = np.empty((nsb, 50), dtype=np.uint8)
    out[:, 0:2] = dbits.reshape(nsb, 1).view(np.uint8)
    out[:, 2:34] = (index.reshape(nsb, 32) & 255).astype(np.uint8)
    out[:, 34:50] = qh.astype("<u2").view(np.uint8)
    return out


def quantize_iq1_s(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    """IQ1_S (ggml's quantize_iq1_s); ggml asserts on a NULL imatrix, so one is required."""
    if imatrix is None:
        raise ValueError("IQ1_S requires an importance matrix")
    with np.errstate(all="ignore"):  # float32 C arithmetic: overflow to inf is part of the result
        return _batched(_iq1s_blocks, rows, imatrix)


# --------------------------------------------------------------------------------------------------
# IQ1_M


def _iq1m_search(x: F32Array, w: F32Array) -> tuple[npt.NDArray[np.int8], F32Array, I64Array, BoolArray]:
    """The split search of quantize_row_iq1_m_impl over sub-blocks x, w (nb, 16).

    Returns L (nb, 16), scale (nb,), best_k (nb,) in 0..3 (shift of each half), found (nb,)."""
    nb, bs = x.shape
    half = bs // 2
    # positions of the sorted values, transposed (bs, nb): gathers straight into the prefix layout
    flat_t, key, ks = _sort_order(x, transposed=True)
    wx = w * x
    # per-half prefix sums over the sorted values, (bs+1, nb) each: px[0], px[1], pw[0], pw[1]
    pref = np.empty((4, bs + 1, nb), dtype=_F)
    pref[:, 0] = 0
    in1 = (flat_t & (bs - 1)) >= half  # bs is a power of two
    # the other half's values add nothing; multiplying by 0/1 is exact for finite values (a -0.0 it
    # leaves is added like +0.0: the sums start at +0.0)
    finite = bool(np.isfinite(wx).all())  # then w is finite too
    keep = ((~in1).astype(_F), in1.astype(_F))
    sorted_wx_w: list[F32Array] = []
    for k, val in enumerate((wx, w)):
        sorted_t = np.take(val, flat_t)
        sorted_wx_w.append(sorted_t)
        for h in (0, 1):
            z = pref[2 * k + h, 1:]
            if finite:
                np.multiply(sorted_t, keep[h], out=z)
            else:
                z[...] = sorted_t
                np.copyto(z, _F(0), where=keep[h] == 0)
    for i in range(bs):
        np.add(pref[:, i], pref[:, i + 1], out=pref[:, i + 1])
    px = [pref[0], pref[1]]
    pw = [pref[2], pref[3]]
    p2 = _XP[2]
    m2 = _XM[2]
    cp1 = _XP[0] * _XP[0] - _XP[1] * _XP[1]
    cp2 = _XP[1] * _XP[1] - _XP[2] * _XP[2]
    cm1 = _XM[0] * _XM[0] - _XM[1] * _XM[1]
    cm2 = _XM[1] * _XM[1] - _XM[2] * _XM[2]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        # C: qx = txs*v2 - (px[i1] + px[i2]); q2 = ((tws*v2)*v2 + pw[i1]*c1) + pw[i2]*c2, per half
        tp = [px[h][bs] * p2 for h in (0, 1)]
        tm = [px[h][bs] * m2 for h in (0, 1)]
        # The ranking only has to be accurate (the contenders are recomputed exactly below), so qx is
        # regrouped as C's (tt[0] - (px[0][i1] + px[0][i2])) + (tt[1] - (px[1][i1] + px[1][i2])) =
        # ((tt[0] + tt[1]) - P[i1]) - P[i2] with P = px[0] + px[1]: one pass per score instead of
        # three. Error bound: with S = sum|w*x| and u = 2^-24 every term is <= 3.125*S and qx is off
        # C's value by < 17*u*S (both roundings counted); a score within 10% of the block maximum
        # m >= (0.875*S)^2/(1.27*W) has q2 >= W/64 (all |q| >= 1/8), hence |qx| >= 0.09*S and a
        # relative score error < 2.2e-5.
        # q2 is regrouped likewise: C's (cc[0] + dd[0]) + (cc[1] + dd[1]) (cc[h] = (tws*v2)*v2 +
        # pw[i1]*c1 per i1, dd[h] = pw[i2]*c2 per i2, the same floats as C's) becomes
        # (cc[0] + cc[1]) + (dd[0] + dd[1]): one pass per score instead of two. Error bound: both
        # groupings are within u*(|a+b| + |c+d| + |T|) of the exact sum T (a..d the four terms), so
        # they differ by < u*(3*T + |cc[0]+cc[1]| + |dd[0]+dd[1]|) <= u*(3*T + 2.52*W + 1.25*W) (as
        # cc[h] <= (1.27 + 1.25)*W[h], |dd[h]| <= 1.25*W[h], and the half sums are >= 0); with q2 >=
        # W/64 for every candidate that is < 245*u*q2, a relative score error < 1.5e-5. Together
        # < 3.7e-5 (see _BAND_M).
        # Everything the scores read, as rows of one (13*R, nb) table so that the columns of any set
        # of blocks come out with one gather: P (R rows), the four (tt[0][v0] + tt[1][v1]) - P[i],
        # cc[0][v0] + cc[1][v1] (per i1) and dd[0][v0] + dd[1][v1] (per i2), each R x 4 rows with
        # v = 2*v0 + v1 (x_p: 0, x_m: 1) the candidate's shift pair.
        R = bs + 1
        tab = np.empty((13 * R, nb), dtype=_F)
        np.add(px[0], px[1], out=tab[:R])
        for v0, t0 in enumerate((tp[0], tm[0])):
            for v1, t1 in enumerate((tp[1], tm[1])):
                np.subtract(t0 + t1, tab[:R], out=tab[R + 2 * v0 + v1 : 5 * R : 4])
        # per half and shift: cc = (tws*v2)*v2 + pw[i1]*c1 (the sum taken the other way round, same
        # bits), dd = pw[i2]*c2
        cch = [
            [((pw[h][bs] * v2) * v2)[None, :] + pw[h] * c1 for v2, c1 in ((p2, cp1), (m2, cm1))]
            for h in (0, 1)
        ]
        ddh = [[pw[h] * c2 for c2 in (cp2, cm2)] for h in (0, 1)]
        for v0 in (0, 1):
            for v1 in (0, 1):
                np.add(cch[0][v0], cch[1][v1], out=tab[5 * R + 2 * v0 + v1 : 9 * R : 4])
                np.add(ddh[0][v0], ddh[1][v1], out=tab[9 * R + 2 * v0 + v1 : 13 * R : 4])

        def slab(i1: int, tb: F32Array, key: str) -> F32Array:
            """Scores (s = sumqx^2/sumq2) of the candidates with this i1, rows in scan order (i2, k),
            for the blocks (columns) of ``tb``, a column subset of ``tab``."""
            k = R - i1
            n = tb.shape[1]
            # candidate k = 2*(half 0 uses x_m) + (half 1 uses x_m), as in ggml's sumqx[0..3]
            a4 = tb[R + 4 * i1 : R + 4 * i1 + 4]
            qx = np.subtract(a4[None], tb[i1:R, None, :], out=scratch(key + "qx", (k, 4, n)))
            c4 = tb[5 * R + 4 * i1 : 5 * R + 4 * i1 + 4]
            d4 = tb[9 * R + 4 * i1 : 13 * R].reshape(k, 4, n)
            q2 = np.add(c4[None], d4, out=scratch(key + "q2", (k, 4, n)))
            qx *= qx
            np.divide(qx, q2, out=qx)
            res: F32Array = qx.reshape(4 * k, n)
            return res

        # The table of every candidate's score is never stored (writing it out costs more than computing
        # it): each i1 slab lists the candidates within _COLLECT_EPS of the running maximum of their
        # block, a superset of those within it of the final maximum.
        cs: list[I64Array] = []
        bsl: list[I64Array] = []
        vs: list[F32Array] = []
        rmax = np.full(nb, -np.inf, dtype=_F)
        fac = _collect_factor(_BAND_M)
        for c0 in range(0, nb, _TILE_M):
            c1 = min(nb, c0 + _TILE_M)
            tab_t = tab[:, c0:c1]
            rmax_t = rmax[c0:c1]
            # seed the running maximum with a few typical splits (as for IQ1_S)
            for i1, i2 in _SEEDS_M:
                qx = tab_t[R + 4 * i1 : R + 4 * i1 + 4] - tab_t[i2][None, :]
                qx *= qx
                qx /= tab_t[5 * R + 4 * i1 : 5 * R + 4 * i1 + 4] + tab_t[9 * R + 4 * i2 : 9 * R + 4 * i2 + 4]
                np.maximum(rmax_t, qx.max(axis=0), out=rmax_t)
            row0 = 0
            for i1 in range(R):
                sc = slab(i1, tab_t, "iq1m.")
                np.maximum(rmax_t, np.max(sc, axis=0), out=rmax_t)
                lo_run = np.multiply(rmax_t, fac, out=scratch("iq1m.lo", rmax_t.shape))
                f = np.flatnonzero(np.greater_equal(sc, lo_run, out=scratch("iq1m.ge", sc.shape, np.bool_)))
                r, col = np.divmod(f, c1 - c0)
                cs.append(r + row0)
                col += c0
                bsl.append(col)
                vs.append(np.take(sc, f))
                row0 += sc.shape[0]
        smax = rmax
    wsum = pw[0][bs] + pw[1][bs]

    def columns(cols: IntpArray) -> F32Array:
        """Every candidate's score for the blocks ``cols`` (few): all pairs at once, as :func:`slab`."""
        tb = np.take(tab, cols, axis=1)
        n = cols.size
        p1, p2 = _PAIRS_M
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            qx = tb[R : 5 * R].reshape(R, 4, n)[p1] - tb[:R][p2][:, None, :]
            q2 = tb[5 * R : 9 * R].reshape(R, 4, n)[p1] + tb[9 * R : 13 * R].reshape(R, 4, n)[p2]
            qx *= qx
            qx /= q2
        res: F32Array = qx.reshape(-1, n)
        return res

    blk, cand = _contenders(
        None,
        smax,
        wsum,
        *_block_stats_t(*sorted_wx_w),
        Collected(np.concatenate(cs), np.concatenate(bsl), np.concatenate(vs), _COLLECT_EPS, row0, columns),
        band=_BAND_M,
    )
    pair = cand >> 2
    kk = cand & 3
    p1 = _PAIRS_M[0][pair]
    p2i = _PAIRS_M[1][pair]
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        f1 = p1 * nb + blk  # flat positions in the (bs+1, nb) prefix tables
        f2 = p2i * nb + blk
        hq: list[tuple[F32Array, F32Array, F32Array, F32Array]] = []
        for h in (0, 1):
            sxh = take_flat(px[h], f1) + take_flat(px[h], f2)
            tws = pw[h][bs][blk]
            w1 = take_flat(pw[h], f1)
            w2 = take_flat(pw[h], f2)
            hq.append(
                (
                    tp[h][blk] - sxh,
                    tm[h][blk] - sxh,
                    (((tws * p2) * p2) + w1 * cp1) + w2 * cp2,
                    (((tws * m2) * m2) + w1 * cm1) + w2 * cm2,
                )
            )
        m0 = kk >= 2  # first half uses x_m
        m1 = (kk & 1) == 1  # second half uses x_m
        qx = np.where(m0, hq[0][1], hq[0][0]) + np.where(m1, hq[1][1], hq[1][0])
        q2 = np.where(m0, hq[0][3], hq[0][2]) + np.where(m1, hq[1][3], hq[1][2])
    best, scale = _replay(blk, qx.astype(_F), q2.astype(_F), nb)
    found = best >= 0
    bi = best[found]
    s1 = np.zeros(nb, dtype=np.int64)
    s2 = np.zeros(nb, dtype=np.int64)
    best_k = np.zeros(nb, dtype=np.int64)
    s1[found] = p1[bi]
    s2[found] = p2i[bi]
    best_k[found] = kk[bi]
    return _split_levels(key, ks, s1, s2), scale, best_k, found


_MASKS_M = np.array([0x00, 0x80, 0x08, 0x88], dtype=np.int64)


def _iq1m_blocks(xsb: F32Array, qw: F32Array | None) -> U8Array:
    """IQ1_M bytes (nsb, 56) of super-blocks xsb (nsb, 256) with imatrix slices qw (or none)."""
    nsb = xsb.shape[0]
    wsb = _imatrix_weights(xsb, qw) if qw is not None else xsb * xsb
    nb = nsb * 16
    x, w, act = _sub_blocks(xsb, wsb, 16, _F(1e-7))  # GROUP_MAX_EPS_IQ1_M

    scales = np.zeros(nb, dtype=_F)
    shifts = np.zeros(nb, dtype=np.int64)
    index = np.zeros((nb, 2), dtype=np.int64)
    everywhere = False  # every sub-block active and found
    if act.size:
        xa, wa = (x, w) if act.size == nb else (x[act], w[act])
        lv, scale, best_k, found = _iq1m_search(xa, wa)
        everywhere = act.size == nb and bool(found.all())
        lv, scale, neg = _make_positive(lv, scale)
        best_k = np.where(neg, 3 - best_k, best_k)
        # group 0 uses x_m when best_k >= 2, group 1 when best_k is odd
        xm_g = np.empty((best_k.size, 2), dtype=bool)
        np.greater_equal(best_k, 2, out=xm_g[:, 0])
        np.not_equal(best_k & 1, 0, out=xm_g[:, 1])
        gi, scale, q_act = _snap_and_refit(lv, xa, wa, scale, xm_g.reshape(-1))
        if everywhere:
            scales, shifts, index = scale, best_k, gi
        else:
            ok = found
            scales[act[ok]] = scale[ok]
            shifts[act[ok]] = best_k[ok]
            index[act[ok]] = gi[ok]
    # level values of every sub-block: the snapped ones, else grid point 0 at x_p (index 0, shift 0)
    if everywhere:
        lvl_val = q_act
    else:
        lvl_val = np.empty((nb, 16), dtype=_F)
        lvl_val[:] = np.tile(_grid_values()[0], 2)
        if act.size:
            lvl_val[act[found]] = q_act[found]

    sc16 = scales.reshape(nsb, 16)
    max_scale = _c_max(sc16)
    has = max_scale != 0
    d = max_scale / _F(15)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        idd = _F(1) / d
        lsc = nearest_int(_F(0.5) * (idd[:, None] * sc16 - _F(1)))
    lsc = np.clip(lsc, 0, 7).astype(np.int64)  # (nsb, 16)
    # final scale: weighted fit over the whole super-block with the 3-bit block scales applied
    sh = shifts.reshape(nsb, 16)
    q = (lvl_val.reshape(nsb, 16, 16) * (2 * lsc + 1).astype(_F)[:, :, None]).reshape(nsb, QK_K)
    wq = wsb * q
    sqx = seq_sum(wq * xsb, axis=-1)
    sq2 = seq_sum(wq * q, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        dfit = np.where(sq2 > 0, sqx / sq2, d)
        sbits = fp32_to_fp16_bits((dfit * _F(1.1125)).astype(_F)).astype(np.int64)

    qh = (index[:, 0] >> 8) | ((index[:, 1] >> 8) << 4)
    qh = qh.reshape(nsb, 16) | np.where(has[:, None], _MASKS_M[sh], 0)
    lsc = np.where(has[:, None], lsc, 0)
    sc = (lsc.reshape(nsb, 4, 4) << (3 * np.arange(4, dtype=np.int64))).sum(axis=2)  # (nsb, 4)
    nib = (sbits[:, None] >> (4 * np.arange(4, dtype=np.int64))) & 0xF
    sc = sc | np.where(has[:, None], nib << 12, 0)

    out = np.empty((nsb, 56), dtype=np.uint8)
    out[:, 0:32] = (index.reshape(nsb, 32) & 255).astype(np.uint8)
    out[:, 32:48] = qh.astype(np.uint8)
    out[:, 48:56] = sc.astype("<u2").view(np.uint8)
    return out


def quantize_iq1_m(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    """IQ1_M (ggml's quantize_iq1_m), with or without imatrix."""
    with np.errstate(all="ignore"):  # float32 C arithmetic: overflow to inf is part of the result
        return _batched(_iq1m_blocks, rows, imatrix, _BATCH_M)
