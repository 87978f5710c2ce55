"""IQ2_XXS, IQ2_XS and IQ2_S: ggml's ``quantize_row_iq2_{xxs,xs,s}_impl`` vectorized over blocks.

Each 256-value super-block is split into sub-blocks (32 values for IQ2_XXS, 16 for IQ2_XS/IQ2_S) and
each sub-block into groups of 8. Signs are stored separately; the 8 magnitudes of a group are snapped
to a grid point (levels 0..2 at positions 1, 3, 5). A sub-block tries a fan of scales; for each, every
group is rounded to levels and, when that point is off the grid, replaced by the best of its
precomputed grid neighbours (``iq2_find_best_neighbour``). All of this runs over every sub-block of the
chunk at once. The neighbour search is a segmented argmin over the variable-length neighbour lists
(exact float32 distances); for the long lists of IQ2_XXS/IQ2_XS a matmul estimate decides first and only
near-ties go through the exact search (see ``_best_neighbour``).

Exactness notes: all arithmetic is float32 in C order (no FMA). C's sequential ``sum += ...`` loops
are column-by-column adds (``np.sum`` is pairwise), starting from ``+0.0`` like C (which turns an
all-``-0.0`` sum into +0.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
import numpy.typing as npt

from ._iq2_tables import GridTables, first_min, iq2_tables
from ._numeric import F32Array, U8Array, fp32_to_fp16_bits, nearest_int

__all__ = ["quantize_iq2_s", "quantize_iq2_xs", "quantize_iq2_xxs"]

I32Array = npt.NDArray[np.int32]
BoolArray = npt.NDArray[np.bool_]

QK_K = 256
GROUP_MAX_EPS = np.float32(1e-15)
GROUP_MAX_EPS_IQ2_S = np.float32(1e-8)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
_HALF = np.float32(0.5)
_TENTH = np.float32(0.1)
_INF = np.float32(np.inf)


@dataclass(frozen=True)
class _Search:
    """Per-grid arrays derived once from :class:`GridTables` for the vectorized neighbour search."""

    tables: GridTables
    n_levels: int
    tcode_t: I32Array  # (8, total): i * n_levels + level_i of the grid point at flat neighbour entry e
    levels_i32: I32Array  # (n_grid, 8)
    onehot: F32Array  # (8 * n_levels, n_grid): 1 where grid point j has level l at coordinate i
    penalty: F32Array  # (n_rows, n_grid): 0 where grid point j is a neighbour of row r, else +inf
    use_filter: bool
    mm_rows: int  # matmul row block small enough that OpenBLAS stays single-threaded


# Lists longer than this on average are searched through the matmul filter (see _best_neighbour).
_FILTER_MIN_MEAN_LIST = 16.0
_BLOCK = 1024


@cache
def _search(name: str) -> _Search:
    t = iq2_tables(name)
    n_levels = int(t.grid_levels.max()) + 1
    n_grid = t.grid_size
    lv = t.grid_levels.astype(np.int32)
    tcode = np.arange(8, dtype=np.int32)[:, None] * n_levels + lv[t.nb_flat].T
    onehot = np.zeros((8 * n_levels, n_grid), dtype=np.float32)
    onehot[(np.arange(8)[None, :] * n_levels + lv).reshape(-1), np.repeat(np.arange(n_grid), 8)] = 1
    use_filter = float(t.nb_count.mean()) > _FILTER_MIN_MEAN_LIST
    penalty = np.full((t.nb_count.size if use_filter else 0, n_grid), np.inf, dtype=np.float32)
    if use_filter:
        penalty[np.repeat(np.arange(t.nb_count.size), t.nb_count), t.nb_flat] = 0
    # OpenBLAS runs a gemm single-threaded when M*N*K <= 65536 * 4. Larger calls fan out to every
    # core, which for these small products costs far more than it gains and fights quantize's own
    # worker threads.
    mm_rows = max(1, (65536 * 4) // (n_grid * 8 * n_levels))
    return _Search(
        t,
        n_levels,
        np.ascontiguousarray(tcode, dtype=np.int32),
        lv,
        onehot,
        penalty,
        use_filter,
        mm_rows,
    )


def _seqsum(a: F32Array) -> F32Array:
    """C's ``float s = 0; for (i...) s += a[i];`` along the (short) last axis.

    A loop of whole-column adds: sequential like C, and much faster than ``np.cumsum`` along a short axis.
    """
    if a.shape[-1] == 0:
        return np.zeros(a.shape[:-1], dtype=np.float32)
    out: F32Array = a[..., 0] + _F0
    for i in range(1, a.shape[-1]):
        out += a[..., i]
    return out


def _codes(levels: I32Array) -> I32Array:
    """Grid codes u = sum(l[i] << 2*i) of (..., 8) levels."""
    out: I32Array = levels[..., 0].copy()
    for i in range(1, 8):
        out |= levels[..., i] << (2 * i)
    return out


def _d2_terms(s: _Search, xval: F32Array, waux: F32Array, scale: F32Array) -> F32Array:
    """The 8 terms ``waux[i]*diff*diff`` of ``iq2_find_best_neighbour``'s d2 depend only on (group,
    coordinate, level): (n, 8, n_levels), each computed exactly as C does."""
    terms = np.empty((xval.shape[0], 8, s.n_levels), dtype=np.float32)
    for lvl in range(s.n_levels):
        diff = scale[:, None] * np.float32(2 * lvl + 1) - xval
        terms[:, :, lvl] = (waux * diff) * diff
    return terms


def _exact_neighbour(s: _Search, rows: I32Array, terms: F32Array) -> I32Array:
    """Exact ``iq2_find_best_neighbour``: sequential float32 d2 over every list entry, first minimum."""
    t = s.tables
    n = rows.shape[0]
    cnt = t.nb_count[rows]
    seg = np.cumsum(cnt, dtype=np.int64) - cnt
    total = int(seg[-1] + cnt[-1])
    flat = np.repeat(t.nb_start[rows] - seg, cnt) + np.arange(total, dtype=np.int32)
    base = np.repeat(np.arange(0, n * terms[0].size, terms[0].size, dtype=np.int32), cnt)
    tflat = terms.reshape(-1)
    # one coordinate at a time keeps the temporaries small (in cache)
    d2 = np.take(tflat, np.take(s.tcode_t[0], flat) + base) + _F0
    for i in range(1, 8):
        d2 += np.take(tflat, np.take(s.tcode_t[i], flat) + base)
    # C's `d2 < best` never picks a NaN; a group without a finite distance takes its first neighbour
    first = first_min(np.where(np.isnan(d2), _INF, d2), seg)
    out: I32Array = t.nb_flat[flat[first]]
    return out


def _best_neighbour(s: _Search, codes: I32Array, xval: F32Array, waux: F32Array, scale: F32Array) -> I32Array:
    """``iq2_find_best_neighbour`` for n off-grid groups at once: grid index per group.

    codes (n,), xval/waux (n, 8), scale (n,). For every neighbour ``d2 = sum_i waux*diff*diff`` with
    ``diff = scale*q - xval``; the first neighbour with the smallest d2 wins (C's strict ``<``).

    For long neighbour lists, d2 of every grid point is first estimated with a float32 matmul of the
    terms against a one-hot grid matrix. All terms are >= 0, so both the estimate (any summation order
    of 24 terms) and C's sequential sum are within 23 resp. 7 units of 2**-24 (relative) of the true sum:
    C's choice must have an estimate within ~60 * 2**-24 of the smallest estimate among the neighbours.
    Groups where no other neighbour lies within ``2**-16`` (relative) of that smallest estimate are
    decided by it; the rest (near ties, exact ties, non-finite values) take the exact path.
    """
    rows = s.tables.nb_row[codes]
    terms = _d2_terms(s, xval, waux, scale)
    if not s.use_filter:
        return _exact_neighbour(s, rows, terms)
    return _filtered_neighbour(s, rows, terms)


def _filtered_neighbour(s: _Search, rows: I32Array, terms: F32Array) -> I32Array:
    """The matmul-filtered search of :func:`_best_neighbour` (rows: neighbour-table rows, terms (n, 8, L))."""
    n = rows.shape[0]
    out = np.empty(n, dtype=np.int32)
    amb_l: list[npt.NDArray[np.intp]] = []
    flat_terms = terms.reshape(n, -1)
    for a in range(0, n, _BLOCK):
        b = min(n, a + _BLOCK)
        est = np.empty((b - a, s.tables.grid_size), dtype=np.float32)
        for c in range(a, b, s.mm_rows):
            np.matmul(flat_terms[c : min(b, c + s.mm_rows)], s.onehot, out=est[c - a : c - a + s.mm_rows])
        est += np.take(s.penalty, rows[a:b], axis=0)
        j = est.argmin(axis=1)
        r = np.arange(b - a)
        m = est[r, j]
        thr = m + (m * np.float32(2.0**-16) + np.float32(2.0**-120))
        est[r, j] = np.inf
        # decided when every other neighbour is clearly worse (False for NaN too)
        amb = ~(est.min(axis=1) > thr)
        out[a:b] = j
        amb_l.append(np.flatnonzero(amb) + a)
    amb_all = np.concatenate(amb_l)
    if amb_all.size:
        out[amb_all] = _exact_neighbour(s, rows[amb_all], terms[amb_all])
    return out


def _round_to_grid(
    s: _Search, xval: F32Array, waux: F32Array, id_: F32Array, scale: F32Array
) -> tuple[I32Array, BoolArray]:
    """Round (S, n, 8) magnitudes with inverse scale ``id_`` (S,) to levels, snapping off-grid groups
    to their best neighbour at ``scale`` (S,). Returns levels (S, n, 8) and the on-grid mask (S, n)."""
    lv = nearest_int(_HALF * (id_[:, None, None] * xval - _F1))
    lv = np.ascontiguousarray(np.clip(lv, 0, 2))  # reshape below must be a view
    u = _codes(lv)
    on = s.tables.kmap[u] >= 0
    off = np.flatnonzero(~on)
    if off.size:
        ng = xval.shape[1]
        gi = _best_neighbour(
            s, u.reshape(-1)[off], xval.reshape(-1, 8)[off], waux.reshape(-1, 8)[off], scale[off // ng]
        )
        lv.reshape(-1, 8)[off] = s.levels_i32[gi]
    return lv, on


def _sums(wx: F32Array, w: F32Array, lv: I32Array) -> tuple[F32Array, F32Array]:
    """sumqx = sum w*xval*q, sumq2 = sum w*q*q with q = 2*l + 1, over a sub-block (last two axes)."""
    shape = (wx.shape[0], int(np.prod(wx.shape[1:])))
    q = (2 * lv + 1).astype(np.float32).reshape(shape)
    w2 = w.reshape(shape)
    return _seqsum(wx.reshape(shape) * q), _seqsum((w2 * q) * q)


def _scale_search(
    s: _Search,
    xval: F32Array,
    w: F32Array,
    waux: F32Array,
    denom: F32Array,
    is_range: range,
    scale: F32Array,
    lv0: I32Array,
) -> tuple[F32Array, I32Array, BoolArray]:
    """The ``for (is ...)`` loop shared by the three types.

    xval/w/waux (S, n, 8); candidate inverse scales ``(5 + is*0.1f)/denom``. Returns the scale,
    levels and per-group on-grid flags of the best candidate (inputs unchanged where none wins).
    """
    wx = w * xval
    best = np.zeros_like(scale)
    lv_best = lv0
    on_best = np.ones(xval.shape[:2], dtype=np.bool_)
    for is_ in is_range:
        id_ = (np.float32(5) + np.float32(is_) * _TENTH) / denom
        this_scale = _F1 / id_
        lv, on = _round_to_grid(s, xval, waux, id_, this_scale)
        sumqx, sumq2 = _sums(wx, w, lv)
        take = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        if take.any():
            new_scale = sumqx / sumq2
            scale = np.where(take, new_scale, scale)
            best = np.where(take, new_scale * sumqx, best)
            lv_best = np.where(take[:, None, None], lv, lv_best)
            on_best = np.where(take[:, None], on, on_best)
    return scale, lv_best, on_best


def _make_qp_quants_32_4(x: F32Array, w: F32Array) -> F32Array:
    """ggml's ``make_qp_quants(32, 4, x, L, w)`` for (S, 32) rows whose max is >= GROUP_MAX_EPS; returns
    the scale. ``L`` is ``uint8_t`` there, so negative levels (possible: one xval may be negative) wrap."""
    nmax = np.float32(4)
    mx = x.max(axis=1)
    iscale = nmax / mx
    lq = (nearest_int(iscale[:, None] * x) & 255).astype(np.float32)
    sc = _F1 / iscale
    diff = x - sc[:, None] * lq
    best_mse = _seqsum((w * diff) * diff)
    for is_ in (-4, -3, -2, -1, 1, 2, 3, 4):
        iscale_is = (_TENTH * np.float32(is_) + nmax) / mx
        scale_is = _F1 / iscale_is
        li = np.minimum(nearest_int(iscale_is[:, None] * x), 4).astype(np.float32)
        diff = x - scale_is[:, None] * li
        mse = _seqsum((w * diff) * diff)
        better = mse < best_mse
        best_mse = np.where(better, mse, best_mse)
        iscale = np.where(better, iscale_is, iscale)
    li_int = np.minimum(nearest_int(iscale[:, None] * x), 4)
    lf = li_int.astype(np.float32)
    wx = w * x
    sumlx = _seqsum(wx * lf)
    suml2 = _seqsum((w * lf) * lf)
    lst = li_int & 255  # stored as uint8
    todo = np.arange(x.shape[0])
    for _ in range(5):
        if todo.size == 0:
            break
        changed = np.zeros(todo.size, dtype=np.bool_)
        slx_all = sumlx[todo]
        sl2_all = suml2[todo]
        for i in range(32):
            wi = w[todo, i]
            xi = x[todo, i]
            wxi = wx[todo, i]
            li_old = lst[todo, i]
            lo = li_old.astype(np.float32)
            slx = slx_all - wxi * lo
            sl2 = sl2_all - (wi * lo) * lo
            ok = (slx > 0) & (sl2 > 0)
            new_l = np.minimum(nearest_int((xi * sl2) / slx), 4)
            ok &= new_l != li_old
            nf = new_l.astype(np.float32)
            slx = slx + wxi * nf
            sl2 = sl2 + (wi * nf) * nf
            ok &= (slx * slx) * sl2_all > (slx_all * slx_all) * sl2
            if ok.any():
                lst[todo[ok], i] = new_l[ok] & 255
                slx_all = np.where(ok, slx, slx_all)
                sl2_all = np.where(ok, sl2, sl2_all)
                changed |= ok
        sumlx[todo] = slx_all
        suml2[todo] = sl2_all
        todo = todo[changed]
    out: F32Array = np.where(suml2 > 0, sumlx / np.where(suml2 > 0, suml2, _F1), _F0).astype(np.float32)
    return out


@dataclass
class _Prep:
    xval: F32Array  # (S, n, 8) sign-folded values
    w: F32Array  # (S, n, 8) importance
    waux: F32Array  # (S, n, 8) sqrt(w)
    signs: I32Array  # (S, n) sign bits per group
    mx: F32Array  # (S,) max xval of the sub-block


def _prepare(
    rows: F32Array, imatrix: F32Array | None, sub: int, *, parity: bool, iq2s: bool
) -> tuple[int, _Prep]:
    n_rows, n_per_row = rows.shape
    nbl = n_rows * n_per_row // QK_K
    x = rows.reshape(nbl, QK_K)
    sumx2 = _seqsum(x * x)
    sigma2 = (np.float32(2) * sumx2 if iq2s else sumx2) / np.float32(QK_K)
    x2 = x * x
    if imatrix is not None:
        qw = np.broadcast_to(imatrix.reshape(1, n_per_row), (n_rows, n_per_row)).reshape(nbl, QK_K)
        w = qw * np.sqrt(sigma2[:, None] + x2)
    else:
        w = np.float32(0.25) * sigma2[:, None] + x2
    waux = np.sqrt(w)
    ng = sub // 8
    xs = x.reshape(-1, ng, 8)
    w = w.reshape(-1, ng, 8)
    waux = waux.reshape(-1, ng, 8)
    neg = ~(xs >= 0)
    xval = np.where(neg, -xs, xs)
    bits = neg.astype(np.int32) << np.arange(8, dtype=np.int32)
    signs = bits.sum(axis=-1, dtype=np.int32)
    if parity:
        odd = (neg.sum(axis=-1) & 1).astype(np.bool_)
        if odd.any():
            ax = (w * xs) * xs
            imin = np.argmin(ax, axis=-1)
            flip = odd[..., None] & (np.arange(8) == imin[..., None])
            xval = np.where(flip, -xval, xval)
            signs = signs ^ (odd.astype(np.int32) << imin.astype(np.int32))
        signs &= 127
    mx = xval.reshape(xval.shape[0], -1).max(axis=1)
    return nbl, _Prep(xval, w, waux, signs, mx)


def _superblock_scales(scales: F32Array, nbl: int, n_sub: int) -> tuple[F32Array, I32Array, BoolArray]:
    """max_scale, d = max_scale/31 and the 4-bit sub-block scales; also the ``max_scale != 0`` mask."""
    sc = scales.reshape(nbl, n_sub)
    max_scale = np.maximum(sc.max(axis=1), _F0)
    nz = max_scale != 0
    d = max_scale / np.float32(31)
    id_: F32Array = (_F1 / np.where(nz, d, _F1)).astype(np.float32, copy=False)
    ls = np.clip(nearest_int(_HALF * (id_[:, None] * sc - _F1)), 0, 15)
    return d, ls, nz


def _final_round(
    s: _Search,
    xv: F32Array,
    w: F32Array,
    wa: F32Array,
    scale: F32Array,
    lv: I32Array,
    sel: BoolArray,
    on: BoolArray | None,
) -> None:
    """Round the selected sub-blocks once more at their best scale and refit that scale (in place).

    With ``on`` given, groups that were on the grid at the best candidate keep their levels."""
    if not sel.any():
        return
    sp = scale[sel]
    xr, war = xv[sel], wa[sel]
    lvr, _ = _round_to_grid(s, xr, war, _F1 / sp, sp)
    if on is not None:
        lvr = np.where(on[sel][:, :, None], lv[sel], lvr)
    lv[sel] = lvr
    sumqx, sumq2 = _sums(w[sel] * xr, w[sel], lvr)
    scale[sel] = np.where(sumq2 > 0, sumqx / sumq2, sp)


def _fold_sign(scale: F32Array, signs: I32Array, mask: int) -> tuple[F32Array, I32Array]:
    """A negative sub-block scale is stored as |scale| with every sign bit (within ``mask``) flipped."""
    negs = scale < 0
    return np.where(negs, -scale, scale), np.where(negs[:, None], ~signs & mask, signs)


def _fp16_header(d: F32Array, nz: BoolArray) -> U8Array:
    """The fp16 super-block scale as little-endian bytes (nbl, 2); 0 where ``max_scale == 0``."""
    h: U8Array = np.where(nz, fp32_to_fp16_bits(d), np.uint16(0)).astype("<u2").view(np.uint8)
    return h.reshape(-1, 2)


def _scale_nibbles(ls: I32Array, nz: BoolArray) -> U8Array:
    """Two 4-bit sub-block scales per byte, (nbl, 8); 0 where ``max_scale == 0``."""
    lp = ls.reshape(ls.shape[0], 8, 2)
    sc = (lp[:, :, 0] | (lp[:, :, 1] << 4)).astype(np.uint8)
    sc[~nz] = 0
    return sc


def _start(name: str, rows: F32Array, imatrix: F32Array | None, sub: int) -> tuple[_Search, int, _Prep]:
    """Grid tables and prepared sub-blocks of ``sub`` values; IQ2_XXS/IQ2_XS need the imatrix."""
    iq2s = name == "IQ2_S"
    if imatrix is None and not iq2s:
        raise ValueError(f"{name} requires an importance matrix")
    nbl, p = _prepare(rows, imatrix, sub, parity=not iq2s, iq2s=iq2s)
    return _search(name), nbl, p


def _iq2_xxs(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    s, nbl, p = _start("IQ2_XXS", rows, imatrix, 32)
    n_sub = p.mx.shape[0]
    scales = np.zeros(n_sub, dtype=np.float32)
    gidx = np.zeros((n_sub, 4), dtype=np.int32)
    signs = np.zeros((n_sub, 4), dtype=np.int32)
    act = np.flatnonzero(~(p.mx < GROUP_MAX_EPS))
    if act.size:
        xv = p.xval[act]
        w = p.w[act]
        wa = p.waux[act]
        scale = _make_qp_quants_32_4(xv.reshape(-1, 32), w.reshape(-1, 32))
        eff_max = scale * np.float32(3)
        keep = eff_max > 0
        act, xv, w, wa, scale, eff_max = act[keep], xv[keep], w[keep], wa[keep], scale[keep], eff_max[keep]
        lv0 = np.zeros(xv.shape, dtype=np.int32)
        scale, lv, _ = _scale_search(s, xv, w, wa, eff_max, range(-6, 7), scale, lv0)
        _final_round(s, xv, w, wa, scale, lv, scale > 0, None)
        scales[act], signs[act] = _fold_sign(scale, p.signs[act], 127)
        gidx[act] = s.tables.kmap[_codes(lv)]
    d, ls, nz = _superblock_scales(scales, nbl, 8)
    q_lo = (gidx.astype(np.uint32) << (8 * np.arange(4, dtype=np.uint32))).sum(axis=1, dtype=np.uint32)
    q_hi = (signs.astype(np.uint32) << (7 * np.arange(4, dtype=np.uint32))).sum(axis=1, dtype=np.uint32)
    q_hi = q_hi | (ls.reshape(-1).astype(np.uint32) << np.uint32(28))
    q2 = np.stack([q_lo, q_hi], axis=1).reshape(nbl, 16)
    q2[~nz] = 0
    out = np.empty((nbl, 66), dtype=np.uint8)
    out[:, 0:2] = _fp16_header(d, nz)
    out[:, 2:] = q2.astype("<u4").view(np.uint8).reshape(nbl, 64)
    return out.reshape(rows.shape[0], -1)


def _search_16(s: _Search, p: _Prep, eps: np.float32) -> tuple[npt.NDArray[np.intp], F32Array, I32Array]:
    """The per-sub-block part shared by IQ2_XS and IQ2_S: (active sub-blocks, scales, grid indices)."""
    act = np.flatnonzero(~(p.mx < eps))
    xv = p.xval[act]
    w = p.w[act]
    wa = p.waux[act]
    mx = p.mx[act]
    scale = mx / np.float32(5)
    lv0 = np.zeros(xv.shape, dtype=np.int32)
    scale, lv, on = _scale_search(s, xv, w, wa, mx, range(-9, 10), scale, lv0)
    _final_round(s, xv, w, wa, scale, lv, (~on).any(axis=1) & (scale > 0), on)
    gidx = s.tables.kmap[_codes(lv)]
    return act, scale, gidx


def _iq2_xs(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    s, nbl, p = _start("IQ2_XS", rows, imatrix, 16)
    n_sub = p.mx.shape[0]
    scales = np.zeros(n_sub, dtype=np.float32)
    q2 = np.zeros((n_sub, 2), dtype=np.uint16)
    act, scale, gidx = _search_16(s, p, GROUP_MAX_EPS)
    if act.size:
        scales[act], sg = _fold_sign(scale, p.signs[act], 127)
        q2[act] = (gidx | (sg << 9)).astype(np.uint16)
    d, ls, nz = _superblock_scales(scales, nbl, 16)
    q2 = q2.reshape(nbl, 32)
    q2[~nz] = 0
    sc = _scale_nibbles(ls, nz)
    out = np.empty((nbl, 74), dtype=np.uint8)
    out[:, 0:2] = _fp16_header(d, nz)
    out[:, 2:66] = q2.astype("<u2").view(np.uint8).reshape(nbl, 64)
    out[:, 66:74] = sc
    return out.reshape(rows.shape[0], -1)


def _iq2_s(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    s, nbl, p = _start("IQ2_S", rows, imatrix, 16)
    n_sub = p.mx.shape[0]
    scales = np.zeros(n_sub, dtype=np.float32)
    gall = np.zeros((n_sub, 2), dtype=np.int32)
    sall = np.zeros((n_sub, 2), dtype=np.int32)
    act, scale, gidx = _search_16(s, p, GROUP_MAX_EPS_IQ2_S)
    if act.size:
        scales[act], sall[act] = _fold_sign(scale, p.signs[act], 255)
        gall[act] = gidx
    d, ls, nz = _superblock_scales(scales, nbl, 16)
    gall = gall.reshape(nbl, 32)
    sc = _scale_nibbles(ls, nz)
    qh = ((gall >> 8).reshape(nbl, 8, 4) << (2 * np.arange(4, dtype=np.int32))).sum(axis=2)
    out = np.empty((nbl, 82), dtype=np.uint8)
    out[:, 0:2] = _fp16_header(d * np.float32(0.9875), nz)
    out[:, 2:34] = (gall & 255).astype(np.uint8)
    out[:, 34:66] = sall.reshape(nbl, 32).astype(np.uint8)
    out[:, 66:74] = qh.astype(np.uint8)
    out[:, 74:82] = sc
    return out.reshape(rows.shape[0], -1)


# Overflow/underflow/NaN are part of ggml's arithmetic (e.g. |x| ~ 1e5 overflows fp16 scales); numpy must
# compute them silently, as C does.


def quantize_iq2_xxs(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    """IQ2_XXS (66 bytes per 256 values): ``quantize_iq2_xxs``; the imatrix is mandatory."""
    with np.errstate(all="ignore"):
        return _iq2_xxs(rows, imatrix)


def quantize_iq2_xs(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    """IQ2_XS (74 bytes per 256 values): ``quantize_iq2_xs``; the imatrix is mandatory."""
    with np.errstate(all="ignore"):
        return _iq2_xs(rows, imatrix)


def quantize_iq2_s(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    """IQ2_S (82 bytes per 256 values): ``quantize_iq2_s``, with or without imatrix."""
    with np.errstate(all="ignore"):
        return _iq2_s(rows, imatrix)
