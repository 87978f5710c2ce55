"""ggml's scale searches (make_qx_quants, make_q3_quants, make_qkx2/3_quants, make_qp_quants), vectorized.

Every function works on a *transposed* group layout: ``x`` has shape ``(n, G)`` where ``n`` is the number of
values in one group (16 or 32 for k-quant sub-blocks, 8 or 16 for the scales of a super-block) and ``G``
the number of independent groups. Row ``i`` holds element ``i`` of every group, contiguous, so the
sequential C sums (``sum += w[i]*x[i]`` for i = 0..n-1) become :func:`._numeric.seq_sum` over axis 0
(one vector add per ``i``, in C's order), and all groups are processed at once.

The candidate-scale loops of the searches are Python loops over candidates (at most 37), each a handful of
vector operations over every group; where C carries state from one candidate to the next (the current
``min`` in make_qkx2/3_quants) the state is a per-group vector. The iterative refinements of
make_q3_quants / make_qp_quants (sequential over the elements of a group) are evaluated for all elements
at once, applying one accepted change per group and round (see :func:`_refine_levels`; make_q3_quants has
its own sparser rounds, :func:`_q3_refine`).

make_qx_quants / make_qx_quants_iscale instead compute every candidate's sums first (C's accept test only
reads the sums), then run the accept scan over them; where numpy's einsum is C's in-order float32 sum of
rounded products (checked at run time, :func:`einsum_sums_exact`) a sum is one einsum pass instead of
products and a reduction.

Arithmetic is float32, operation by operation in C order (ggml-base is built without FMA contraction).
Quantized levels are returned as float32 arrays holding small integers (exact).

Speed: the hot loops write into per-thread scratch buffers (:func:`._numeric.scratch`) instead of allocating
temporaries; fresh multi-100-KB temporaries cost page faults on every allocation.
"""

from __future__ import annotations

import functools
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from ._numeric import F32Array, nearest_int, scratch, seq_sum

__all__ = [
    "clamped_levels",
    "einsum_sums_exact",
    "make_q3_quants",
    "make_qkx2_quants",
    "make_qkx3_quants",
    "make_qp_quants",
    "make_qx_quants",
    "make_qx_quants_iscale",
    "nearest_int_f",
    "nearest_int_inplace",
    "nearest_int_into",
    "seq_sum_middle",
]

IntpArray = npt.NDArray[np.intp]
AnyArray = npt.NDArray[Any]

GROUP_MAX_EPS = np.float32(1e-15)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
# Below this magnitude ggml's nearest_int (the 1.5*2^23 trick) equals round-half-even.
_NINT_SAFE = np.float32(4194304.0)
_MAGIC = np.float32(12582912.0)
_NEG_INF = np.float32(-np.inf)


def nearest_int_inplace(v: F32Array) -> npt.NDArray[np.int32]:
    """ggml ``nearest_int`` of every element, computed in ``v``'s memory; returns the int32 view of it."""
    np.add(v, _MAGIC, out=v)
    vi = v.view(np.int32)
    np.bitwise_and(vi, np.int32(0x007FFFFF), out=vi)
    np.subtract(vi, np.int32(0x00400000), out=vi)
    return vi


def nearest_int_into(v: F32Array, out: F32Array) -> F32Array:
    """ggml ``nearest_int`` of every element as float32 into ``out``; ``v`` is overwritten."""
    np.copyto(out, nearest_int_inplace(v), casting="unsafe")
    return out


def nearest_int_f(v: AnyArray) -> F32Array:
    """ggml ``nearest_int`` for any float32 input (NaN/inf/huge included), as float32."""
    return nearest_int(v).astype(np.float32)


def seq_sum_middle(t: F32Array, out: F32Array) -> F32Array:
    """:func:`._numeric.seq_sum` over axis 1 of a (k, n, G) array into ``out`` (k, G).

    Numpy's reduction over the middle axis is sequential either way, but about a quarter slower when
    given ``initial=0``; C's sum starts from +0.0, which only matters for an all -0.0 sum (-0.0 + 0 =
    +0.0, every other value is unchanged by adding +0.0).
    """
    if t.shape[2] < 2:  # a single group: numpy would sum pairwise
        return seq_sum(t, axis=1, out=out)
    np.add.reduce(t, axis=1, out=out)
    np.add(out, _F0, out=out)
    return out


def _first_absmax(x: F32Array) -> tuple[F32Array, F32Array]:
    """``for i: if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }`` from amax = max = 0.

    NaN never wins (C's ``>``); among equal magnitudes the first element wins.
    """
    hi: F32Array = np.maximum.reduce(x, axis=0)  # NaN propagates: a NaN here means one in the group
    if np.isnan(hi).any():
        ax = np.abs(x, out=scratch("fam.ax", x.shape))
        amax: F32Array = np.fmax.reduce(ax, axis=0)
        amax[~(amax > 0)] = 0
        hi = np.fmax.reduce(x, axis=0)
        lo: F32Array = np.fmin.reduce(x, axis=0)
        has_pos = hi == amax
        mx = np.where(has_pos, amax, -amax)
        tie = np.flatnonzero(has_pos & (lo == -amax) & (amax > 0))
    else:  # two reductions instead of |x| and three
        lo = np.minimum.reduce(x, axis=0)
        nlo = np.negative(lo)
        amax = np.maximum(hi, nlo)
        amax[~(amax > 0)] = 0
        mx = np.where(hi > nlo, hi, lo)
        tie = np.flatnonzero((hi == nlo) & (amax > 0))
    mx[amax == 0] = 0
    if tie.size:  # both signs reach amax: the first one wins
        xt = x[:, tie]
        at = amax[tie]
        first = np.zeros(tie.size, dtype=np.float32)
        for i in range(x.shape[0] - 1, -1, -1):
            np.copyto(first, xt[i], where=np.abs(xt[i]) == at)
        mx[tie] = first
    return amax, mx


def _blend_columns(dst: F32Array, src: F32Array, take: npt.NDArray[np.bool_]) -> None:
    """``np.copyto(dst, src, where=take)`` for a per-column ``take``, bitwise: numpy's masked copy
    runs element by element, several times slower than three whole-array integer operations."""
    mask = np.multiply(take, np.uint32(0xFFFFFFFF), out=scratch("blend.mask", take.shape, np.uint32))
    d, s = dst.view(np.uint32), src.view(np.uint32)
    diff = np.bitwise_xor(d, s, out=scratch("blend.diff", d.shape, np.uint32))
    np.bitwise_and(diff, mask, out=diff)
    np.bitwise_xor(d, diff, out=d)


# --------------------------------------------------------------------------------------------- make_qx_quants


def make_qx_quants(x: F32Array, nmax: int, qw: F32Array | None = None) -> tuple[F32Array, F32Array]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw) for every group; returns (scale, L) with L = nmax + l.

    Every candidate's sums first, then C's accept scan (:func:`_qx_accept_scan`), then the levels of
    the accepted candidate.
    """
    n, g = x.shape
    amax, mx = _first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    w = np.multiply(x, x, out=scratch("qx.w", x.shape)) if qw is None else qw
    wx = np.multiply(w, x, out=scratch("qx.wx", x.shape))
    safe_mx = np.where(zero, _F1, mx)
    lo, hi = np.float32(-nmax), np.float32(nmax - 1)
    c = _qx_candidates(nmax)
    v = scratch("qx.v", x.shape)
    t = scratch("qx.t", (2, n, g))
    S = scratch("qx.S", (c.size, 2, g))  # [sumlx, suml2] per candidate
    fused = g >= 2 and einsum_sums_exact()

    # For finite x, |iscale*x| <= nmax + 1 and rint is ggml's nearest_int; NaN/inf need the exact trick.
    exact = not bool(np.isfinite(x).all())

    def levels(iscale: AnyArray, out: F32Array) -> F32Array:
        np.multiply(x, iscale, out=out)
        if exact:
            out[...] = nearest_int_f(out)
        else:
            np.rint(out, out=out)
        np.clip(out, lo, hi, out=out)
        return out

    with np.errstate(all="ignore"):
        for j, negc in enumerate(np.negative(c)):
            levels(np.divide(negc, safe_mx), v)
            if fused:
                np.einsum("in,in->n", wx, v, out=S[j, 0])
                np.einsum("in,in,in->n", w, v, v, out=S[j, 1])
                continue
            np.multiply(wx, v, out=t[0])
            np.multiply(w, v, out=t[1])
            np.multiply(t[1], v, out=t[1])
            seq_sum_middle(t, S[j])
        scale, idx = _qx_accept_scan(S)
        L = levels(np.divide(np.negative(c)[idx], safe_mx), np.empty_like(x))
        L += np.float32(nmax)
    if zero.any():
        L[:, zero] = 0
        scale[zero] = 0
    return scale, L


# ------------------------------------------------------------------ make_qx_quants returning the best iscale


def _first_absmax_finite(xt: F32Array) -> tuple[F32Array, bool]:
    """Like :func:`_first_absmax`'s ``max`` (C's ``if (ax > amax) { amax = ax; max = x[i]; }``, NaNs
    never picked), also telling whether ``xt`` is all finite (from the same two reductions).

    +0.0 for an all-zero group (the initial value is never replaced).
    """
    mx = xt.max(axis=0)  # NaN and inf show up in the max or the min
    mn = xt.min(axis=0)
    finite = bool(np.isfinite(mx).all() and np.isfinite(mn).all())
    if not finite:
        clean = np.where(np.isnan(xt), _F0, xt)
        mx = clean.max(axis=0)
        mn = clean.min(axis=0)
    else:
        clean = xt
    neg = np.negative(mn)
    # np.where(neg > mx, mn, mx) without a data-dependent select: mx + mn < 0 exactly when neg > mx
    # (a rounded sum keeps the exact sum's sign, and is +0.0 for mx == neg); mx + mn is NaN only for
    # +-inf, a tie, which is redone below. "+ 0.0" turns a -0.0 into +0.0 (all-zero blocks) and
    # leaves everything else alone.
    m: F32Array = np.maximum(mx, neg)
    if finite:
        np.copysign(m, np.add(mx, mn), out=m)
    else:
        with np.errstate(invalid="ignore"):  # inf + -inf (a numpy errstate costs several us)
            np.copysign(m, np.add(mx, mn), out=m)
    m += _F0
    tie = np.flatnonzero((neg == mx) & (mx != 0))
    if tie.size:
        sub = clean[:, tie]
        first_pos = np.argmax(sub == mx[tie], axis=0)
        first_neg = np.argmax(sub == mn[tie], axis=0)
        m[tie] = np.where(first_neg < first_pos, mn[tie], mx[tie])
    return m, finite


def _einsum_probe_operands() -> tuple[F32Array, F32Array, F32Array]:
    """(a, b, c) of shape (40, 9000) whose columns tell C's ``s = 0; for (i) s += a[i]*b[i]`` (products and
    sums rounded to float32, in order of i, from +0.0) from a fused multiply-add, a wider temporary, a
    pairwise or reordered sum, a sum from the first product; the first columns are built for that, the
    rest are random (as many as a chunk's groups: numpy may loop differently over large arrays)."""
    rng = np.random.default_rng(12345)
    a = rng.standard_normal((40, 9000)).astype(np.float32)
    b = rng.standard_normal((40, 9000)).astype(np.float32)
    c = rng.standard_normal((40, 9000)).astype(np.float32)
    f = np.float32
    u = f(1 + 2.0**-12)  # u*u = 1 + 2^-11 + 2^-24: the product rounds (tie, to even)
    a[:, :3] = b[:, :3] = c[:, :3] = 0
    a[:2, 0], b[:2, 0], c[:2, 0] = [f(-1), u], [f(1), u], [f(1), f(1)]  # fused: -1 + u*u keeps the 2^-24
    a[:2, 1], b[:2, 1], c[:2, 1] = [u, u], [u, u], [f(1), f(1 + 2.0**-23)]  # a wider (a*b)*c rounds once
    a[:3, 2], b[:3, 2], c[:3, 2] = [f(1), f(2.0**-24), f(2.0**-24)], [f(1)] * 3, [f(1)] * 3  # in order: 1
    a[:, 3], b[:, 3], c[:, 3] = f(-0.0), f(1), f(1)  # from +0.0: 0 + -0 = +0
    return a, b, c


@functools.cache
def einsum_sums_exact() -> bool:
    """Whether ``np.einsum("in,in->n", a, b)`` and ``np.einsum("in,in,in->n", a, b, c)`` are C's sequential
    float32 sums of rounded products over axis 0 (for at least two columns). Numpy builds its einsum loops
    for the baseline instruction set, which has no FMA on x86-64 (v2); where a build fuses, widens or
    reorders, the searches keep their products and reductions (the result is the same, only slower).
    """
    a, b, c = _einsum_probe_operands()
    with np.errstate(all="ignore"):
        ab = np.multiply(a, b)
        want2 = seq_sum(ab)
        want3 = seq_sum(np.multiply(ab, c))
        for cols in (a.shape[1], 2, 3, 17):
            ac, bc, cc = (np.ascontiguousarray(m[:, :cols]) for m in (a, b, c))  # laid out as the searches'
            got2 = np.einsum("in,in->n", ac, bc)
            got3 = np.einsum("in,in,in->n", ac, bc, cc)
            if got2.tobytes() != want2[:cols].tobytes() or got3.tobytes() != want3[:cols].tobytes():
                return False
    return True


def _qx_candidates(nmax: int) -> F32Array:
    """C's divisors of ``max`` in candidate order: ``nmax`` (iscale = -nmax/max), then ``nmax + 0.1f*is``
    for is = -9..9, 0 left out."""
    steps = np.array([*range(-9, 0), *range(1, 10)], dtype=np.float32)
    return np.concatenate([[np.float32(nmax)], np.float32(nmax) + np.float32(0.1) * steps]).astype(np.float32)


def _qx_clip_modes(c: F32Array, nmax: int) -> list[int]:
    """Which clamps of ``nearest_int(iscale * x)`` to ``[-nmax, nmax - 1]`` candidate ``c`` can need, for
    finite x: 0 none, 1 only the upper bound, 2 both.

    ``|iscale * x| <= c * (1 + 2^-24)^2`` (|x| <= |max|, two roundings), and the product at ``max``
    itself is about ``-c``: the upper bound is reachable from ``c >= nmax - 0.5`` on (half-even rint of
    nmax - 0.5 is nmax for even nmax), the lower one only past ``c = nmax + 0.5``; the 0.05 margins dwarf
    the rounding.
    """
    return [0 if float(v) < nmax - 0.55 else 1 if float(v) < nmax + 0.45 else 2 for v in c]


def _qx_accept_scan(S: F32Array) -> tuple[F32Array, npt.NDArray[np.uint8]]:
    """C's accept-if-better scan over the candidates' sums ``S`` (k, 2, G) = [sumlx, suml2]: returns
    each group's final scale and the index of its last accepted candidate (0: the first one).

    ``scale = suml2 ? sumlx/suml2 : 0; best = scale*sumlx`` from candidate 0, then for each later one
    ``if (suml2 > 0 && sumlx*sumlx > best*suml2) { scale = sumlx/suml2; best = scale*sumlx; }``. Every
    candidate's scale and best are computed at once; the scan itself is a few (G,) operations per
    candidate, the accepted best blended in bitwise (a masked copy runs element by element).
    """
    k, _, g = S.shape
    slx, sl2 = S[:, 0], S[:, 1]
    sc = np.divide(slx, sl2, out=scratch("qxa.sc", (k, g)))
    np.putmask(sc[0], sl2[0] == 0, _F0)
    nbest = np.multiply(sc, slx, out=scratch("qxa.nbest", (k, g)))
    lhs = np.multiply(slx, slx, out=scratch("qxa.lhs", (k, g)))
    acc = np.greater(sl2, _F0, out=scratch("qxa.acc", (k, g), np.bool_))  # suml2 > 0, then accepted
    best = nbest[0].copy()
    rhs = scratch("qxa.rhs", (g,))
    better = scratch("qxa.better", (g,), np.bool_)
    mask = scratch("qxa.mask", (g,), np.uint32)
    diff = scratch("qxa.diff", (g,), np.uint32)
    bu = best.view(np.uint32)
    ones = np.array(0xFFFFFFFF, dtype=np.uint32)  # a 0-d operand: numpy takes it faster than a scalar
    for j in range(1, k):
        np.multiply(best, sl2[j], out=rhs)
        np.greater(lhs[j], rhs, out=better)
        np.bitwise_and(acc[j], better, out=acc[j])
        np.multiply(acc[j], ones, out=mask)
        np.bitwise_xor(bu, nbest[j].view(np.uint32), out=diff)
        np.bitwise_and(diff, mask, out=diff)
        np.bitwise_xor(bu, diff, out=bu)
    acc[0] = True
    # the last accepted candidate: max over j of j * accepted[j] (a reduction over the outer axis)
    js = np.arange(k, dtype=np.uint8)[:, None]
    idx: npt.NDArray[np.uint8] = np.multiply(acc, js, out=scratch("qxa.js", (k, g), np.uint8)).max(axis=0)
    flat = idx.astype(np.intp)
    flat *= g
    flat += np.arange(g)
    scale: F32Array = np.take(sc.reshape(-1), flat)
    return scale, idx


def _qx_clipped_x(
    xt: F32Array, safe: F32Array, iscales: F32Array, c: F32Array, nmax: int, both: bool, out: F32Array
) -> F32Array | None:
    """``xt`` clipped per group so that ``nearest_int(iscale * x')`` is already the clamped level of every
    candidate in ``iscales`` (k, G) (divisors ``c``): None where no such clip exists (then the caller clamps).

    The rounded product is monotone in x, so clipping x at any x_b whose level is exactly the bound
    (``hi = nmax - 1`` at the side opposite to ``max``; ``-nmax`` at ``max``'s side when ``both``) gives
    the clamped level beyond x_b and changes nothing before it. One x_b serves all candidates when the
    spread of ``c`` is small enough; it is picked between the candidates' half-level limits and checked
    exactly (float32 products) for every candidate and group.
    """
    cmin, cmax = float(c.min()), float(c.max())
    hi = nmax - 1
    x_up = np.multiply(safe, np.float32(-0.5 * ((hi - 0.5) / cmin + (hi + 0.5) / cmax)))
    ok = bool((np.rint(np.multiply(iscales, x_up)) == np.float32(hi)).all())
    if both:
        x_lo = np.multiply(safe, np.float32(0.5 * ((nmax - 0.5) / cmin + (nmax + 0.5) / cmax)))
        ok = ok and bool((np.rint(np.multiply(iscales, x_lo)) == np.float32(-nmax)).all())
    else:  # every x lies between -|max| and |max|: a bound at max changes nothing
        x_lo = safe
    if not ok:
        return None
    # np.clip with per-group bounds runs element by element (4x slower than these two)
    np.maximum(xt, np.minimum(x_up, x_lo), out=out)
    np.minimum(out, np.maximum(x_up, x_lo), out=out)
    return out


def make_qx_quants_iscale(
    xt: F32Array, wt: F32Array, nmax: int
) -> tuple[F32Array, F32Array, npt.NDArray[np.bool_], bool]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw) for every group of ``xt`` (``(n, G)``, weights
    ``wt`` in the same layout), keeping the best iscale instead of the levels.

    Returns (scale, iscale, zero, finite): ``L = nmax + clamp(nearest_int(iscale * x))`` except in
    the all-zero blocks (``zero``), where L = 0 and the scale is 0; ``finite``: no NaN/inf in ``xt``.
    The levels are left to the caller, which computes them once in its own layout.

    The sums of all 20 candidates are computed first, then C's accept-if-better scan runs over the
    (20, G) sums. For finite x the clamp of the levels is done once per set of candidates, on x (see
    :func:`_qx_clipped_x`), instead of once per candidate.
    """
    n, nb = xt.shape
    mx, finite = _first_absmax_finite(xt)
    zero = np.abs(mx) < GROUP_MAX_EPS
    safe: F32Array = np.where(zero, _F1, mx)
    c = _qx_candidates(nmax)
    k = c.size
    iscales = np.divide(np.negative(c)[:, None], safe, out=scratch("qxi.iscales", (k, nb)))
    wx = np.multiply(wt, xt, out=scratch("qxi.wx", xt.shape))
    lo, hi = np.float32(-nmax), np.float32(nmax - 1)
    fused = nb >= 2 and einsum_sums_exact()
    t = scratch("qxi.t", (2, n, nb))  # [w*x*l, w*l*l], without einsum
    v = scratch("qxi.v", (n, nb)) if fused else t[0]  # the levels (t[0]: w*x*l replaces them)
    S = scratch("qxi.S", (k, 2, nb))  # [sumlx, suml2] per candidate

    def sums(x: F32Array, j: int, clamp: bool) -> None:
        np.multiply(x, iscales[j], out=v)
        if clamp:
            clamped_levels(v, lo, hi, finite)
        else:
            np.rint(v, out=v)
        if fused:  # one pass per sum instead of products then a reduction
            np.einsum("in,in->n", wx, v, out=S[j, 0])
            np.einsum("in,in,in->n", wt, v, v, out=S[j, 1])
            return
        np.multiply(wt, v, out=t[1])
        np.multiply(t[1], v, out=t[1])
        np.multiply(wx, v, out=t[0])
        if nb < 2:  # a single group: numpy would sum pairwise
            seq_sum_middle(t, S[j])
        else:
            np.add.reduce(t, axis=1, out=S[j])  # C's in-order sums, both at once

    modes = np.array(_qx_clip_modes(c, nmax)) if finite else np.full(k, 2)
    xc = scratch("qxi.xc", xt.shape)
    for mode in (0, 1, 2):
        js = np.flatnonzero(modes == mode)
        if not js.size:
            continue
        x = xt if mode == 0 else _qx_clipped_x(xt, safe, iscales[js], c[js], nmax, mode == 2, xc)
        for j in js:
            sums(xt if x is None else x, int(j), clamp=x is None)
    if not fused and nb >= 2:  # C's sums start from +0.0 (an all -0.0 sum is +0.0), einsum's do too
        np.add(S, _F0, out=S)
    scale, idx = _qx_accept_scan(S)
    best_iscale: F32Array = np.divide(np.negative(c)[idx], safe)
    scale[zero] = 0
    return scale, best_iscale, zero, finite


# --------------------------------------------------------------------------------------------- make_q3_quants


_ClipBound = np.float32 | F32Array  # np.clip takes 0-d arrays several us faster than scalars


def clamped_levels(q: F32Array, lo: _ClipBound, hi: _ClipBound, small: bool = False) -> F32Array:
    """``MAX(lo, MIN(hi, nearest_int(q)))`` in place, as float32. ``small``: the caller knows that
    every ``|q|`` is below 2^22 (finite, e.g. ``iscale * x`` bounded by construction), where
    nearest_int is round-half-even; otherwise a range check decides, and values outside it (NaN, inf,
    huge) take ggml's magic-number trick (a NaN's payload bits, -4194304 for +-inf)."""
    if small or (q.max() < _NINT_SAFE and q.min() > -_NINT_SAFE):  # False as well when q holds a NaN
        np.rint(q, out=q)
    else:
        np.copyto(q, nearest_int_inplace(q), casting="unsafe")
    np.clip(q, lo, hi, out=q)
    return q


def _q3_accept(e: F32Array, s: F32Array, col: IntpArray) -> npt.NDArray[np.bool_]:
    """C's acceptance test of make_q3_quants for candidate changes ``e`` = [w, w*x, sl2, slx, new_l]
    (5, m) of the groups ``col`` whose sums are ``s`` = [suml2, sumlx] (2, G). Returns the accepted
    mask; ``e[0:2]`` becomes [sl2, slx] after the change (the rest of ``e`` but new_l is overwritten),
    so that one gather of ``e`` collects everything the accepted changes need."""
    nls = e[4]
    u = np.multiply(e[0:2], nls, out=e[0:2])  # [w*nl, w*x*nl]
    u[0] *= nls
    u += e[2:4]  # [sl2 + w*nl*nl, slx + w*x*nl]
    sc = s.take(col, axis=1)
    # slx > 0 && sl2 > 0 && slx*slx*suml2 > sumlx*sumlx*sl2  (slx before, sl2 after the update)
    lhs = np.multiply(u[1], u[1], out=e[2])
    lhs *= sc[0]
    rhs = np.multiply(sc[1], sc[1], out=sc[1])
    rhs *= u[0]
    acc: npt.NDArray[np.bool_] = np.greater(lhs, rhs)
    acc &= np.minimum(e[3], u[0], out=e[3]) > _F0
    return acc


def _split_index(idx: IntpArray, n: int) -> tuple[IntpArray, IntpArray]:
    """``divmod(idx, n)``; shifts where n is a power of two (int64 division is several times slower)."""
    if n & (n - 1):
        q, r = np.divmod(idx, n)
        return q, r
    return idx >> (n.bit_length() - 1), idx & (n - 1)


_Q3_MAG_LO, _Q3_MAG_HI = np.float32(1e-6), np.float32(1e6)


def _q3_first_round_small(mx: F32Array) -> bool:
    """Whether every first-round candidate level ``x*sl2/slx`` that C evaluates is below 2^22 in
    magnitude (so that rint is nearest_int), for finite ``x`` with per-group maxima ``mx``.

    Only groups with ``mx < 0`` are evaluated (see :func:`make_q3_quants`); there every w*x*l and
    w*l*l is >= 0, and an element with l != 0 has |x| >= |mx|/8 (|x*iscale| >= 1/2). With |mx| in
    [1e-6, 1e6] none of w, w*x*l, w*l*l, x*sl2 over- or underflows, each w*l*l is at most 2*iscale
    times its w*x*l (|l| <= 2|x*iscale|), and a leave-one-out slx is either 0 (every other level 0:
    C skips the element) or at least about (|mx|/8)^3, far above the rounding error of the sums
    (<= 16 ulp of at most 64|mx|^3). So |x*sl2/slx| <= |mx| * 2*iscale * (1 + small) ~ 2*nmax.
    """
    # no mx in (-1e-6, 0) and none below -1e6 (a select on the sign costs several times more)
    tiny = np.greater(mx, -_Q3_MAG_LO)
    tiny &= mx < 0
    return bool(mx.min() >= -_Q3_MAG_HI and not tiny.any())


def _q3_refine(
    xr: F32Array,
    iscale: F32Array,
    finite: bool,
    L: F32Array,
    sums: F32Array,
    gid: IntpArray,
    pos: IntpArray,
    first: F32Array,
    lo: F32Array,
    hi: F32Array,
) -> None:
    """make_q3_quants' ``itry`` refinement, in place on ``L`` (n, G) and ``sums`` ([suml2, sumlx], (2, G)),
    of the groups ``gid`` that have just taken their first change (itry 0, level ``first`` at element
    ``pos - 1``; ``L`` and ``sums`` hold it). ``xr``: the groups as rows (G, n); ``iscale``,
    ``finite``: as for the initial levels. ``n`` is a power of two.

    Runs in rounds, one accepted change per group and round. Until the next acceptance every element
    of a group sees the same sums, so all of them are tested at once and the group takes the first
    accepted element in C's visiting order. A group's state is its next visiting step ``P = itry*n + i``
    (C's loops flattened); element ``i`` is next visited at step ``P + ((i - P) mod n)``, and steps from
    ``5n`` on do not exist (C's five itries). Only the few percent of elements whose level would change
    go through the acceptance test. A group with no change is finished (C would run at most one more
    itry that sees the same state) and leaves the working set ``z`` = [x, L, w, w*x, sl2, slx, new_l],
    each (a, n): groups as rows, so that dropping groups copies whole rows (a column gather of the
    (n, G) layout costs several times more).
    """
    n, g = L.shape
    a = gid.size
    # the working sets of even and odd rounds and the round's changed-level mask, sliced to the rows
    # still active (a scratch lookup per round costs more than the slicing)
    zbuf = scratch("q3r.z0", (7 * a * n,)), scratch("q3r.z1", (7 * a * n,))
    nebuf = scratch("q3r.ne", (a * n,), np.bool_)
    z = zbuf[0].reshape(7, a, n)
    xr.take(gid, axis=0, out=z[0], mode="clip")
    # the initial levels again (the same float operations) plus the first change: a column gather of
    # L costs several times more. Per-group factors are repeated to whole rows: a broadcast over
    # 16-value inner loops costs about three times more.
    np.multiply(z[0], np.repeat(iscale.take(gid), n).reshape(a, n), out=z[1])
    clamped_levels(z[1], lo, hi, finite)
    z[1].reshape(-1)[np.arange(-1, a * n - 1, n) + pos] = first
    np.multiply(z[0], z[0], out=z[2])
    np.multiply(z[2], z[0], out=z[3])
    s: F32Array = sums.take(gid, axis=1)
    sf = sums.reshape(-1)
    step = pos
    no_step = 5 * n + 1  # the key of a rejected candidate: never a minimum below 5n
    best = np.empty(a, dtype=np.intp)
    shift, low = n.bit_length() - 1, n - 1
    if n & low:
        raise ValueError(f"make_q3_quants: groups of {n}, not a power of two")
    rnd = 0
    while True:
        r = z[4:6]
        np.multiply(z[2:4], z[1], out=r)
        np.multiply(r[0], z[1], out=r[0])
        if a > 256:
            np.subtract(np.repeat(s, n, axis=1).reshape(2, a, n), r, out=r)  # [sl2, slx] without element i
        else:
            np.subtract(s[:, :, None], r, out=r)
        nl = np.multiply(z[0], r[0], out=z[6])
        nl /= r[1]
        clamped_levels(nl, lo, hi)
        ne = np.not_equal(nl, z[1], out=nebuf[: a * n].reshape(a, n))
        idx = ne.reshape(-1).nonzero()[0]
        col = idx >> shift
        i = idx & low
        e = z[2:].reshape(5, -1).take(idx, axis=1)
        acc = _q3_accept(e, s, col)
        pc = step.take(col)
        at = i - pc
        at &= low
        at += pc  # the step at which C visits element i next
        key = np.where(acc, at, no_step)
        best.fill(5 * n - 1)  # the last step: a group whose first accepted step is later keeps it
        np.minimum.at(best, col, key)
        ch = np.equal(key, best.take(col)).nonzero()[0]
        if not ch.size:
            return
        c = col.take(ch)
        taken = e.take(ch, axis=1)
        s, nlv = taken[0:2], taken[4]
        gid = gid.take(c)
        zf = idx.take(ch)  # flat (a, n) positions of the changes
        L.reshape(-1)[(zf & low) * g + gid] = nlv
        sf[gid] = s[0]  # flat scatters: a (2, G) column scatter is slower
        sf[gid + g] = s[1]
        step = at.take(ch)
        step += 1
        z[1].reshape(-1)[zf] = nlv
        a = c.size
        best = best[:a]
        rnd += 1
        zn = zbuf[rnd & 1][: 7 * a * n].reshape(7, a, n)
        z[:4].take(c, axis=1, out=zn[:4], mode="clip")
        z = zn


def make_q3_quants(
    x: F32Array, nmax: int, xr: F32Array | None = None, *, offset: bool = True
) -> tuple[F32Array, F32Array]:
    """make_q3_quants(n, nmax, x, L, do_rmse=true) for every group; returns (scale, L) with L = nmax + l.

    ``xr``: the same groups as rows (G, n) where the caller has them (else they are transposed here).
    ``offset=False`` leaves out the final ``L += nmax`` pass (all-zero groups then hold -nmax), for
    callers that need the levels only for a few groups.
    The first refinement round (element 0 of itry 0 onwards, all with the initial sums) runs on every
    group at once; only the groups that take a change there (a fifth of them on Gaussian data) go on to
    the sequential rounds of :func:`_q3_refine`. ``L`` is a per-thread scratch buffer: valid until the
    next call.
    """
    n, g = x.shape
    mx, finite = _first_absmax_finite(x)
    zero = np.abs(mx) < GROUP_MAX_EPS
    lo, hi = np.array(-nmax, dtype=np.float32), np.array(nmax - 1, dtype=np.float32)
    with np.errstate(all="ignore"):
        iscale = cast(F32Array, np.float32(-nmax) / np.where(zero, _F1, mx))
        # |x * iscale| <= nmax (rounded) when x is finite
        L = clamped_levels(np.multiply(x, iscale, out=scratch("q3.L", (n, g))), lo, hi, finite)
        t = scratch("q3.t", (2, n, g))
        np.multiply(x, x, out=t[0])
        np.multiply(t[0], x, out=t[1])
        np.multiply(t, L, out=t)  # [w*L, w*x*L]
        np.multiply(t[0], L, out=t[0])
        sums = seq_sum_middle(t, np.empty((2, g), dtype=np.float32))  # [suml2, sumlx]
        np.subtract(sums[:, None, :], t, out=t)  # [sl2, slx]: the sums without element i
        nl = np.multiply(x, t[0], out=scratch("q3.nl", (n, g)))
        nl /= t[1]
        clamped_levels(nl, lo, hi, finite and _q3_first_round_small(mx))
        ne = np.not_equal(nl, L, out=scratch("q3.ne", (n, g), np.bool_))
        if finite:
            # mx > 0: every w*x*l is <= 0 (l = nearest_int(-nmax*x/mx) has the sign of -x), so every
            # leave-one-out slx is <= 0 too and C never tests a change. (A tiny negative all-zero
            # group may go on; its result is reset below.)
            ne &= mx < 0
        elif zero.any():
            ne &= ~zero
        idx = ne.reshape(-1).nonzero()[0]
        i, col = _split_index(idx, g)
        e = np.empty((5, idx.size), dtype=np.float32)  # [w, w*x, sl2, slx, new_l]
        x.reshape(-1).take(idx, out=e[0])
        t.reshape(2, -1).take(idx, axis=1, out=e[2:4])
        nl.reshape(-1).take(idx, out=e[4])
        np.multiply(e[0], e[0], out=e[1])  # w = x*x
        np.multiply(e[1], e[0], out=e[1])  # w*x
        np.multiply(e[0], e[0], out=e[0])  # w
        acc = _q3_accept(e, sums, col)
        pa = acc.nonzero()[0]
        if pa.size:
            # all at pos 0 of itry 0: a group's first change is its accepted element of smallest i
            ca, ia = col.take(pa), i.take(pa)
            first = scratch("q3.first", (g,), np.intp)
            first.fill(n)
            np.minimum.at(first, ca, ia)
            ch = pa.take(np.equal(ia, first.take(ca)).nonzero()[0])
            kh, gid = i.take(ch), col.take(ch)
            taken = e.take(ch, axis=1)
            L.reshape(-1)[idx.take(ch)] = taken[4]
            sf = sums.reshape(-1)  # flat scatters: a (2, G) column scatter is several times slower
            sf[gid] = taken[0]
            sf[gid + g] = taken[1]
            rows = np.ascontiguousarray(x.T) if xr is None else xr
            _q3_refine(rows, iscale, finite, L, sums, gid, kh + 1, taken[4], lo, hi)
        scale = np.where(sums[0] > 0, sums[1] / sums[0], _F0)
    if zero.any():  # C returns L = 0 (before any offset) and 0
        np.copyto(L, np.float32(-nmax), where=zero)
        scale[zero] = 0
    if offset:
        L += np.float32(nmax)
    return scale, L


# ------------------------------------------------------------------------------- iterative level refinement


@functools.cache
def _first_set_lut(n: int) -> npt.NDArray[np.int32]:
    """LUT[m] = index i of the first element of a group whose bit (n-1-i) is set in the n-bit mask m; n if none."""
    m = np.arange(1, 1 << n, dtype=np.float64)
    lut = np.full(1 << n, n, dtype=np.int32)
    lut[1:] = (n - 1 - np.floor(np.log2(m))).astype(np.int32)
    return lut


def _refine_levels(z: F32Array, sums: F32Array, active: IntpArray, hi: float) -> None:
    """The ``for (itry < 5) { for (i < n) {...}; if (!n_changed) break; }`` loop of make_qp_quants, in place.

    ``z`` is ``[w, w*x, x, L]`` with shape (4, n, G) (L = z[3] is updated); ``sums`` is ``[suml2, sumlx]``
    with shape (2, G), updated too.

    C visits the elements of a group one by one and may accept a new level for element i, which changes
    the running sums seen by the following elements. Until the next acceptance every element sees the same
    state, so each round evaluates all elements of every running group at once and applies only the first
    acceptance in C's visiting order: from the group's current position to the end of the itry, then (if
    this itry changed something and another itry is allowed) from the start of the next itry. A group
    with no acceptance in either range is finished: C would complete its itry, and run at most one more
    itry that sees the same state and changes nothing. Rounds = changes + 1 per group.

    The test is ``if (slx > 0 && sl2 > 0)`` ... ``MIN(hi, l)`` ... ``if (better)``, and L is C's ``uint8_t``
    array (stored levels wrap modulo 256). (make_q3_quants has its own, see :func:`_q3_refine`.)
    """
    n, g = z.shape[1], z.shape[2]
    L = z[3]
    lut = _first_set_lut(n)
    rest_of = (np.int32(1) << (n - np.arange(n + 1, dtype=np.int32))) - 1  # bits of elements pos..n-1
    bits = (np.int32(1) << (n - 1 - np.arange(n, dtype=np.int32)))[:, None]
    pos = np.zeros(active.size, dtype=np.intp)
    itry = np.zeros(active.size, dtype=np.int32)
    allow = np.zeros(active.size, dtype=np.int32)  # -1 where the group may start another itry
    fhi = np.float32(hi)
    act = active
    za, sa = z, sums
    if act.size != g:
        za, sa = np.take(z, act, axis=2), np.take(sums, act, axis=1)
    # ru = [sl2, slx, sl2_n, slx_n]
    while True:
        a = act.size
        la = za[3]
        ru = scratch("rf.ru", (4, n, a))
        r = np.multiply(za[0:2], la, out=ru[0:2])
        np.multiply(r[0], la, out=r[0])
        np.subtract(sa[:, None, :], r, out=r)
        q = np.multiply(za[2], r[0], out=scratch("rf.q", (n, a)))
        np.divide(q, r[1], out=q)
        new_l = nearest_int_into(q, scratch("rf.nl", (n, a)))
        # np.clip is vectorized; np.minimum against a scalar is not
        np.clip(new_l, _NEG_INF, fhi, out=new_l)
        u = np.multiply(za[0:2], new_l, out=ru[2:4])
        np.multiply(u[0], new_l, out=u[0])
        np.add(u, r, out=u)
        # slx_n*slx_n*suml2 > sumlx*sumlx*sl2_n, and the sign / changed tests
        lhs = np.multiply(u[1], u[1], out=q)
        np.multiply(lhs, sa[0], out=lhs)
        rhs = np.multiply(sa[1] * sa[1], u[0], out=scratch("rf.rhs", (n, a)))
        b = scratch("rf.b", (4, n, a), np.bool_)
        np.greater(lhs, rhs, out=b[0])
        np.greater(ru[0:2], _F0, out=b[1:3])
        np.not_equal(new_l, la, out=b[3])
        acc = np.logical_and.reduce(b, axis=0)
        mask = np.add.reduce(
            np.multiply(acc, bits, out=scratch("rf.bits", (n, a), np.int32)), axis=0, dtype=np.int32
        )
        rest = rest_of[pos]
        m1 = mask & rest
        sel = np.where(m1 != 0, m1, mask & ~rest & allow)
        k = lut[sel]
        cols = np.flatnonzero(k < n)
        if not cols.size:
            break
        kh = k[cols]
        gi = act[cols]
        nl = (new_l[kh, cols].astype(np.int32) & 0xFF).astype(np.float32)
        L[kh, gi] = nl
        sums[:, gi] = u[:, kh, cols]
        itry = itry[cols] + (m1[cols] == 0)
        allow = -(itry < 4).astype(np.int32)
        pos = kh + 1
        act = gi
        za, sa = np.take(z, act, axis=2), np.take(sums, act, axis=1)


# ------------------------------------------------------------------------------------- make_qkx2/3_quants


def _qkx_search(
    x: F32Array,
    w: F32Array,
    nmax: int,
    rmin: float,
    rdelta: float,
    nstep: int,
    use_mad: bool,
    qkx3: bool,
) -> tuple[F32Array, F32Array, F32Array]:
    """Shared body of make_qkx2_quants (qkx3=False) and make_qkx3_quants (qkx3=True, weights given).

    Returns (scale, the_min, L) with L in [0, nmax] as float32.
    """
    n, g = x.shape
    fmax = np.float32(nmax)
    # min = x[0]; if (x[i] < min) min = x[i];  NaN elements are skipped unless x[0] is NaN.
    xmin: F32Array = np.fmin.reduce(x, axis=0)
    xmax: F32Array = np.fmax.reduce(x, axis=0)
    nan0 = np.isnan(x[0])
    if nan0.any():
        xmin[nan0] = np.nan
        xmax[nan0] = np.nan
    t = scratch("qkx.t", (3, n, g))
    v = scratch("qkx.v", (n, g))
    sums = scratch("qkx.sums", (3, g))
    # sum_w starts from weights[0] and sum_x from weights[0]*x[0] in C (not from 0).
    sum_w = seq_sum(w, from_first=True)
    sum_x = seq_sum(np.multiply(w, x, out=t[0]), from_first=True)
    # C: if (min > 0) min = 0;
    mn = np.where(xmin > 0, _F0, xmin)
    zero = (xmax <= mn) if qkx3 else (xmax == mn)
    live = ~zero
    any_zero = bool(zero.any())
    absx = np.maximum(np.abs(xmax), np.abs(xmin))

    def error(scale: AnyArray, mn_: AnyArray, lv: F32Array, e: F32Array) -> F32Array:
        # diff = scale*L + min - x; C sums w*diff^2 (or w*|diff|) from 0. e: the work array (may be lv)
        np.multiply(lv, scale, out=e)
        np.add(e, mn_, out=e)
        np.subtract(e, x, out=e)
        if use_mad:
            np.abs(e, out=e)
        else:
            np.multiply(e, e, out=e)
        np.multiply(w, e, out=e)
        return seq_sum(e)

    def safe(iscale: AnyArray, mn_: AnyArray) -> bool:
        # |iscale*(x - min)| <= (max|x| + |min|)*|iscale| < 2^22 for every live group: rint == nearest_int.
        bound = (absx + np.abs(mn_)) * np.abs(iscale)
        if any_zero:
            bound[zero] = 0
        return bool(bound.max() < _NINT_SAFE)

    def levels_clip(iscale: AnyArray, mn_: AnyArray, out: F32Array) -> F32Array:
        # MAX(0, MIN(nmax, nearest_int(iscale*(x - min))))
        np.subtract(x, mn_, out=out)
        np.multiply(out, iscale, out=out)
        if safe(iscale, mn_):
            np.rint(out, out=out)
        else:
            out[...] = nearest_int_f(out)
        np.clip(out, _F0, fmax, out=out)
        return out

    def levels_v(iscale: AnyArray, mn_: AnyArray, out: F32Array) -> F32Array:
        # make_qkx3: v > 0 ? nearest_int(MIN(v, nmax)) : 0   (NaN -> 0, +inf -> nmax)
        np.subtract(x, mn_, out=out)
        np.multiply(out, iscale, out=out)
        if bool(np.isinf(iscale[live] if any_zero else iscale).any()):
            np.fmax(out, _F0, out=out)
            np.fmin(out, fmax, out=out)
        else:
            # No NaN possible: x - min is finite and iscale is finite.
            np.clip(out, _F0, fmax, out=out)
        np.rint(out, out=out)
        return out

    levels = levels_v if qkx3 else levels_clip

    with np.errstate(all="ignore"):
        iscale = fmax / np.where(zero, _F1, xmax - mn)
        scale = _F1 / iscale
        L = levels_clip(iscale, mn, np.empty_like(x))
        best_error = error(scale, mn, L, t[0])
        if nstep >= 1:
            # Remember, per group, the (iscale, min) that produced the accepted levels; L is recomputed once.
            # The few groups that accept a candidate are updated by index (masked copies of whole
            # vectors cost more than the arithmetic around them).
            acc_iscale = iscale.copy()
            acc_min = mn.copy()
            accepted = np.zeros(g, dtype=np.bool_)
            gv = scratch("qkx.gv", (6, g))
            this_scale, this_min, d, tmp, span, iscale_c = gv
            better = scratch("qkx.better", (g,), np.bool_)
            sum_l, sum_l2, sum_xl = sums[0], sums[1], sums[2]
            for step in range(nstep + 1):
                c = np.float32(rmin) + np.float32(rdelta) * np.float32(step) + fmax
                np.subtract(xmax, mn, out=span)
                np.divide(c, span, out=iscale_c)
                lv = levels(iscale_c, mn, v)
                wl = np.multiply(w, lv, out=t[0])
                np.multiply(wl, lv, out=t[1])
                np.multiply(wl, x, out=t[2])
                seq_sum_middle(t, sums)
                np.multiply(sum_w, sum_l2, out=d)  # D = sum_w * sum_l2 - sum_l * sum_l
                d -= np.multiply(sum_l, sum_l, out=tmp)
                np.multiply(sum_w, sum_xl, out=this_scale)  # (sum_w * sum_xl - sum_x * sum_l) / D
                this_scale -= np.multiply(sum_x, sum_l, out=tmp)
                this_scale /= d
                np.multiply(sum_l2, sum_x, out=this_min)  # (sum_l2 * sum_x - sum_l * sum_xl) / D
                this_min -= np.multiply(sum_l, sum_xl, out=tmp)
                this_min /= d
                pos = np.flatnonzero(this_min > 0)
                if pos.size:
                    this_min[pos] = 0
                    this_scale[pos] = sum_xl[pos] / sum_l2[pos]
                cur = error(this_scale, this_min, lv, lv)  # the levels are not needed again
                np.less(cur, best_error, out=better)
                better &= d > 0
                if any_zero:
                    better &= live
                acc = np.flatnonzero(better)
                if acc.size:
                    accepted[acc] = True
                    best_error[acc] = cur[acc]
                    scale[acc] = this_scale[acc]
                    acc_iscale[acc] = iscale_c[acc]
                    acc_min[acc] = mn[acc]
                    mn[acc] = this_min[acc]
            if accepted.any():
                if qkx3:
                    _blend_columns(L, levels(acc_iscale, acc_min, v), accepted)
                else:
                    # the groups that accepted nothing still hold the first (iscale, min): the same
                    # function of the same values gives them their first levels again
                    levels(acc_iscale, acc_min, L)
    if any_zero:
        np.copyto(L, _F0, where=zero)
        scale[zero] = 0
    return cast(F32Array, scale), cast(F32Array, -mn), L


def make_qkx2_quants(
    x: F32Array, w: F32Array, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[F32Array, F32Array, F32Array]:
    """make_qkx2_quants for every group: returns (scale, the_min, L)."""
    return _qkx_search(x, w, nmax, rmin, rdelta, nstep, use_mad, qkx3=False)


def make_qkx3_quants(
    x: F32Array, w: F32Array, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[F32Array, F32Array, F32Array]:
    """make_qkx3_quants (with weights) for every group: returns (scale, the_min, L)."""
    return _qkx_search(x, w, nmax, rmin, rdelta, nstep, use_mad, qkx3=True)


# --------------------------------------------------------------------------------------------- make_qp_quants


def make_qp_quants(x: F32Array, nmax: int, qw: F32Array) -> tuple[F32Array, F32Array]:
    """make_qp_quants(n, nmax, x, L, quant_weights) for every group: returns (scale, L).

    L is what C stores in its ``uint8_t`` array (negative levels wrap modulo 256), as float32.
    """
    fmax = np.float32(nmax)
    # float max = 0; for (i) max = MAX(max, x[i]);  with MAX(a, b) = a > b ? a : b (NaN semantics included)
    mx = np.zeros(x.shape[1], dtype=np.float32)
    for i in range(x.shape[0]):
        mx = np.where(mx > x[i], mx, x[i])
    zero = mx < GROUP_MAX_EPS
    wx = qw * x

    def wrap(li: F32Array) -> F32Array:
        # C stores the int level into a uint8_t.
        return (li.astype(np.int32) & 0xFF).astype(np.float32)

    with np.errstate(all="ignore"):
        safe_mx = np.where(zero, np.float32(1), mx)
        iscale = fmax / safe_mx
        l0 = wrap(nearest_int_f(iscale * x))
        scale = np.float32(1) / iscale
        diff = x - scale * l0
        best_mse = seq_sum(qw * diff * diff)
        for step in range(-4, 5):
            if step == 0:
                continue
            iscale_is = (np.float32(0.1) * np.float32(step) + fmax) / safe_mx
            scale_is = np.float32(1) / iscale_is
            li = np.minimum(nearest_int_f(iscale_is * x), fmax)
            diff = x - scale_is * li
            mse = seq_sum(qw * diff * diff)
            better = mse < best_mse
            best_mse = np.where(better, mse, best_mse)
            iscale = np.where(better, iscale_is, iscale)
        lint = np.minimum(nearest_int_f(iscale * x), fmax)
        sums = np.stack([seq_sum(qw * lint * lint), seq_sum(wx * lint)])
        z = np.stack([qw, wx, x, wrap(lint)])
        _refine_levels(z, sums, np.flatnonzero(~zero), nmax)
        L = z[3]
        scale = np.where(sums[0] > 0, sums[1] / sums[0], _F0)
    L[:, zero] = 0
    scale[zero] = 0
    return cast(F32Array, scale), L
