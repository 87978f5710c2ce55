"""ggml's scale searches (make_qx_quants, make_q3_quants, make_qkx2/3_quants, make_qp_quants), vectorized.

Every function works on a *transposed* group layout: ``x`` has shape ``(n, G)`` where ``n`` is the number of
values in one group (16 or 32 for k-quant sub-blocks, 8 or 16 for the scales of a super-block) and ``G``
the number of independent groups. Row ``i`` holds element ``i`` of every group, contiguous, so the
sequential C sums (``sum += w[i]*x[i]`` for i = 0..n-1) become ``np.add.reduce(..., axis=0)``, which numpy
evaluates in exactly that order (one vector add per ``i``), and all groups are processed at once.

The candidate-scale loops of the searches are Python loops over candidates (at most 37), each a handful of
vector operations over every group; where C carries state from one candidate to the next (the current
``min`` in make_qkx2/3_quants) the state is a per-group vector. The iterative refinements of
make_q3_quants / make_qp_quants (sequential over the elements of a group) are evaluated for all elements
at once, applying one accepted change per group and round (see :func:`_refine_levels`).

Arithmetic is float32, operation by operation in C order (ggml-base is built without FMA contraction).
Quantized levels are returned as float32 arrays holding small integers (exact).

Speed: the hot loops write into per-thread scratch buffers (:func:`scratch`) instead of allocating
temporaries; fresh multi-100-KB temporaries cost page faults on every allocation.
"""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

from ._numeric import F32Array, nearest_int

__all__ = [
    "make_q3_quants",
    "make_qkx2_quants",
    "make_qkx3_quants",
    "make_qp_quants",
    "make_qx_quants",
    "nearest_int_f",
    "scratch",
    "seq_sum",
]

IntpArray = npt.NDArray[np.intp]

GROUP_MAX_EPS = np.float32(1e-15)
_F0 = np.float32(0.0)
_F1 = np.float32(1.0)
# Below this magnitude ggml's nearest_int (the 1.5*2^23 trick) equals round-half-even.
_NINT_SAFE = np.float32(4194304.0)

_TLS = threading.local()
_SCRATCH_CACHE_LIMIT = 1 << 22  # elements; bigger buffers are not kept between calls


def scratch(key: str, shape: tuple[int, ...]) -> F32Array:
    """A float32 work array of ``shape`` owned by this thread, reused between calls (contents undefined).

    Each caller uses its own keys; a buffer must not be used after the same key is requested again.
    """
    pool: dict[str, F32Array] | None = getattr(_TLS, "pool", None)
    if pool is None:
        pool = {}
        _TLS.pool = pool
    size = 1
    for d in shape:
        size *= d
    buf = pool.get(key)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype=np.float32)
        if size <= _SCRATCH_CACHE_LIMIT:
            pool[key] = buf
    return buf[:size].reshape(shape)


def seq_sum(t: F32Array, out: F32Array | None = None) -> F32Array:
    """``float s = 0; for (i...) s += t[i];`` over axis 0 of a C-contiguous ``(n, G)`` array."""
    res: F32Array = np.add.reduce(t, axis=0, initial=_F0, out=out)
    return res


def nearest_int_f(v: F32Array) -> F32Array:
    """ggml ``nearest_int`` for any float32 input (NaN/inf/huge included), as float32."""
    return nearest_int(v).astype(np.float32)


def _first_absmax(x: F32Array) -> tuple[F32Array, F32Array]:
    """``for i: if (fabsf(x[i]) > amax) { amax = fabsf(x[i]); max = x[i]; }`` from amax = max = 0.

    NaN never wins (C's ``>``); among equal magnitudes the first element wins.
    """
    n, g = x.shape
    ax = np.abs(x, out=scratch("fam.ax", x.shape))
    amax: F32Array = np.fmax.reduce(ax, axis=0)
    amax[~(amax > 0)] = 0
    hi: F32Array = np.fmax.reduce(x, axis=0)
    lo: F32Array = np.fmin.reduce(x, axis=0)
    has_pos = hi == amax
    mx = np.where(has_pos, amax, -amax)
    mx[amax == 0] = 0
    tie = np.flatnonzero(has_pos & (lo == -amax) & (amax > 0))
    if tie.size:
        xt = x[:, tie]
        at = amax[tie]
        first = np.zeros(tie.size, dtype=np.float32)
        for i in range(n - 1, -1, -1):
            np.copyto(first, xt[i], where=np.abs(xt[i]) == at)
        mx[tie] = first
    return amax, mx


# --------------------------------------------------------------------------------------------- make_qx_quants


def make_qx_quants(x: F32Array, nmax: int, qw: F32Array | None = None) -> tuple[F32Array, F32Array]:
    """make_qx_quants(n, nmax, x, L, rmse_type=1, qw) for every group; returns (scale, L) with L = nmax + l."""
    n, g = x.shape
    amax, mx = _first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    if qw is None:
        w = np.multiply(x, x, out=scratch("qx.w", x.shape))
    else:
        w = qw
    wx = np.multiply(w, x, out=scratch("qx.wx", x.shape))
    safe_mx = np.where(zero, _F1, mx)
    lo, hi = np.float32(-nmax), np.float32(nmax - 1)
    v = scratch("qx.v", x.shape)
    t = scratch("qx.t", (2, n, g))
    sums = scratch("qx.sums", (2, g))

    def candidate(iscale: F32Array) -> None:
        # |iscale*x| <= nmax + 1 here, so rint is ggml's nearest_int.
        np.multiply(x, iscale, out=v)
        np.rint(v, out=v)
        np.clip(v, lo, hi, out=v)
        np.multiply(wx, v, out=t[0])
        np.multiply(w, v, out=t[1])
        np.multiply(t[1], v, out=t[1])
        np.add.reduce(t, axis=1, initial=_F0, out=sums)

    with np.errstate(all="ignore"):
        iscale = np.float32(-nmax) / safe_mx
        candidate(iscale)
        sumlx, suml2 = sums[0].copy(), sums[1].copy()
        scale = np.where(suml2 != 0, sumlx / suml2, _F0)
        best = scale * sumlx
        best_iscale = iscale
        sumlx, suml2 = sums[0], sums[1]
        for step in range(-9, 10):
            if step == 0:
                continue
            c = np.float32(nmax) + np.float32(0.1) * np.float32(step)
            iscale_c = -c / safe_mx
            candidate(iscale_c)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            np.divide(sumlx, suml2, out=scale, where=better)
            np.multiply(scale, sumlx, out=best, where=better)
            np.copyto(best_iscale, iscale_c, where=better)
        L = np.multiply(x, best_iscale)
        np.rint(L, out=L)
        np.clip(L, lo, hi, out=L)
        L += np.float32(nmax)
    if zero.any():
        np.copyto(L, _F0, where=zero)
        scale[zero] = 0
    return scale, L


# --------------------------------------------------------------------------------------------- make_q3_quants


def make_q3_quants(x: F32Array, nmax: int) -> tuple[F32Array, F32Array]:
    """make_q3_quants(n, nmax, x, L, do_rmse=true) for every group; returns (scale, L) with L = nmax + l."""
    amax, mx = _first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    w = np.multiply(x, x, out=scratch("q3.w", x.shape))
    wx = np.multiply(w, x, out=scratch("q3.wx", x.shape))
    t = scratch("q3.t", x.shape)
    lo, hi = np.float32(-nmax), np.float32(nmax - 1)
    with np.errstate(all="ignore"):
        iscale = np.float32(-nmax) / np.where(zero, _F1, mx)
        L = np.multiply(x, iscale)
        np.rint(L, out=L)
        np.clip(L, lo, hi, out=L)
        sumlx = seq_sum(np.multiply(wx, L, out=t))
        np.multiply(w, L, out=t)
        suml2 = seq_sum(np.multiply(t, L, out=t))
        _refine_levels(x, w, wx, L, sumlx, suml2, np.flatnonzero(~zero), -nmax, nmax - 1, qp=False)
        scale = np.where(suml2 > 0, sumlx / suml2, _F0)
    L += np.float32(nmax)
    if zero.any():
        np.copyto(L, _F0, where=zero)
        scale[zero] = 0
    return scale, L


# ------------------------------------------------------------------------------- iterative level refinement


def _first_set_lut(n: int) -> npt.NDArray[np.int32]:
    """LUT[m] = index i of the first element of a group whose bit (n-1-i) is set in the n-bit mask m; n if none."""
    m = np.arange(1, 1 << n, dtype=np.float64)
    lut = np.full(1 << n, n, dtype=np.int32)
    lut[1:] = (n - 1 - np.floor(np.log2(m))).astype(np.int32)
    return lut


_LUTS = {n: _first_set_lut(n) for n in (8, 16)}


def _refine_levels(
    x: F32Array,
    w: F32Array,
    wx: F32Array,
    L: F32Array,
    sumlx: F32Array,
    suml2: F32Array,
    active: IntpArray,
    lo: float | None,
    hi: float,
    qp: bool,
) -> None:
    """The ``for (itry < 5) { for (i < n) {...}; if (!n_changed) break; }`` loop of make_q3/qp_quants, in place.

    C visits the elements of a group one by one and may accept a new level for element i, which changes
    the running sums seen by the following elements. Until the next acceptance every element sees the same
    state, so each round evaluates all elements of every running group at once and applies only the first
    acceptance in C's visiting order: from the group's current position to the end of the itry, then (if
    this itry changed something and another itry is allowed) from the start of the next itry. A group
    with no acceptance in either range is finished: C would complete its itry, and run at most one more
    itry that sees the same state and changes nothing. Rounds = changes + 1 per group.

    make_q3_quants (qp=False): ``if (slx > 0)`` ... clamp to [lo, hi] ... ``if (sl2 > 0 && better)``.
    make_qp_quants (qp=True): ``if (slx > 0 && sl2 > 0)`` ... ``MIN(hi, l)`` ... ``if (better)``, and L is
    C's ``uint8_t`` array (stored levels wrap modulo 256).
    """
    n = x.shape[0]
    lut = _LUTS[n]
    bits = (np.int32(1) << (n - 1 - np.arange(n, dtype=np.int32)))[:, None]
    pos = np.zeros(active.size, dtype=np.int32)
    itry = np.zeros(active.size, dtype=np.int32)
    changed = np.zeros(active.size, dtype=np.bool_)
    flo = None if lo is None else np.float32(lo)
    fhi = np.float32(hi)
    act = active
    full = act.size == x.shape[1]
    while act.size:
        if full:
            xa, wa, wxa, la = x, w, wx, L
            sx, s2 = sumlx, suml2
        else:
            xa, wa, wxa, la = (np.take(a, act, axis=1) for a in (x, w, wx, L))
            sx, s2 = sumlx[act], suml2[act]
        full = False
        slx = sx - wxa * la
        sl2 = s2 - wa * la * la
        new_l = nearest_int_f(xa * sl2 / slx)
        if flo is None:
            np.minimum(new_l, fhi, out=new_l)
        else:
            np.clip(new_l, flo, fhi, out=new_l)
        slx_n = slx + wxa * new_l
        sl2_n = sl2 + wa * new_l * new_l
        acc = (slx > 0) & (new_l != la) & (slx_n * slx_n * s2 > sx * sx * sl2_n)
        acc &= (sl2 > 0) if qp else (sl2_n > 0)
        mask = np.add.reduce(acc * bits, axis=0)
        rest = (np.int32(1) << (n - pos)) - 1  # elements pos..n-1 of this itry
        m1 = mask & rest
        m2 = mask & ~rest
        hit1 = m1 != 0
        hit2 = ~hit1 & changed & (itry < 4) & (m2 != 0)
        hit = hit1 | hit2
        if not hit.any():
            break
        cols = np.flatnonzero(hit)
        kh = lut[np.where(hit1, m1, m2)[cols]]
        g = act[cols]
        nl = new_l[kh, cols]
        if qp:
            nl = (nl.astype(np.int32) & 0xFF).astype(np.float32)
        L[kh, g] = nl
        sumlx[g] = slx_n[kh, cols]
        suml2[g] = sl2_n[kh, cols]
        itry[hit2] += 1
        act, pos, itry = g, kh + 1, itry[cols]
        changed = np.ones(act.size, dtype=np.bool_)


# --------------------------------------------------------------------------------------------- make_q3_quants


def make_q3_quants(x: F32Array, nmax: int) -> tuple[F32Array, F32Array]:
    """make_q3_quants(n, nmax, x, L, do_rmse=true) for every group; returns (scale, L) with L = nmax + l."""
    n, g = x.shape
    amax, mx = _first_absmax(x)
    zero = amax < GROUP_MAX_EPS
    w = x * x
    wx = w * x
    lo, hi = np.float32(-nmax), np.float32(nmax - 1)
    with np.errstate(all="ignore"):
        iscale = np.float32(-nmax) / np.where(zero, np.float32(1), mx)
        L = np.multiply(x, iscale)
        np.rint(L, out=L)
        np.clip(L, lo, hi, out=L)
        sumlx = seq_sum(wx * L)
        suml2 = seq_sum(w * L * L)
        _refine_levels(x, w, wx, L, sumlx, suml2, np.flatnonzero(~zero), -nmax, nmax - 1, qp=False)
        scale = np.where(suml2 > 0, sumlx / suml2, _F0)
    L += np.float32(nmax)
    L[:, zero] = 0
    scale[zero] = 0
    return scale, L


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
    fmax = np.float32(nmax)
    xmin: F32Array = np.minimum.reduce(x, axis=0)
    xmax: F32Array = np.maximum.reduce(x, axis=0)
    # sum_w starts from weights[0] and sum_x from weights[0]*x[0] in C (not from 0).
    sum_w: F32Array = np.add.reduce(w, axis=0)
    sum_x: F32Array = np.add.reduce(w * x, axis=0)
    # C: if (min > 0) min = 0;
    mn = np.where(xmin > 0, _F0, xmin)
    zero = (xmax <= mn) if qkx3 else (xmax == mn)
    live = ~zero
    t = np.empty_like(x)
    wl = np.empty_like(x)
    v = np.empty_like(x)

    def error(scale: F32Array, mn_: F32Array, lv: F32Array) -> F32Array:
        # diff = scale*L + min - x; C sums w*diff^2 (or w*|diff|) from 0.
        np.multiply(lv, scale, out=t)
        np.add(t, mn_, out=t)
        np.subtract(t, x, out=t)
        if use_mad:
            np.abs(t, out=t)
        else:
            np.multiply(t, t, out=t)
        np.multiply(w, t, out=t)
        return seq_sum(t)

    def levels_clip(iscale: F32Array, mn_: F32Array, out: F32Array) -> F32Array:
        # MAX(0, MIN(nmax, nearest_int(iscale*(x - min))))
        np.subtract(x, mn_, out=out)
        np.multiply(out, iscale, out=out)
        bound = np.maximum(np.abs(xmax - mn_), np.abs(xmin - mn_)) * np.abs(iscale)
        if bool(np.all(bound[live] < _NINT_SAFE)):
            np.rint(out, out=out)
        else:
            out[...] = nearest_int_f(out)
        np.clip(out, _F0, fmax, out=out)
        return out

    def levels_v(iscale: F32Array, mn_: F32Array, out: F32Array) -> F32Array:
        # make_qkx3: v > 0 ? nearest_int(MIN(v, nmax)) : 0   (NaN -> 0, +inf -> nmax)
        np.subtract(x, mn_, out=out)
        np.multiply(out, iscale, out=out)
        np.fmax(out, _F0, out=out)
        np.fmin(out, fmax, out=out)
        np.rint(out, out=out)
        return out

    levels = levels_v if qkx3 else levels_clip

    with np.errstate(all="ignore"):
        iscale = fmax / np.where(zero, np.float32(1), xmax - mn)
        scale = np.float32(1) / iscale
        L = levels_clip(iscale, mn, np.empty_like(x))
        best_error = error(scale, mn, L)
        if nstep >= 1:
            # Remember, per group, the (iscale, min) that produced the accepted levels; L is recomputed once.
            acc_iscale = iscale.copy()
            acc_min = mn.copy()
            accepted = np.zeros_like(live)
            for step in range(nstep + 1):
                c = np.float32(rmin) + np.float32(rdelta) * np.float32(step) + fmax
                iscale_c = c / (xmax - mn)
                lv = levels(iscale_c, mn, v)
                np.multiply(w, lv, out=wl)
                sum_l = seq_sum(wl)
                np.multiply(wl, lv, out=t)
                sum_l2 = seq_sum(t)
                np.multiply(wl, x, out=t)
                sum_xl = seq_sum(t)
                d = sum_w * sum_l2 - sum_l * sum_l
                this_scale = (sum_w * sum_xl - sum_x * sum_l) / d
                this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d
                pos = this_min > 0
                this_min[pos] = 0
                this_scale = np.where(pos, sum_xl / sum_l2, this_scale)
                cur = error(this_scale, this_min, lv)
                better = (d > 0) & (cur < best_error) & live
                if better.any():
                    accepted |= better
                    np.copyto(best_error, cur, where=better)
                    np.copyto(scale, this_scale, where=better)
                    np.copyto(acc_iscale, iscale_c, where=better)
                    np.copyto(acc_min, mn, where=better)
                    np.copyto(mn, this_min, where=better)
            if accepted.any():
                lv = levels(acc_iscale, acc_min, v)
                np.copyto(L, lv, where=accepted)
    L[:, zero] = 0
    scale[zero] = 0
    return scale, -mn, L


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
    n, g = x.shape
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
        sumlx = seq_sum(wx * lint)
        suml2 = seq_sum(qw * lint * lint)
        L = wrap(lint)
        _refine_levels(x, qw, wx, L, sumlx, suml2, np.flatnonzero(~zero), None, nmax, qp=True)
        scale = np.where(suml2 > 0, sumlx / suml2, _F0)
    L[:, zero] = 0
    scale[zero] = 0
    return scale, L
