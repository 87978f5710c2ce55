"""IQ3_XXS and IQ3_S: ggml's ``quantize_row_iq3_xxs_impl`` / ``quantize_row_iq3_s_impl``, vectorized.

Both quantize 32-value blocks as 8 groups of 4 magnitudes, each group a point of a 3-bit grid (256 points
for IQ3_XXS, 512 for IQ3_S), plus signs and a 4-bit block scale under an fp16 super-scale per 256 values.
Per block ggml tries a range of scales; for each trial a group whose rounded levels are not a grid point
is replaced by its best neighbour among a precomputed list (see ``_iq3_tables``).

Every step below runs over all blocks (and all trials) at once. Per-block arrays are j-major,
``(32, n_blocks)`` / ``(32, n_blocks, n_trials)``, so C's sequential sums over a block are ordered
reductions over axis 0 (:func:`seq_sum0`, or one value index at a time in :func:`_trial_sums`); a
group of 4 levels is carried as its 12-bit code (``(8, ...)`` arrays). The trials are the last axis, so the trials of a group that round to the same
off-grid code (a run, ~6 trials on average) are contiguous: :func:`_snap_trials` searches the
neighbour list once per run (:func:`_run_search`, with a proven float32 margin), and only near ties go
through C's exact sequential search (:func:`_best_neighbours`). The neighbour lists (2..38 entries)
are padded to a few widths with copies of their first entry.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from ._iq3_tables import Iq3Tables, iq3_tables
from ._numeric import F32Array, U8Array, U16Array, fp32_to_fp16_bits, nearest_int, scratch
from ._numeric import seq_sum as seq_sum0

__all__ = ["quantize_iq3_s", "quantize_iq3_xxs"]

IntArray = npt.NDArray[np.intp]
BoolArray = npt.NDArray[np.bool_]
I32Array = npt.NDArray[np.int32]
I16Array = npt.NDArray[np.int16]


class _Blocks(NamedTuple):
    codes: I16Array  # (8, nb) grid codes of the 8 groups of every block
    scale: F32Array  # (nb,) block scales (0 for skipped blocks)
    signs: U8Array  # (4, nb) sign bits, one byte per 8 values
    skip: BoolArray  # (nb,) blocks ggml skips (max below its threshold)


def _f32(a: npt.ArrayLike) -> F32Array:
    """float32 view of an array numpy's stubs type as float64 (no copy when it is float32 already)."""
    return np.asarray(a, dtype=np.float32)


_MAGIC = np.float32(12582912.0)  # 1.5 * 2**23, as in ggml's nearest_int
_COUNTDOWN = np.arange(64, 0, -1).astype(np.uint8)  # ends with ..., 3, 2, 1


@dataclass(frozen=True)
class _Kind:
    grid_size: int
    n_scale_steps: int  # trial scales is = -n..n
    eps: np.float32 | None  # IQ3_XXS skips blocks with max < eps; IQ3_S only all-zero blocks
    parity_signs: bool  # IQ3_XXS stores 7 signs per 8 values, the 8th implied by even parity
    refine_all_groups: bool  # IQ3_S recomputes every group after the trials, IQ3_XXS only off-grid ones
    # Blocks handled per step: large steps amortise numpy's per-call overhead (about 2.5 ms a step)
    # over more groups, too large ones leave the caches; a 64x4096 chunk is 8192 blocks. Measured
    # (interleaved, per chunk): IQ3_S 4096 ~7% faster than 2048, IQ3_XXS (more trials) the same.
    blocks_per_step: int


_XXS = _Kind(256, 15, np.float32(1e-8), True, False, 2048)
_S = _Kind(512, 9, None, False, True, 4096)


def _level_codes(xval: F32Array, inv_scale: F32Array) -> I16Array:
    """Group codes ``sum(l[4k+i] << 3*i)`` of the levels ``MAX(0, MIN(7, nearest_int(0.5f*(id*xval - 1))))``.

    ``xval`` (32, ...) broadcast against ``inv_scale``; returns (8, ...). nearest_int is ggml's bit trick,
    reproduced for arguments beyond 2**22 too (after the trials, ``id`` can be huge relative to a value
    whose weight is zero).
    """
    a = xval * inv_scale
    a -= np.float32(1.0)
    a *= np.float32(0.5)
    a += _MAGIC
    bits = a.view(np.int32)
    bits &= np.int32(0x007FFFFF)
    bits -= np.int32(0x00400000)
    np.clip(bits, 0, 7, out=bits)
    lv = bits.reshape((8, 4, *a.shape[1:])).astype(np.int16)
    c = lv[:, 3] << np.int16(9)
    c |= lv[:, 2] << np.int16(6)
    c |= lv[:, 1] << np.int16(3)
    c |= lv[:, 0]
    return c


_MAGIC2 = np.float32(25165824.0)  # 2 * _MAGIC


def _trial_codes(xval: F32Array, ids_t: F32Array) -> I16Array:
    """:func:`_level_codes` of the trial scales: ``xval`` (32, nb), ``ids_t`` (nb, T) -> (8, nb, T).

    Here |id*xval| <= (15 + 0.2*15) * (1 + 2**-23) (xval is at most the block's max in magnitude), so
    with y = id*xval - 1 the level MAX(0, MIN(7, nearest_int(0.5f*y))) is nearest_int(0.5f*clip(y, 0,
    14)): rounding half to even commutes with the clip to integer bounds, and halving is exact. And
    y + 1.5*2**24 is exactly 2*(0.5*y + 1.5*2**23) (scaling by 2 commutes with rounding), so its low
    mantissa bits are the level (NaN: 0, as C's bit trick gives)."""
    a = xval[:, :, None] * ids_t[None, :, :]
    a -= np.float32(1.0)
    np.clip(a, np.float32(0.0), np.float32(14.0), out=a)
    a += _MAGIC2
    bits = a.view(np.int32)
    bits &= np.int32(7)
    lv = bits.reshape((8, 4, *ids_t.shape))
    c = lv[:, 3] << np.int32(9)
    c |= lv[:, 2] << np.int32(6)
    c |= lv[:, 1] << np.int32(3)
    c |= lv[:, 0]
    return c.astype(np.int16)


def _trial_sums(codes: I16Array, w: F32Array, wx: F32Array) -> tuple[F32Array, F32Array]:
    """C's sequential sumqx = sum w*x*q and sumq2 = sum w*q*q over the 32 values of every block and
    trial, ``codes`` (8, nb, T), ``w``/``wx`` (32, nb); returns (nb, T) each. One value index at a
    time (positions decoded per index), so the work arrays stay in cache."""
    shape = codes.shape[1:]
    sx = np.empty(shape, dtype=np.float32)
    s2 = np.empty(shape, dtype=np.float32)
    t = scratch("iq3.sums.t", shape)
    q = scratch("iq3.sums.q", shape)
    li = scratch("iq3.sums.l", shape, np.int16)
    for j in range(32):
        k, i = divmod(j, 4)
        np.copyto(q, _level_positions(codes[k], i, li))
        if j == 0:  # C's sums start from +0.0: 0 + (-0.0) is +0.0
            np.multiply(q, wx[0][:, None], out=sx)
            sx += np.float32(0.0)
            np.multiply(q, w[0][:, None], out=s2)
            s2 *= q
            s2 += np.float32(0.0)
        else:
            np.multiply(q, wx[j][:, None], out=t)
            sx += t
            np.multiply(q, w[j][:, None], out=t)
            t *= q
            s2 += t
    return sx, s2


def _level_positions(codes: I16Array, i: int, out: I16Array) -> I16Array:
    """The positions ``q = 2*l + 1`` of value ``i`` (of 4) of every group code in ``codes``, into ``out``."""
    np.right_shift(codes, np.int16(3 * i), out=out)
    out &= np.int16(7)
    out <<= np.int16(1)
    out |= np.int16(1)
    return out


def _positions(codes: I16Array) -> F32Array:
    """(8, ...) group codes -> (32, ...) float32 positions ``q = 2*l + 1`` of the 32 values."""
    out = np.empty((8, 4, *codes.shape[1:]), dtype=np.float32)
    li = np.empty_like(codes)
    for i in range(4):
        out[:, i] = _level_positions(codes, i, li)
    return out.reshape((32, *codes.shape[1:]))


def _best_neighbours(
    tab: Iq3Tables, rows: IntArray, cols: IntArray, xv: F32Array, wv: F32Array, scale: F32Array
) -> I32Array:
    """``iq3_find_best_neighbour`` for G groups at once: returns the chosen grid index per group.

    ``rows`` (G,) neighbour-table rows of the groups' codes; ``cols`` (G,) their columns in ``xv``/``wv``
    (4, n) values and sqrt-weights; ``scale`` (G,). The groups are sorted by list length and searched a
    few widths at a time: neighbours x groups, groups along the contiguous axis.
    """
    counts = np.take(tab.nb_count_u8, rows)
    order = np.argsort(counts, kind="stable")
    ends = np.cumsum(np.bincount(counts, minlength=tab.nb_index.shape[1] + 1))
    rows = np.take(rows, order)
    cols = np.take(cols, order)
    x4, w4, scale = np.take(xv, cols, axis=1), np.take(wv, cols, axis=1), np.take(scale, order)
    full = tab.nb_index.shape[1]
    picked = np.empty(len(rows), dtype=np.intp)
    shorter = 0
    for width in _run_widths(full):
        lo, hi = int(ends[shorter]), int(ends[min(width, full)])
        shorter = min(width, full)
        if hi == lo:
            continue
        sl = slice(lo, hi)
        r = rows[sl]
        table, _ = _packed_runs(tab.grid_size, width)
        packed = np.take(table, r, axis=1)  # (width, g), padded with copies of the first neighbour
        s = scale[sl]
        d2 = np.empty(packed.shape, dtype=np.float32)
        t = np.empty(packed.shape, dtype=np.float32)
        diff = np.empty(packed.shape, dtype=np.float32)
        q = np.empty(packed.shape, dtype=np.uint16)
        for i in range(4):
            if i == 0:
                np.bitwise_and(packed, np.uint16(15), out=q)
            else:
                np.right_shift(packed, np.uint16(4 * i), out=q)
                if i < 3:  # the top 4 bits need no mask
                    q &= np.uint16(15)
            # C: d2 += weight[i]*diff*diff with diff = scale*q - xval[i]
            np.copyto(diff, q)
            diff *= s
            diff -= x4[i, sl]
            acc = t if i else d2
            np.multiply(w4[i, sl], diff, out=acc)
            acc *= diff
            if i:
                d2 += t
        # C keeps the first neighbour with the smallest d2 (strict '<'); fmin skips NaN like C does.
        # The padding repeats the first neighbour's d2 after it, so it is never the first smallest.
        best = np.fmin.reduce(d2, axis=0)
        first = (d2 == best) * _COUNTDOWN[-width:, None]
        pick = np.uint8(width) - np.max(first, axis=0)
        # No finite candidate at all (C asserts there): take the last, so callers never fail.
        np.minimum(pick, np.take(tab.nb_count_u8, r) - np.uint8(1), out=pick)
        picked[sl] = r * full + pick
    out: I32Array = np.empty(len(rows), dtype=np.int32)
    out[order] = np.take(tab.nb_index, picked)
    return out


def _exact_search(
    tab: Iq3Tables, codes: I16Array, flat: IntArray, xv: F32Array, wv: F32Array, scale: F32Array
) -> None:
    """``iq3_find_best_neighbour`` for the off-grid groups at ``flat`` (flat indices into ``codes``,
    (8, *S)); their codes are replaced in place. Arguments as in :func:`_snap_to_grid`."""
    rows = np.take(tab.nb_row, np.take(codes, flat)).astype(np.intp)
    per_k = codes[0].size
    k = flat // per_k
    rest = flat - k * per_k  # index into S
    gi = _best_neighbours(
        tab, rows, k * codes.shape[-1] + rest % codes.shape[-1], xv, wv, np.take(scale, rest)
    )
    np.put(codes, flat, np.take(tab.grid_codes, gi))


def _snap_to_grid(
    tab: Iq3Tables,
    codes: I16Array,
    xv: F32Array,
    wv: F32Array,
    scale: F32Array,
    groups: BoolArray | None = None,
) -> BoolArray:
    """Replace, in place, every off-grid group code by the code of its best grid neighbour.

    ``codes`` (8, *S), C-contiguous, for S = (n_blocks,) or (n_trials, n_blocks); ``xv``/``wv``
    (4, 8*n_blocks) values and sqrt-weights, element i of group k of block b at ``[i, k*n_blocks + b]``;
    ``scale`` (*S) the scale used in the distance. Only groups where ``groups`` (8, *S) is true are
    considered. Returns (8, *S): whether each group was already on the grid.
    """
    if not codes.flags.c_contiguous:
        raise ValueError("codes must be C-contiguous (updated in place)")
    on = np.take(_on_grid(tab.grid_size), codes)
    todo = ~on if groups is None else ~on & groups
    flat = np.flatnonzero(todo)
    if flat.size:
        _exact_search(tab, codes, flat, xv, wv, scale)
    return on


# Near-tie margin of the run search, relative to M/s with M = sum w*(15s + |x|)^2 (see _run_margin).
_TIE_REL = np.float32(2.0**-16)
_TIE_ABS = np.float32(2.0**-126)
_BIG = np.float32(2.0**84)
# Padded widths of the neighbour lists in the run search (fewer, bigger numpy calls than one per length).
_RUN_WIDTHS = (4, 8, 12, 16, 24, 40)


def _group_terms(xv: F32Array, wv: F32Array) -> F32Array:
    """Per group (12, G) from its values and sqrt-weights (4, G): rows 0-3 the weights w, 4-7 ``2*w*x``
    (for :func:`_ab_tables`), 8-11 (225*W0, 30*W1, W2, 1 + X + W0) with W0 = sum w, W1 = sum w|x|,
    W2 = sum w*x^2 and X = max |x| over the 4 coordinates (for :func:`_run_margin`). Computed once per
    group and gathered per run: there are several runs per group."""
    out = np.empty((12, xv.shape[1]), dtype=np.float32)
    out[0:4] = wv
    np.multiply(wv, xv, out=out[4:8])
    out[4:8] *= np.float32(2.0)
    ax = np.abs(xv)
    wax = wv * ax
    cf = out[8:12]
    cf[0] = wv[0] + wv[1] + wv[2] + wv[3]
    cf[1] = wax[0] + wax[1] + wax[2] + wax[3]
    wax *= ax
    cf[2] = wax[0] + wax[1] + wax[2] + wax[3]
    cf[3] = np.maximum(np.maximum(ax[0], ax[1]), np.maximum(ax[2], ax[3]))
    cf[3] += cf[0]
    cf[3] += np.float32(1.0)
    cf[0] *= np.float32(225.0)
    cf[1] *= np.float32(30.0)
    return out


def _run_margin(cf: F32Array, s: F32Array) -> tuple[F32Array, BoolArray]:
    """The margin by which a neighbour's ``s*A - 2B`` must exceed the smallest one at scale ``s`` for C's
    float32 d2 to be larger too, and whether the bound holds there (no overflow, finite).

    C's d2 = sum w*(s*q - x)^2 of a neighbour and the real value differ by at most ~9u*M (u = 2**-24,
    M = sum w*(15s + |x|)^2 >= every term), and d2 = s*(s*A - 2B) + sum w*x^2 in real arithmetic; the
    float32 estimate of s*A - 2B here is within ~11u*M/s. A margin of 2**-16 * M/s covers both for two
    neighbours with room to spare. Underflow adds absolute errors, covered by 2**-126 * (1 + s + (1 + X +
    W0)/s). M/s is convex in s, so a margin that holds at both ends of a run of scales holds in between.
    """
    m = cf[0] * s
    m += cf[1]
    m += cf[2] / s
    m *= _TIE_REL
    m += _TIE_ABS * (np.float32(1.0) + s + cf[3] / s)
    ok = (m < _BIG) & (m * s < _BIG)
    return m, ok


def _clear_min(
    est: F32Array, thr: F32Array, npad: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.uint8], BoolArray]:
    """First smallest of ``est`` (W, P) per column and whether every other entry exceeds it by more than
    ``thr`` (false for NaN or a non-finite minimum). Columns are padded at the end with ``npad`` copies of
    their first entry."""
    best = np.minimum.reduce(est, axis=0)  # NaN propagates: then nothing is within the limit
    width = est.shape[0]
    within = np.less_equal(est, best + thr, out=scratch("iq3.run.in", est.shape, np.bool_))
    n_in = np.add.reduce(within, axis=0, dtype=np.uint8)
    # when the minimum is clear it is the first entry within the limit (its padding copies come after)
    pick = np.uint8(width) - np.max(within * _COUNTDOWN[-width:, None], axis=0)
    np.minimum(pick, np.uint8(width - 1), out=pick)  # nothing within (NaN): not ok below, any index
    n_in -= npad * (pick == 0)
    ok = n_in == 1
    ok &= np.abs(best) < _BIG
    return pick, ok


def _run_widths(longest: int) -> tuple[int, ...]:
    """:data:`_RUN_WIDTHS`, the last one at least ``longest``."""
    return (*_RUN_WIDTHS[:-1], max(_RUN_WIDTHS[-1], longest))


@functools.cache
def _packed_runs(grid_size: int, width: int) -> tuple[npt.NDArray[np.uint16], npt.NDArray[np.uint8]]:
    """(width, n_rows) uint16: neighbour n of table row r has positions ``(p >> 4*i) & 15``, i = 0..3,
    the lists padded with copies of their first neighbour; and the padding count of every row."""
    t = iq3_tables(grid_size)
    cnt = t.nb_count
    slot = np.arange(width)[None, :]
    src = np.minimum(np.where(slot < cnt[:, None], slot, 0), t.nb_pos.shape[1] - 1)
    pos = np.take_along_axis(t.nb_pos, src[:, :, None], axis=1).astype(np.uint16)
    packed = pos[..., 0] | (pos[..., 1] << 4) | (pos[..., 2] << 8) | (pos[..., 3] << 12)
    return np.ascontiguousarray(packed.T), np.maximum(width - cnt, 0).astype(np.uint8)


@functools.cache
def _on_grid(grid_size: int) -> BoolArray:
    """Whether each 12-bit group code is a grid point (one gather of bytes instead of kmap >= 0)."""
    on: BoolArray = iq3_tables(grid_size).kmap >= 0
    return on


@functools.cache
def _row_buckets(grid_size: int) -> npt.NDArray[np.uint8]:
    """The :func:`_run_widths` bucket of every neighbour-table row (the first width >= its length)."""
    t = iq3_tables(grid_size)
    widths = np.array(_run_widths(t.nb_index.shape[1]))
    return np.searchsorted(widths, t.nb_count).astype(np.uint8)


def _run_entries(first: IntArray, last: IntArray) -> tuple[IntArray, IntArray]:
    """For runs of entries ``first[r]..last[r]``: their lengths and every entry (run by run).

    Per-run values are spread over the entries with ``np.repeat(v, cnt, axis=-1)``, faster than a
    gather by run index (no index array to read, and along the last axis of a 2-D array ~2x faster).
    """
    cnt = last - first + 1
    entries = np.repeat(first - np.cumsum(cnt) + cnt, cnt)
    entries += np.arange(entries.size)
    return cnt, entries


def _ab_tables(packed: npt.NDArray[np.uint16], ws: F32Array, wx2: F32Array) -> tuple[F32Array, F32Array]:
    """A = sum w*q^2 and 2B = 2 sum w*x*q of every neighbour (W, g) from packed positions, the weights
    ``ws`` and ``wx2`` = 2*w*x (4, g)."""
    shp = packed.shape
    a = np.empty(shp, dtype=np.float32)
    b2 = np.empty(shp, dtype=np.float32)
    q = scratch("iq3.run.q", shp)
    t = scratch("iq3.run.t", shp)
    qi = scratch("iq3.run.qi", shp, np.uint16)
    for i in range(4):
        if i == 0:
            np.bitwise_and(packed, np.uint16(15), out=qi)
        else:
            np.right_shift(packed, np.uint16(4 * i), out=qi)
            if i < 3:  # the top 4 bits need no mask
                qi &= np.uint16(15)
        qd, td = (q, t) if i else (b2, a)  # the first coordinate goes straight into the sums
        np.copyto(qd, qi)
        np.multiply(qd, qd, out=td)
        td *= ws[i]
        qd *= wx2[i]
        if i:
            a += t
            b2 += q
    return a, b2


class _Decided(NamedTuple):
    """Result of :func:`_run_search`: segments ``seg_first..seg_last`` of runs (flat positions) that one
    neighbour, grid index ``seg_gi``, wins throughout; and single entries ``pos`` with the grid index each
    takes (``gi``, -1 where C's exact search decides)."""

    seg_first: IntArray
    seg_last: IntArray
    seg_gi: I32Array
    pos: IntArray
    gi: I32Array


def _two_segments(
    v: F32Array, first: IntArray, last: IntArray, s_flat: F32Array
) -> tuple[list[tuple[IntArray, IntArray, I32Array]], IntArray]:
    """Runs ``first..last`` left with two contenders, ``v`` (5, n) as built in :func:`_run_search`:
    neighbour j1 wins an entry where d = (A1 - A0)*s - (2B1 - 2B0) < -margin, j0 where d > margin, C's
    exact search decides in between. d is monotone along a run (s is, and float32 rounding keeps the
    order of a product with a fixed factor and of a difference with a fixed term), so each run splits
    into at most three segments, found by binary searches on d instead of evaluating every entry.
    Returns the decided segments and the flat positions of the undecided entries. Runs with a
    non-finite term (where d need not be monotone) or a negative margin are evaluated entry by entry."""
    n_len = last - first + 1
    with np.errstate(invalid="ignore"):
        d_first = v[0] * np.take(s_flat, first, mode="wrap")
        d_first -= v[1]
        d_last = v[0] * np.take(s_flat, last, mode="wrap")
        d_last -= v[1]
    finite = np.isfinite(v[0]) & np.isfinite(v[1]) & np.isfinite(d_first) & np.isfinite(d_last)
    finite &= np.isfinite(np.take(s_flat, first, mode="wrap")) & np.isfinite(
        np.take(s_flat, last, mode="wrap")
    )
    finite &= v[2] >= 0  # the limits -margin < +margin (margins are >= 0; anything else entry by entry)
    rev = d_first > d_last  # d non-increasing along the run: search it from its last entry
    base = np.where(rev, last, first)
    sign = np.where(rev, -1, 1)
    # d < lim for the two limits: -margin, and the next float above +margin (d <= margin)
    lim = np.stack([-v[2], np.nextafter(v[2], np.float32(np.inf))])
    # count = number of leading entries (search order) with d < lim, in steps of decreasing powers of two
    count = np.zeros((2, n_len.size), dtype=np.intp)
    top = n_len - 1
    step = 1 << (int(n_len.max(initial=1)).bit_length() - 1)
    while step:
        cand = count + step
        k = np.minimum(cand - 1, top)
        k *= sign
        k += base
        d = v[0] * np.take(s_flat, k, mode="wrap")
        d -= v[1]
        below = d < lim
        below &= cand <= n_len
        count += below * step
        step >>= 1
    n_neg, n_not_pos = count[0], count[1]  # entries (in search order) with d < -margin, d <= margin

    gi0 = v[3].astype(np.int32)
    gi1 = v[4].astype(np.int32)
    segs: list[tuple[IntArray, IntArray, I32Array]] = []
    ties = []
    for k0, k1, gi in ((None, n_neg, gi1), (n_not_pos, None, gi0), (n_neg, n_not_pos, None)):
        lo_k = np.zeros_like(n_len) if k0 is None else k0
        hi_k = n_len if k1 is None else k1
        keep = np.flatnonzero(finite & (hi_k > lo_k))
        kk0, kk1 = np.take(lo_k, keep), np.take(hi_k, keep)
        # search order k is position first + k, or last - k when reversed
        f, lst, rv = np.take(first, keep), np.take(last, keep), np.take(rev, keep)
        a = np.where(rv, lst - kk1 + 1, f + kk0)
        b = np.where(rv, lst - kk0, f + kk1 - 1)
        if gi is None:
            ties.append(_run_entries(a, b)[1])
        else:
            segs.append((a, b, np.take(gi, keep)))
    tie_pos = ties[0]
    other = np.flatnonzero(~finite)
    if other.size:
        cnt, pos = _run_entries(np.take(first, other), np.take(last, other))
        vl = np.repeat(np.take(v, other, axis=1), cnt, axis=1)
        with np.errstate(invalid="ignore"):
            d = vl[0] * np.take(s_flat, pos, mode="wrap")
            d -= vl[1]
        gi = np.where(d < 0, vl[4], vl[3]).astype(np.int32)
        ok = np.abs(d) > vl[2]
        segs.append((np.compress(ok, pos), np.compress(ok, pos), np.compress(ok, gi)))
        tie_pos = np.concatenate([tie_pos, np.compress(~ok, pos)])
    return segs, tie_pos


def _run_search(
    tab: Iq3Tables,
    rows: IntArray,
    gterms: F32Array,
    grp: IntArray,
    first: IntArray,
    last: IntArray,
    s_flat: F32Array,
) -> _Decided:
    """The neighbour search for P runs (one group, one off-grid code, table row ``rows``; its entries
    are the flat positions ``first..last``, at scales ``s_flat[pos % s_flat.size]``, monotone along a
    run), its :func:`_group_terms` the columns ``grp`` of ``gterms`` (12, 8*nb). Returns the segments of
    runs that one neighbour wins throughout (whole runs, or parts of runs with two contenders, see
    :func:`_two_segments`), and the flat positions of the other entries with the grid index each takes
    there (-1 where a near tie, or a non-finite value, needs C's exact search).

    With A = sum w*q^2 and B = sum w*x*q of a neighbour, d2 = s*(s*A - 2B) + const, so neighbours
    compare by s*A - 2B, computed once per run from A and B. That is linear in s and the margin of
    :func:`_run_margin` convex in s, so a neighbour that is the clear minimum at both ends of a run is
    C's choice at every scale in between. When the ends have different clear minima j0 and j1, a
    neighbour not within the margin of j1 at the first end or of j0 at the last is beaten by one of
    them all along: if only j0 and j1 are left, the sign of their difference decides, and it changes
    at most once along the run. Other runs are decided entry by entry. The runs are handled in order of their list's padded width, each
    width a contiguous slice of the reordered runs."""
    widths = _run_widths(tab.nb_index.shape[1])
    bucket = np.take(_row_buckets(tab.grid_size), rows)
    order = np.argsort(bucket, kind="stable")
    bounds = np.cumsum(np.bincount(bucket, minlength=len(widths)))
    rows = np.take(rows, order)
    first = np.take(first, order)
    last = np.take(last, order)
    gt = np.take(gterms, np.take(grp, order), axis=1)
    s_first = np.take(s_flat, first, mode="wrap")
    s_last = np.take(s_flat, last, mode="wrap")
    seg_l: list[tuple[IntArray, IntArray, I32Array]] = []
    two_l: list[IntArray] = []
    two_v: list[F32Array] = []  # (5, n): A1 - A0, 2B1 - 2B0, margin, grid index j0, j1 (as float)
    pos_l: list[IntArray] = []
    gi_l: list[I32Array] = []
    full = tab.nb_index.shape[1]
    nb_flat = tab.nb_index.reshape(-1)
    lo = 0
    for bi, width in enumerate(widths):
        hi = int(bounds[bi])
        sel = slice(lo, hi)
        if hi == lo:
            continue
        lo = hi
        r = rows[sel]
        table, pads = _packed_runs(tab.grid_size, width)
        npad = np.take(pads, r)
        g = gt[:, sel]
        a, b2 = _ab_tables(np.take(table, r, axis=1), g[0:4], g[4:8])
        cf = g[8:12]
        s0 = s_first[sel]
        s1 = s_last[sel]
        t0, ok0 = _run_margin(cf, s0)
        t1, ok1 = _run_margin(cf, s1)
        ok_ends = ok0 & ok1
        est0 = a * s0
        est0 -= b2
        est1 = a * s1
        est1 -= b2
        j0, c0 = _clear_min(est0, t0, npad)
        j1, c1 = _clear_min(est1, t1, npad)
        ends = c0 & c1 & ok_ends
        same = j0 == j1
        dec = np.flatnonzero(ends & same)
        sd = dec + sel.start
        seg_l.append(
            (
                np.take(first, sd),
                np.take(last, sd),
                np.take(nb_flat, np.take(r, dec) * full + np.take(j0, dec)),
            )
        )
        two = ends & ~same
        if two.any():
            n_s = a.shape[1]
            cols = np.arange(n_s)
            lim0 = np.take(est0, j1.astype(np.intp) * n_s + cols)
            lim0 += t0
            lim1 = np.take(est1, j0.astype(np.intp) * n_s + cols)
            lim1 += t1
            inset = np.less_equal(est0, lim0, out=scratch("iq3.run.in0", est0.shape, np.bool_))
            inset &= est1 <= lim1
            n_in = np.add.reduce(inset, axis=0, dtype=np.uint8)
            n_in -= npad * inset[0]  # padding copies of neighbour 0
            two &= n_in == 2
            p2 = np.flatnonzero(two)
            i0 = j0[p2].astype(np.intp) * n_s + p2
            i1 = j1[p2].astype(np.intp) * n_s + p2
            v = np.empty((5, p2.size), dtype=np.float32)
            np.subtract(np.take(a, i1), np.take(a, i0), out=v[0])
            np.subtract(np.take(b2, i1), np.take(b2, i0), out=v[1])
            # the margin is convex in s: its larger end value holds along the run
            np.maximum(np.take(t0, p2), np.take(t1, p2), out=v[2])
            rp = np.take(r, p2) * full
            v[3] = np.take(nb_flat, rp + j0[p2])  # grid indices < 2**24: exact as float32
            v[4] = np.take(nb_flat, rp + j1[p2])
            two_l.append(p2 + sel.start)
            two_v.append(v)
        und = np.flatnonzero(~ends | (~same & ~two))
        if und.size == 0:
            continue
        # entry by entry for the other runs, still from A and B
        su = und + sel.start
        cnt, pos = _run_entries(np.take(first, su), np.take(last, su))
        se = np.take(s_flat, pos, mode="wrap")
        # the margin is convex in s: its larger end value holds along the run (NaN: no bound there)
        thr_run = np.maximum(np.take(t0, und), np.take(t1, und))
        thr_run[~np.take(ok_ends, und)] = np.nan
        est = np.repeat(np.take(a, und, axis=1), cnt, axis=1)
        est *= se
        est -= np.repeat(np.take(b2, und, axis=1), cnt, axis=1)
        j, c = _clear_min(est, np.repeat(thr_run, cnt), np.repeat(np.take(npad, und), cnt))
        pos_l.append(pos)
        rj = np.repeat(np.take(r, und) * full, cnt)
        rj += j
        gi_l.append(np.where(c, np.take(nb_flat, rj), -1).astype(np.int32))
    if two_l:
        p2 = np.concatenate(two_l)
        segs, tie_pos = _two_segments(
            np.concatenate(two_v, axis=1), np.take(first, p2), np.take(last, p2), s_flat
        )
        seg_l.extend(segs)
        pos_l.append(tie_pos)
        gi_l.append(np.full(tie_pos.size, -1, dtype=np.int32))
    if seg_l:
        seg_first, seg_last, seg_gi = (np.concatenate(c) for c in zip(*seg_l, strict=True))
    else:
        seg_first = seg_last = np.zeros(0, dtype=np.intp)
        seg_gi = np.zeros(0, dtype=np.int32)
    if pos_l:
        return _Decided(seg_first, seg_last, seg_gi, np.concatenate(pos_l), np.concatenate(gi_l))
    return _Decided(seg_first, seg_last, seg_gi, np.zeros(0, dtype=np.intp), np.zeros(0, dtype=np.int32))


def _snap_trials(tab: Iq3Tables, codes: I16Array, xv: F32Array, wv: F32Array, scale: F32Array) -> BoolArray:
    """:func:`_snap_to_grid` for the trial scales: ``codes`` (8, nb, T), ``scale`` (nb, T) monotone
    along T. The trials of a group with the same off-grid code (a run) share the neighbour list and are
    searched together (:func:`_run_search`); near ties go through C's exact search."""
    on = np.take(_on_grid(tab.grid_size), codes)
    n_t = scale.shape[1]
    cflat = codes.reshape(-1)
    off = ~on.reshape(-1)
    differs = cflat[1:] != cflat[:-1]
    new = off.copy()
    new[1:] &= differs
    new[::n_t] = off[::n_t]  # a group's first trial starts a run
    end = off.copy()
    end[:-1] &= differs
    end[n_t - 1 :: n_t] = off[n_t - 1 :: n_t]
    first = np.flatnonzero(new)
    if first.size == 0:
        return on
    last = np.flatnonzero(end)
    grp = first // n_t  # k * nb + b: column of xv/wv
    rows = np.take(tab.nb_row, np.take(cflat, first)).astype(np.intp)
    s_flat = scale.reshape(-1)
    res = _run_search(tab, rows, _group_terms(xv, wv), grp, first, last, s_flat)
    pos, gi = res.pos, res.gi
    # segments with one winner: add (its code - the run's code) over them, as a running sum of steps
    step = np.take(tab.grid_codes, res.seg_gi) - np.take(cflat, res.seg_first).astype(np.int32)
    # int32: numpy's int16 running sum is 5x slower (codes < 4096, so the sums fit either way)
    delta = np.zeros(cflat.size + 1, dtype=np.int32)
    delta[res.seg_first] = step
    delta[res.seg_last + 1] -= step  # after the assignment: a segment may start where one ends
    np.cumsum(delta, out=delta)
    np.add(cflat, delta[:-1], out=cflat, casting="unsafe")
    exact = np.flatnonzero(gi < 0)
    if exact.size:
        pe = np.take(pos, exact)
        rr = np.take(tab.nb_row, np.take(cflat, pe)).astype(np.intp)
        gi[exact] = _best_neighbours(tab, rr, pe // n_t, xv, wv, np.take(s_flat, pe, mode="wrap"))
    cflat[pos] = np.take(tab.grid_codes, gi)
    return on


def _iq3_blocks(kind: _Kind, xt: F32Array, w: F32Array) -> _Blocks:
    """The per-32-block part of both quantizers, for j-major ``xt``/``w`` (32, nb)."""
    tab = iq3_tables(kind.grid_size)
    nb = xt.shape[1]
    cols = np.arange(nb)
    waux = np.sqrt(w)

    neg = ~(xt >= 0)  # -0.0 counts as non-negative, like C's `x >= 0`
    xval = np.where(neg, -xt, xt)
    bits = (np.uint8(1) << np.arange(8, dtype=np.uint8))[None, :, None]
    signs = (neg.reshape(4, 8, nb) * bits).sum(axis=1, dtype=np.uint8)
    if kind.parity_signs:
        odd = (neg.reshape(4, 8, nb).sum(axis=1) & 1).astype(bool)
        imin = np.argmin(((w * xt) * xt).reshape(4, 8, nb), axis=1)  # first minimum
        gk, gb = np.nonzero(odd)
        j = 8 * gk + imin[gk, gb]
        xval[j, gb] = -xval[j, gb]
        signs[gk, gb] ^= np.uint8(1) << imin[gk, gb].astype(np.uint8)
        signs &= np.uint8(127)

    vmax = np.max(xval, axis=0)
    skip = vmax < kind.eps if kind.eps is not None else vmax == 0
    vmax = np.where(skip, np.float32(1.0), vmax)

    # id = (2*kMaxQ - 1 + is*0.2f) / max, all float32.
    steps = np.arange(-kind.n_scale_steps, kind.n_scale_steps + 1, dtype=np.float32)
    numer = np.float32(15.0) + steps * np.float32(0.2)
    ids = _f32(numer[:, None] / vmax[None, :])  # (T, nb)

    xg = np.ascontiguousarray(xval.reshape(8, 4, nb).transpose(1, 0, 2)).reshape(4, 8 * nb)
    wg = np.ascontiguousarray(waux.reshape(8, 4, nb).transpose(1, 0, 2)).reshape(4, 8 * nb)

    # trial-minor layout (.., nb, T): the trials of a group with one code are contiguous (see _snap_trials)
    ids_t = np.ascontiguousarray(ids.T)
    codes_t = _trial_codes(xval, ids_t)  # (8, nb, T)
    on = _snap_trials(tab, codes_t, xg, wg, _f32(np.float32(1.0) / ids_t))
    sumqx, sumq2 = _trial_sums(codes_t, w, w * xval)

    # C: if (sumq2 > 0 && sumqx*sumqx > best*sumq2) { scale = sumqx/sumq2; best = scale*sumqx; }
    # Everything but the comparison with the running best is computed for all trials at once.
    with np.errstate(all="ignore"):
        sxt = np.ascontiguousarray(sumqx.T)  # (T, nb)
        s2t = np.ascontiguousarray(sumq2.T)
        ratio = sxt / s2t
        cand = ratio * sxt
        sq = sxt * sxt
        pos2 = s2t > 0
        best = np.zeros(nb, dtype=np.float32)
        win = np.full(nb, -1, dtype=np.intp)
        rhs = np.empty(nb, dtype=np.float32)
        take = np.empty(nb, dtype=np.bool_)
        for t in range(ids.shape[0]):
            np.greater(sq[t], np.multiply(best, s2t[t], out=rhs), out=take)
            take &= pos2[t]
            best = np.where(take, cand[t], best)
            win[take] = t
    scale = np.where(win >= 0, ratio[np.maximum(win, 0), cols], vmax / np.float32(15.0))

    has = win >= 0
    wsafe = np.where(has, win, 0)
    codes = np.where(has, codes_t[:, cols, wsafe], np.int16(0))
    on_grid = np.where(has, on[:, cols, wsafe], not kind.refine_all_groups)

    refine = (~on_grid).any(axis=0) & (scale > 0) & ~skip
    rb = np.flatnonzero(refine)
    if rb.size:
        with np.errstate(all="ignore"):
            sc = scale[rb]
            xr = np.take(xval, rb, axis=1)
            cr = _level_codes(xr, _f32(np.float32(1.0) / sc)[None, :])
            groups = None if kind.refine_all_groups else ~on_grid[:, rb]
            if groups is not None:
                cr = np.where(groups, cr, np.take(codes, rb, axis=1))
            sub = (np.arange(8)[:, None] * nb + rb[None, :]).reshape(-1)
            _snap_to_grid(tab, cr, np.take(xg, sub, axis=1), np.take(wg, sub, axis=1), _f32(sc), groups)
            qr = _positions(cr)
            wr = np.take(w, rb, axis=1)
            sx = seq_sum0((wr * xr) * qr)
            s2 = seq_sum0((wr * qr) * qr)
            scale[rb] = np.where(s2 > 0, sx / s2, sc)
            codes[:, rb] = cr

    flip = scale < 0
    scale = np.where(flip, -scale, scale)
    signs = np.where(flip[None, :], ~signs & np.uint8(127 if kind.parity_signs else 255), signs)
    scale = np.where(skip, np.float32(0.0), scale)
    codes[:, skip] = 0
    return _Blocks(codes, _f32(scale), signs, skip)


def _grid_index(tab: Iq3Tables, codes: I16Array) -> I32Array:
    gi: I32Array = np.take(tab.kmap, codes)
    if (gi < 0).any():
        raise RuntimeError("IQ3 quantizer produced a point that is not on the grid")  # ggml aborts too
    return gi


def _prepare(rows: F32Array, imatrix: F32Array | None) -> tuple[F32Array, F32Array]:
    """j-major values and weights (32, nb) of all 32-blocks of ``rows``."""
    n_rows = rows.shape[0]
    nsb = rows.size // 256
    xt = np.ascontiguousarray(rows.reshape(-1, 32).T)
    if imatrix is None:
        return xt, xt * xt
    sumx2 = seq_sum0(np.ascontiguousarray(rows.reshape(nsb, 256).T) ** 2)
    sigma2 = (np.float32(2.0) * sumx2) / np.float32(256.0)
    qw = np.tile(np.asarray(imatrix, dtype=np.float32).reshape(-1, 32).T, (1, n_rows))
    w = qw * np.sqrt(np.repeat(sigma2, 8)[None, :] + xt * xt)
    return xt, w


def _blocks_in_steps(kind: _Kind, xt: F32Array, w: F32Array) -> _Blocks:
    nb = xt.shape[1]
    step = kind.blocks_per_step
    if nb <= step:
        return _iq3_blocks(kind, xt, w)
    codes = np.empty((8, nb), dtype=np.int16)
    scale = np.empty(nb, dtype=np.float32)
    signs = np.empty((4, nb), dtype=np.uint8)
    skip = np.empty(nb, dtype=bool)
    for s in range(0, nb, step):
        e = min(nb, s + step)
        codes[:, s:e], scale[s:e], signs[:, s:e], skip[s:e] = _iq3_blocks(kind, xt[:, s:e], w[:, s:e])
    return _Blocks(codes, scale, signs, skip)


def _scale_codes(scale: F32Array, max_scale: F32Array) -> I32Array:
    """Per block ``MAX(0, MIN(15, nearest_int(0.5f*(id*scale - 1))))`` with id = 1/(max_scale/31)."""
    with np.errstate(all="ignore"):
        d = max_scale / np.float32(31.0)
        inv = np.float32(1.0) / d
        v = inv[:, None] * scale
        v -= np.float32(1.0)
        v *= np.float32(0.5)
    return np.clip(nearest_int(v), 0, 15)


def quantize_iq3_xxs(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    with np.errstate(all="ignore"):  # inf/NaN propagate silently, as in C
        return _quantize_iq3_xxs(rows, imatrix)


def _superblocks(
    kind: _Kind, rows: F32Array, imatrix: F32Array | None, d_factor: float
) -> tuple[int, F32Array, I32Array, U8Array, BoolArray, I32Array, U16Array]:
    """The search and scale coding shared by IQ3_XXS and IQ3_S.

    Returns (nsb, max_scale, grid indices (8, nb), signs, skip, 4-bit scales (nsb, 8), the fp16 bits
    of ``max_scale/31 * d_factor``)."""
    nsb = rows.size // 256
    xt, w = _prepare(rows, imatrix)
    codes, scale, signs, skip = _blocks_in_steps(kind, xt, w)
    gi = _grid_index(iq3_tables(kind.grid_size), codes)  # (8, nb)
    scale = scale.reshape(nsb, 8)
    max_scale = np.max(scale, axis=1)
    ls = _scale_codes(scale, max_scale)
    with np.errstate(over="ignore"):
        dh = fp32_to_fp16_bits((max_scale / np.float32(31.0)) * np.float32(d_factor))
    return nsb, max_scale, gi, signs, skip, ls, dh


def _quantize_iq3_xxs(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    n_rows = rows.shape[0]
    nsb, max_scale, gi, signs, skip, ls_i, dh = _superblocks(_XXS, rows, imatrix, 1.0125)
    ls = ls_i.astype(np.uint32)
    sg = np.where(skip[None, :], np.uint8(0), signs).astype(np.uint32).reshape(4, nsb, 8)
    sas = sg[0] | (sg[1] << 7) | (sg[2] << 14) | (sg[3] << 21) | (ls << 28)

    out = np.empty((nsb, 98), dtype=np.uint8)
    out[:, 0:2] = dh.reshape(nsb, 1).view(np.uint8)
    out[:, 2:66] = gi.T.reshape(nsb, 64).astype(np.uint8)
    out[:, 66:98] = sas.astype("<u4").view(np.uint8)
    out[max_scale == 0] = 0
    return out.reshape(n_rows, -1)


def quantize_iq3_s(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    with np.errstate(all="ignore"):  # inf/NaN propagate silently, as in C
        return _quantize_iq3_s(rows, imatrix)


def _quantize_iq3_s(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    n_rows = rows.shape[0]
    nsb, max_scale, gi, signs, skip, ls, dh = _superblocks(_S, rows, imatrix, 1.033)

    # ggml advances the qs/signs write pointers only past blocks it did not skip, so the blocks that
    # follow a skipped one are stored one slot earlier (and the last slots stay zero).
    kept = ~skip.reshape(nsb, 8)
    slot = np.cumsum(kept, axis=1) - 1
    sb, ib = np.nonzero(kept)
    dest = slot[sb, ib]
    qs = np.zeros((nsb, 8, 8), dtype=np.uint8)
    sgn = np.zeros((nsb, 8, 4), dtype=np.uint8)
    gib = gi.T.reshape(nsb, 8, 8)  # (super-block, block, group)
    qs[sb, dest] = (gib[sb, ib] & 255).astype(np.uint8)
    sgn[sb, dest] = signs.T.reshape(nsb, 8, 4)[sb, ib]
    qh_bits = ((gib >> 8) & 1).astype(np.uint8) * (np.uint8(1) << np.arange(8, dtype=np.uint8))
    qh = np.where(kept, qh_bits.sum(axis=2, dtype=np.uint8), np.uint8(0))

    has = max_scale != 0
    sc = np.where(has[:, None], ls, 0).astype(np.uint8)
    out = np.empty((nsb, 110), dtype=np.uint8)
    out[:, 0:2] = np.where(has, dh, np.uint16(0)).reshape(nsb, 1).view(np.uint8)
    out[:, 2:66] = qs.reshape(nsb, 64)
    out[:, 66:74] = qh
    out[:, 74:106] = sgn.reshape(nsb, 32)
    out[:, 106:110] = sc[:, 0::2] | (sc[:, 1::2] << 4)
    return out.reshape(n_rows, -1)
