"""IQ1_S and IQ1_M: ggml's ``quantize_row_iq1_s_impl`` / ``quantize_row_iq1_m_impl`` in numpy.

Both split every sub-block (32 values for IQ1_S, 16 for IQ1_M) into three groups (-1, 0, +1 plus a
shift of +-IQ1_DELTA) by two split points over the values sorted ascending, trying every pair of split
points (and every shift) with a running "best so far" scan, then snap each group of 8 levels to the
2048-point grid (nearest neighbour under the weighted error when the code is off the grid).

Exact reproduction of the running scan: every candidate's sums are computed exactly as C does (float32,
C order) for all sub-blocks at once, and ``s = sumqx^2 / sumq2`` ranks them. ggml's comparison
``sumqx*sumqx > best_score*sumq2`` agrees with ``s_k > s_best`` whenever the two differ by more than a
few ulps, so only the candidates whose ``s`` lies within ``eps`` of the sub-block maximum (separated from
the rest by a gap of at least ``_BAND``) can change the outcome; ggml's scan is replayed exactly over
those few. Sub-blocks where that argument does not hold (values near float32 under/overflow, negative
weights) replay the whole scan.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._iq1_tables import iq1_tables
from ._numeric import F32Array, U8Array, fp32_to_fp16_bits, nearest_int

__all__ = ["quantize_iq1_m", "quantize_iq1_s"]

I32Array = npt.NDArray[np.int32]
I64Array = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

QK_K = 256
_F = np.float32
_DELTA = _F(0.125)  # IQ1S_DELTA == IQ1M_DELTA
_XP = np.array([-1 + 0.125, 0.125, 1 + 0.125], dtype=_F)  # x_p
_XM = np.array([-1 - 0.125, -0.125, 1 - 0.125], dtype=_F)  # x_m
_FLT_MAX = _F(np.finfo(np.float32).max)
_BAND = 1e-5  # relative gap around the contender threshold; >> the few ulps ggml's test can be off
_EPS_STEPS = (1e-4, 1e-3, 1e-2, 1e-1)


# --------------------------------------------------------------------------------------------------
# shared pieces


def _sort_order(x: F32Array) -> I64Array:
    """ggml's ``qsort(pairs, n, 8, iq1_sort_helper)``: ascending by value, -0.0 == +0.0, ties keep the
    original order (glibc's qsort is a stable merge sort for these small arrays)."""
    n = x.shape[1]
    b = x.view(np.int32)
    key = np.where(b < 0, -(b & np.int32(0x7FFFFFFF)), b).astype(np.int64)
    key = key * n + np.arange(n, dtype=np.int64)
    key.sort(axis=1)
    order: I64Array = key % n
    return order


def _prefix_t(v: F32Array) -> F32Array:
    """``s[0] = 0; s[j+1] = s[j] + v[:, j]`` sequentially in float32, returned transposed: (n+1, nb)."""
    vt = v.T
    z = np.empty((v.shape[1] + 1, v.shape[0]), dtype=_F)
    z[0] = 0
    for j in range(v.shape[1]):
        np.add(z[j], vt[j], out=z[j + 1])
    return z


def _seq_sum(v: F32Array) -> F32Array:
    """``s = 0; for i: s += v[:, i]`` in float32 (C's sequential loop)."""
    vt = np.ascontiguousarray(v.T)
    s = np.zeros(v.shape[0], dtype=_F)
    for row in vt:
        s += row
    return s


def _contenders(
    score: F32Array, wsum: F32Array, wxabs: F32Array, wmin: F32Array
) -> tuple[I64Array, I64Array]:
    """(block, candidate) of every candidate that can influence ggml's running scan, sorted by block then
    candidate index (the scan order). ``score`` is (n_candidates, n_blocks); wsum, wxabs, wmin: per block
    sum(w), sum(|w*x|), min(w) for the range check (:func:`_safe`)."""
    ncand, nb = score.shape
    with np.errstate(invalid="ignore"):
        m = score.max(axis=0)
    unsafe = ~_safe(m, wsum, wxabs, wmin)
    blocks: list[I64Array] = []
    cands: list[I64Array] = []
    todo = np.flatnonzero(~unsafe)
    sub = score
    cols = np.arange(nb)  # block of each column of sub
    for eps in _EPS_STEPS:
        if todo.size == 0:
            break
        # contenders: s >= lo; the block is settled when none of them falls in the band [lo, thr)
        thr = (m.astype(np.float64) * (1.0 - eps)).astype(_F)
        lo = (thr.astype(np.float64) * (1.0 - _BAND)).astype(_F)
        with np.errstate(invalid="ignore"):
            flat = np.flatnonzero(sub >= lo[cols][None, :])
        c, col = np.divmod(flat, sub.shape[1])
        b = cols[col]
        amb = unsafe.copy()
        amb[b[sub.reshape(-1)[flat] < thr[b]]] = True
        keep = ~amb[b]
        blocks.append(b[keep])
        cands.append(c[keep])
        todo = np.flatnonzero(amb & ~unsafe)
        cols = todo
        sub = score[:, todo]
    # unsafe or never separated: every candidate
    todo = np.concatenate([todo, np.flatnonzero(unsafe)])
    if todo.size:
        b, c = np.nonzero(np.ones((todo.size, ncand), dtype=bool))
        blocks.append(todo[b])
        cands.append(c)
    blk = np.concatenate(blocks)
    cand = np.concatenate(cands)
    order = np.lexsort((cand, blk))
    return blk[order], cand[order]


def _replay(blk: I64Array, qx: F32Array, q2: F32Array, nb: int) -> tuple[I64Array, F32Array]:
    """ggml's scan ``if (sumq2 > 0 && sumqx*sumqx > best_score*sumq2) {scale = sumqx/sumq2;
    best_score = scale*sumqx; ...}`` over the listed candidates (grouped by block, in scan order).

    Returns the winning position in the list per block (-1: none) and its scale."""
    count = np.bincount(blk, minlength=nb)
    start = np.cumsum(count) - count
    best = np.full(nb, -1, dtype=np.int64)
    best_score = np.full(nb, -_FLT_MAX, dtype=_F)
    scale = np.zeros(nb, dtype=_F)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        sq = qx * qx
        sc_all = qx / q2
        bs_all = sc_all * qx
        for t in range(int(count.max()) if nb else 0):
            sel = np.flatnonzero(count > t)
            j = start[sel] + t
            ok = (q2[j] > 0) & (sq[j] > best_score[sel] * q2[j])
            sel, j = sel[ok], j[ok]
            best[sel] = j
            best_score[sel] = bs_all[j]
            scale[sel] = sc_all[j]
    return best, scale


def _imatrix_weights(xsb: F32Array, qw: F32Array) -> F32Array:
    """``weight[i] = qw[i] * sqrtf(sigma2 + x[i]*x[i])``, sigma2 = 2*sum(x^2)/QK_K per super-block."""
    sumx2 = _seq_sum(xsb * xsb)
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
            & (w64 > 0)
            & (w64 <= 1e36)
            & (wxabs.astype(np.float64) <= 1e18)
            & (wmin >= 0)
        )
    return np.asarray(ok, dtype=bool)


_PACKED: list[npt.NDArray[np.uint64]] = []
_POW3 = np.array([1, 3, 9, 27], dtype=np.int64)


def _packed_levels() -> npt.NDArray[np.uint64]:
    """Per neighbour-list entry, one uint64 whose bytes are: the base-3 code of levels 0..3, then
    levels 4, 5, 6, 7 (and three zero bytes)."""
    if not _PACKED:
        tables = iq1_tables()
        lev = tables.grid_levels[tables.nb_flat].astype(np.int64)
        packed = np.zeros((lev.shape[0], 8), dtype=np.uint8)
        packed[:, 0] = lev[:, :4] @ _POW3
        packed[:, 1:5] = lev[:, 4:]
        _PACKED.append(packed.view(np.uint64).reshape(-1))
    return _PACKED[0]


def _first_min(d2: F32Array, seg: npt.NDArray[np.int64]) -> I64Array:
    """Flat position of the first minimum of each segment ``d2[seg[k]:seg[k+1]]`` (strict ``<`` scan)."""
    b = d2.view(np.int32)
    order_key = b ^ ((b >> 31) & np.int32(0x7FFFFFFF))  # float order as signed ints
    key = (order_key.astype(np.int64) << 32) | np.arange(d2.shape[0], dtype=np.int64)
    pos: I64Array = np.minimum.reduceat(key, seg) & 0xFFFFFFFF
    return pos


def _best_neighbours(codes: I64Array, x8: F32Array, w8: F32Array, scale: F32Array, xx: F32Array) -> I64Array:
    """``iq1_find_best_neighbour2`` for every off-grid group of 8 at once.

    codes (n,): the off-grid level codes; x8/w8 (n, 8); scale (n,); xx (n, 3): the level values.
    d2 = sum_i w[i]*diff*diff is accumulated in C order; its first four steps depend only on the first
    four levels, so they are tabulated per group (81 values) and the rest is gathered per neighbour.
    """
    tables = iq1_tables()
    n = codes.shape[0]
    rows = tables.nb_row[codes]
    counts = tables.nb_count[rows]
    seg = np.cumsum(counts) - counts
    total = int(seg[-1] + counts[-1])
    # one flat entry per (group, neighbour); entry = index into the neighbour tables
    entry = np.repeat(tables.nb_start[rows] - seg, counts) + np.arange(total, dtype=np.int64)
    g81 = np.repeat(np.arange(0, 81 * n, 81, dtype=np.int32), counts)
    g3 = np.repeat(np.arange(0, 3 * n, 3, dtype=np.int32), counts)
    lev = np.ascontiguousarray(_packed_levels()[entry].view(np.uint8).reshape(total, 8)[:, :5].T)
    # the 3 possible terms w*diff*diff of every coordinate (diff = scale*q - x), (8, 3, n)
    diff = (scale[None, None, :] * xx.T[None, :, :]) - x8.T[:, None, :]
    terms = (w8.T[:, None, :] * diff) * diff
    # partial sums over coordinates 0..3 for every base-3 code l0 + 3*l1 + 9*l2 + 27*l3, as (n, 81)
    p = terms[0] + _F(0)  # C starts from d2 = 0: a -0.0 first term becomes +0.0
    for i in range(1, 4):
        p = (p[None, :, :] + terms[i][:, None, :]).reshape(-1, n)
    p81 = np.ascontiguousarray(p.T).reshape(-1)
    t48 = np.ascontiguousarray(terms[4:].transpose(0, 2, 1)).reshape(4, -1)  # (4, n*3)
    d2 = p81[g81 + lev[0]]
    for i in range(4):
        d2 += t48[i][g3 + lev[i + 1]]
    kmin = _first_min(d2, seg)
    if np.isnan(d2[kmin]).any():  # C's `d2 < best` never picks a NaN
        kmin = _first_min(np.where(np.isnan(d2), _F(np.inf), d2), seg)
    best: I64Array = tables.nb_flat[entry[kmin]].astype(np.int64)
    return best


def _grid_lookup(
    lv: npt.NDArray[np.int8], xg: F32Array, wg: F32Array, scale_g: F32Array, xx_g: F32Array
) -> tuple[I64Array, BoolArray]:
    """Grid index of each group of 8 levels ``lv`` (n, 8); off-grid ones go through the neighbour search.

    Returns (index, off_grid)."""
    tables = iq1_tables()
    u = (lv.astype(np.int64) << (2 * np.arange(8, dtype=np.int64))).sum(axis=1)
    gi = tables.kmap[u].astype(np.int64)
    off = gi < 0
    if off.any():
        o = np.flatnonzero(off)
        gi[o] = _best_neighbours(u[o], xg[o], wg[o], scale_g[o], xx_g[o])
    return gi, off


# --------------------------------------------------------------------------------------------------
# IQ1_S


def _iq1s_pairs(n: int) -> tuple[I64Array, I64Array]:
    i1, i2 = np.triu_indices(n + 1)
    return i1.astype(np.int64), i2.astype(np.int64)


_PAIRS_S = _iq1s_pairs(32)
_PAIRS_M = _iq1s_pairs(16)


def _iq1s_search(
    x: F32Array, w: F32Array
) -> tuple[npt.NDArray[np.int8], F32Array, npt.NDArray[np.int8], BoolArray]:
    """The split search of quantize_row_iq1_s_impl over sub-blocks x, w (nb, 32).

    Returns L (nb, 32) levels, scale (nb,), shift (nb,) in {-1, 0, 1} (0: none found), found (nb,)."""
    nb, bs = x.shape
    order = _sort_order(x)
    wx = w * x
    # prefix sums over the sorted values, transposed to (bs+1, nb) so every step runs over all blocks
    sx = _prefix_t(np.take_along_axis(wx, order, axis=1))
    sw = _prefix_t(np.take_along_axis(w, order, axis=1))
    xp0, xp1, xp2 = _XP
    xm0, _, xm2 = _XM
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        # C: ((sumx[i1]*x[0]) + (sumx[i2]-sumx[i1])*x[1]) + (sumx[n]-sumx[i2])*x[2], sumq2 likewise with
        # (.)*x[k]*x[k]; the i1-only and i2-only terms are computed once.
        a1p = sx * xp0
        a1m = sx * xm0
        b1p = (sw * xp0) * xp0
        b1m = (sw * xm0) * xm0
        r = sx[bs] - sx
        a3p = r * xp2
        a3m = r * xm2
        rw = sw[bs] - sw
        b3p = (rw * xp2) * xp2
        b3m = (rw * xm2) * xm2
        # The ranking only has to be accurate (the contenders are recomputed exactly), so the
        # x[1] = +-1/8 scalings move onto the prefix sums: exact except for denormals.
        s8 = sx * xp1
        w64 = (sw * xp1) * xp1
        npairs = (bs + 1) * (bs + 2) // 2
        score = np.empty((npairs, 2, nb), dtype=_F)
        bd, bq, bx, b2 = (np.empty((bs + 1, nb), dtype=_F) for _ in range(4))
        off = 0
        for i1 in range(bs + 1):
            k = bs + 1 - i1
            out = score[off : off + k]
            d8 = np.subtract(s8[i1:], s8[i1], out=bd[:k])
            qq = np.subtract(w64[i1:], w64[i1], out=bq[:k])
            qx = np.add(d8, a1p[i1], out=bx[:k])
            qx += a3p[i1:]
            q2 = np.add(qq, b1p[i1], out=b2[:k])
            q2 += b3p[i1:]
            qx *= qx
            np.divide(qx, q2, out=out[:, 0])
            qx = np.subtract(a1m[i1], d8, out=bx[:k])
            qx += a3m[i1:]
            q2 = np.add(qq, b1m[i1], out=b2[:k])
            q2 += b3m[i1:]
            qx *= qx
            np.divide(qx, q2, out=out[:, 1])
            off += k
    blk, cand = _contenders(score.reshape(2 * npairs, nb), sw[bs], np.abs(wx).sum(axis=1), w.min(axis=1))
    pair = cand >> 1
    minus = (cand & 1).astype(bool)
    p1 = _PAIRS_S[0][pair]
    p2 = _PAIRS_S[1][pair]
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        d8 = (sx[p2, blk] - sx[p1, blk]) * xp1
        qq = ((sw[p2, blk] - sw[p1, blk]) * xp1) * xp1
        qx = np.where(minus, (a1m[p1, blk] - d8) + a3m[p2, blk], (a1p[p1, blk] + d8) + a3p[p2, blk])
        q2 = np.where(minus, (b1m[p1, blk] + qq) + b3m[p2, blk], (b1p[p1, blk] + qq) + b3p[p2, blk])
    best, scale = _replay(blk, qx.astype(_F), q2.astype(_F), nb)
    found = best >= 0
    bi = np.where(found, best, 0)
    s1 = np.where(found, p1[bi], 0)
    s2 = np.where(found, p2[bi], 0)
    shift = np.where(found, np.where(minus[bi], -1, 1), 0).astype(np.int8)
    # levels by sorted position, scattered back to the original positions
    j = np.arange(bs, dtype=np.int64)[None, :]
    ls = ((j >= s1[:, None]).astype(np.int8) + (j >= s2[:, None]).astype(np.int8)).astype(np.int8)
    lv = np.empty_like(ls)
    np.put_along_axis(lv, order, ls, axis=1)
    return lv, scale, shift, found


def _iq1s_impl(rows: F32Array, imatrix: F32Array) -> U8Array:
    nrows, npr = rows.shape
    nsb = nrows * (npr // QK_K)
    xsb = rows.reshape(nsb, QK_K)
    qw = np.broadcast_to(imatrix.reshape(-1, QK_K)[None], (nrows, npr // QK_K, QK_K)).reshape(nsb, QK_K)
    wsb = _imatrix_weights(xsb, qw)
    nb = nsb * 8
    x = xsb.reshape(nb, 32)
    w = wsb.reshape(nb, 32)
    mx = np.abs(x).max(axis=1)
    act = np.flatnonzero(mx >= _F(1e-12))  # GROUP_MAX_EPS_IQ1_S

    scales = np.zeros(nb, dtype=_F)
    shifts = np.ones(nb, dtype=np.int8)
    index = np.zeros((nb, 4), dtype=np.int64)
    if act.size:
        xa, wa = x[act], w[act]
        lv, scale, shift, found = _iq1s_search(xa, wa)
        neg = scale < 0
        lv = np.where(neg[:, None], 2 - lv, lv).astype(np.int8)
        scale = np.where(neg, -scale, scale)
        shift = np.where(neg, -shift, shift).astype(np.int8)
        xx = np.where((shift == 1)[:, None], _XP[None, :], _XM[None, :])  # (na, 3)
        na = act.size
        gi, offg = _grid_lookup(
            lv.reshape(na * 4, 8),
            xa.reshape(na * 4, 8),
            wa.reshape(na * 4, 8),
            np.repeat(scale, 4),
            np.repeat(xx, 4, axis=0),
        )
        gi = gi.reshape(na, 4)
        refit = offg.reshape(na, 4).any(axis=1)
        levels = iq1_tables().grid_levels[gi].reshape(na, 32).astype(np.int64)
        q = np.take_along_axis(xx, levels, axis=1)
        wq = wa * q
        sqx = _seq_sum(wq * xa)
        sq2 = _seq_sum(wq * q)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            newscale = sqx / sq2
        scale = np.where(refit & (sqx > 0) & (sq2 > 0), newscale, scale)
        ok = found
        scales[act[ok]] = scale[ok]
        shifts[act[ok]] = shift[ok]
        index[act[ok]] = gi[ok]

    qh = ((index >> 8) << (3 * np.arange(4, dtype=np.int64))).sum(axis=1)
    sc8 = scales.reshape(nsb, 8)
    max_scale = sc8.max(axis=1)
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
    return out.reshape(nrows, -1)


def quantize_iq1_s(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    """IQ1_S (ggml's quantize_iq1_s); ggml asserts on a NULL imatrix, so one is required."""
    if imatrix is None:
        raise ValueError("IQ1_S requires an importance matrix")
    with np.errstate(all="ignore"):  # float32 C arithmetic: overflow to inf is part of the result
        return _iq1s_impl(rows, imatrix)


# --------------------------------------------------------------------------------------------------
# IQ1_M


def _iq1m_search(x: F32Array, w: F32Array) -> tuple[npt.NDArray[np.int8], F32Array, I64Array, BoolArray]:
    """The split search of quantize_row_iq1_m_impl over sub-blocks x, w (nb, 16).

    Returns L (nb, 16), scale (nb,), best_k (nb,) in 0..3 (shift of each half), found (nb,)."""
    nb, bs = x.shape
    half = bs // 2
    order = _sort_order(x)
    wx = w * x
    wxs = np.take_along_axis(wx, order, axis=1)
    ws = np.take_along_axis(w, order, axis=1)
    in0 = order < half
    zero = _F(0)
    # per-half prefix sums over the sorted values, (bs+1, nb) each
    px = [_prefix_t(np.where(m, wxs, zero)) for m in (in0, ~in0)]
    pw = [_prefix_t(np.where(m, ws, zero)) for m in (in0, ~in0)]
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
        cp = [((pw[h][bs] * p2) * p2) + pw[h] * cp1 for h in (0, 1)]  # per i1
        cm = [((pw[h][bs] * m2) * m2) + pw[h] * cm1 for h in (0, 1)]
        dp = [pw[h] * cp2 for h in (0, 1)]  # per i2
        dm = [pw[h] * cm2 for h in (0, 1)]
        npairs = (bs + 1) * (bs + 2) // 2
        score = np.empty((npairs, 4, nb), dtype=_F)
        off = 0
        for i1 in range(bs + 1):
            k = bs + 1 - i1
            out = score[off : off + k]
            sx0 = px[0][i1] + px[0][i1:]
            sx1 = px[1][i1] + px[1][i1:]
            qxp0 = tp[0] - sx0
            qxm0 = tm[0] - sx0
            qxp1 = tp[1] - sx1
            qxm1 = tm[1] - sx1
            q2p0 = cp[0][i1] + dp[0][i1:]
            q2m0 = cm[0][i1] + dm[0][i1:]
            q2p1 = cp[1][i1] + dp[1][i1:]
            q2m1 = cm[1][i1] + dm[1][i1:]
            for ik, (a, b, c, d) in enumerate(
                (
                    (qxp0, qxp1, q2p0, q2p1),
                    (qxp0, qxm1, q2p0, q2m1),
                    (qxm0, qxp1, q2m0, q2p1),
                    (qxm0, qxm1, q2m0, q2m1),
                )
            ):
                qx = a + b
                np.multiply(qx, qx, out=qx)
                np.divide(qx, c + d, out=out[:, ik])
            off += k
    wsum = pw[0][bs] + pw[1][bs]
    blk, cand = _contenders(score.reshape(4 * npairs, nb), wsum, np.abs(wx).sum(axis=1), w.min(axis=1))
    pair = cand >> 2
    kk = cand & 3
    p1 = _PAIRS_M[0][pair]
    p2i = _PAIRS_M[1][pair]
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        hq: list[tuple[F32Array, F32Array, F32Array, F32Array]] = []
        for h in (0, 1):
            sxh = px[h][p1, blk] + px[h][p2i, blk]
            hq.append(
                (
                    tp[h][blk] - sxh,
                    tm[h][blk] - sxh,
                    cp[h][p1, blk] + dp[h][p2i, blk],
                    cm[h][p1, blk] + dm[h][p2i, blk],
                )
            )
        m0 = kk >= 2  # first half uses x_m
        m1 = (kk & 1) == 1  # second half uses x_m
        qx = np.where(m0, hq[0][1], hq[0][0]) + np.where(m1, hq[1][1], hq[1][0])
        q2 = np.where(m0, hq[0][3], hq[0][2]) + np.where(m1, hq[1][3], hq[1][2])
    best, scale = _replay(blk, qx.astype(_F), q2.astype(_F), nb)
    found = best >= 0
    bi = np.where(found, best, 0)
    s1 = np.where(found, p1[bi], 0)
    s2 = np.where(found, p2i[bi], 0)
    best_k = np.where(found, kk[bi], 0).astype(np.int64)
    j = np.arange(bs, dtype=np.int64)[None, :]
    ls = ((j >= s1[:, None]).astype(np.int8) + (j >= s2[:, None]).astype(np.int8)).astype(np.int8)
    lv = np.empty_like(ls)
    np.put_along_axis(lv, order, ls, axis=1)
    return lv, scale, best_k, found


_MASKS_M = np.array([0x00, 0x80, 0x08, 0x88], dtype=np.int64)


def _iq1m_impl(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    nrows, npr = rows.shape
    nsb = nrows * (npr // QK_K)
    xsb = rows.reshape(nsb, QK_K)
    if imatrix is not None:
        qw = np.broadcast_to(imatrix.reshape(-1, QK_K)[None], (nrows, npr // QK_K, QK_K)).reshape(nsb, QK_K)
        wsb = _imatrix_weights(xsb, qw)
    else:
        wsb = xsb * xsb
    nb = nsb * 16
    x = xsb.reshape(nb, 16)
    w = wsb.reshape(nb, 16)
    mx = np.abs(x).max(axis=1)
    act = np.flatnonzero(mx >= _F(1e-7))  # GROUP_MAX_EPS_IQ1_M

    scales = np.zeros(nb, dtype=_F)
    shifts = np.zeros(nb, dtype=np.int64)
    index = np.zeros((nb, 2), dtype=np.int64)
    if act.size:
        xa, wa = x[act], w[act]
        lv, scale, best_k, found = _iq1m_search(xa, wa)
        neg = scale < 0
        lv = np.where(neg[:, None], 2 - lv, lv).astype(np.int8)
        scale = np.where(neg, -scale, scale)
        best_k = np.where(neg, 3 - best_k, best_k)
        na = act.size
        # xx of group 0: best_k < 2 ? x_p : x_m; group 1: best_k even ? x_p : x_m
        xm_g = np.stack([best_k >= 2, (best_k & 1) == 1], axis=1).reshape(-1)
        xx = np.where(xm_g[:, None], _XM[None, :], _XP[None, :])  # (na*2, 3)
        gi, offg = _grid_lookup(
            lv.reshape(na * 2, 8), xa.reshape(na * 2, 8), wa.reshape(na * 2, 8), np.repeat(scale, 2), xx
        )
        gi = gi.reshape(na, 2)
        refit = offg.reshape(na, 2).any(axis=1)
        levels = iq1_tables().grid_levels[gi.reshape(-1)].astype(np.int64)  # (na*2, 8)
        q = np.take_along_axis(xx, levels, axis=1).reshape(na, 16)
        wq = wa * q
        sqx = _seq_sum(wq * xa)
        sq2 = _seq_sum(wq * q)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            newscale = sqx / sq2
        scale = np.where(refit & (sqx > 0) & (sq2 > 0), newscale, scale)
        ok = found
        scales[act[ok]] = scale[ok]
        shifts[act[ok]] = best_k[ok]
        index[act[ok]] = gi[ok]

    sc16 = scales.reshape(nsb, 16)
    max_scale = sc16.max(axis=1)
    has = max_scale != 0
    d = max_scale / _F(15)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        idd = _F(1) / d
        lsc = nearest_int(_F(0.5) * (idd[:, None] * sc16 - _F(1)))
    lsc = np.clip(lsc, 0, 7).astype(np.int64)  # (nsb, 16)
    # final scale: weighted fit over the whole super-block with the 3-bit block scales applied
    sh = shifts.reshape(nsb, 16)
    xm_g = np.stack([sh >= 2, (sh & 1) == 1], axis=2)  # (nsb, 16, 2)
    levels = iq1_tables().grid_levels[index.reshape(nsb, 16, 2)].astype(np.int64)  # (nsb, 16, 2, 8)
    lvl_val = np.where(xm_g[..., None], _XM[levels], _XP[levels])
    q = (lvl_val * (2 * lsc + 1).astype(_F)[:, :, None, None]).reshape(nsb, QK_K)
    wq = wsb * q
    sqx = _seq_sum(wq * xsb)
    sq2 = _seq_sum(wq * q)
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
    return out.reshape(nrows, -1)


def quantize_iq1_m(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    """IQ1_M (ggml's quantize_iq1_m), with or without imatrix."""
    with np.errstate(all="ignore"):  # float32 C arithmetic: overflow to inf is part of the result
        return _iq1m_impl(rows, imatrix)
