"""k-quants (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K), byte-exact with ggml's ``ggml_quantize_chunk``.

Without an imatrix ggml runs ``quantize_row_qX_K_ref`` over the whole chunk, with one it runs
``quantize_row_qX_K_impl`` row by row; both are reproduced here, vectorized over every super-block of the
chunk. The scale searches live in :mod:`._scale_search` and work on a transposed ``(n, groups)`` layout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from ._numeric import (
    F32Array,
    U8Array,
    finish_blocks,
    fp16_round,
    fp32_to_fp16_bits,
    nearest_int,
    out_blocks,
    quiet_fp,
    scratch,
    seq_sum,
)
from ._scale_search import (
    _first_absmax,
    clamped_levels,
    einsum_sums_exact,
    make_q3_quants,
    make_qkx2_quants,
    make_qkx3_quants,
    make_qp_quants,
    make_qx_quants,
    make_qx_quants_iscale,
    nearest_int_inplace,
    seq_sum_middle,
)

__all__ = ["quantize_q2_k", "quantize_q3_k", "quantize_q4_k", "quantize_q5_k", "quantize_q6_k"]

QK_K = 256
_F0 = np.float32(0)
_F1 = np.float32(1)
I32Array = npt.NDArray[np.int32]
AnyArray = npt.NDArray[Any]
_LE64 = np.dtype("<u8")


# ------------------------------------------------------------------------------------------------ helpers


def _groups(rows: F32Array, n: int, key: str) -> F32Array:
    """(n, G) transposed layout: column g holds the n consecutive values of group g (in the scratch
    buffer ``key``: valid until the next call with that key)."""
    out: F32Array = scratch(key, (n, rows.size // n))
    np.copyto(out, rows.reshape(-1, n).T)
    return out


def _weights_groups(imatrix: F32Array, n_rows: int, n: int) -> F32Array:
    """The imatrix laid out like :func:`_groups` of the rows (the same weights repeat for every row)."""
    return np.ascontiguousarray(np.tile(imatrix.reshape(-1, n).T, (1, n_rows)))


def _superblock_sumsq(rows: F32Array) -> F32Array:
    """``float s = 0; for (j < 256) s += x[j]*x[j];`` for every super-block."""
    xs = rows.reshape(-1, QK_K).T.copy()  # always a copy: squared in place below
    return seq_sum(np.multiply(xs, xs, out=xs))


def _nint(v: AnyArray) -> I32Array:
    return nearest_int(v)


def _requant(
    rows: F32Array, d: F32Array, lo: int, hi: int, keep: F32Array, m: F32Array | None = None
) -> U8Array:
    """Final levels of every sub-block, in row order: (S, 256) uint8.

    ``if (!d) keep the search's L; else L = clamp(nearest_int((x [+ m])/d), lo, hi) - lo``. Computed on
    the rows as they are (group g is row g of ``rows.reshape(G, n)``; ``d`` and ``m`` per group, the
    per-group values repeated along the rows), so the levels need no transposing back; only ``keep``
    is in the (n, G) group layout of the search.
    """
    g = d.size
    x = rows.reshape(g, -1)
    n = x.shape[1]
    q = scratch("kq.rq", (g, n))
    dr = np.repeat(d, n).reshape(g, n)  # a full operand: broadcasting a column costs more than this
    if m is None:
        np.divide(x, dr, out=q)
    else:
        np.add(x, np.repeat(m, n).reshape(g, n), out=q)
        np.divide(q, dr, out=q)
    qi = nearest_int_inplace(q)
    np.clip(qi, lo, hi, out=qi)
    if lo:
        np.subtract(qi, np.int32(lo), out=qi)
    dz = np.flatnonzero(d == 0)
    if dz.size:
        qi[dz] = keep[:, dz].T
    return qi.astype(np.uint8).reshape(-1, QK_K)


def _pack_2bit(L: AnyArray) -> U8Array:
    """qs[j/4 + l] = L[j+l] | L[j+l+32] << 2 | L[j+l+64] << 4 | L[j+l+96] << 6 for j in (0, 128)."""
    q = L.reshape(-1, 2, 4, 32)
    out = q[:, :, 0] | (q[:, :, 1] << 2) | (q[:, :, 2] << 4) | (q[:, :, 3] << 6)
    return cast(U8Array, out.reshape(-1, 64))


def _pack_bits(b: AnyArray) -> U8Array:
    """(S, k, 32) 0/1 uint8 values -> (S, 32) bytes with bit i taken from b[:, i]."""
    out: U8Array = b[:, 0].copy()
    for i in range(1, b.shape[1]):
        out |= b[:, i] << i
    return out


def _fp16r(v: AnyArray) -> F32Array:
    return fp16_round(v)


def _fp16_bytes(v: AnyArray) -> U8Array:
    return fp32_to_fp16_bits(v).view(np.uint8).reshape(-1, 2)


def _first_absmax_rows(v: F32Array) -> tuple[F32Array, F32Array]:
    """Per row: (largest |v|, the value holding it), first wins, NaN never does (C's strict ``>``).

    The value is 0 when no |v| is > 0; the magnitude is then whatever argmax saw (0, or -1 for all-NaN).
    """
    a = np.abs(v)
    a[np.isnan(a)] = -1
    idx = np.argmax(a, axis=1)[:, None]
    best = np.take_along_axis(v, idx, axis=1)[:, 0]
    amax = np.take_along_axis(a, idx, axis=1)[:, 0]
    best[~(amax > 0)] = 0
    return amax, best


def _qp_scales_mins(
    scales: F32Array, mins: F32Array, sw: F32Array, n_super: int, nmax: int
) -> tuple[F32Array, F32Array, I32Array, I32Array]:
    """The two make_qp_quants calls of the imatrix paths (sub-block scales and mins, weighted by the
    sub-block weight sums ``sw``), run as one batch of 2*S groups: returns (d, dmin, ls, lm)."""
    k = scales.size // n_super
    both = np.concatenate([scales.reshape(n_super, k), mins.reshape(n_super, k)], axis=0)
    sw2 = np.tile(sw.reshape(n_super, k), (2, 1))
    dm, Lsm = make_qp_quants(np.ascontiguousarray(both.T), nmax, np.ascontiguousarray(sw2.T))
    Lsm_i = np.ascontiguousarray(Lsm.T).astype(np.int32)
    return dm[:n_super], dm[n_super:], Lsm_i[:n_super], Lsm_i[n_super:]


def _max_pos_rows(v: F32Array) -> F32Array:
    """Per row: ``float m = 0; for (j) if (v[j] > m) m = v[j];``."""
    m: F32Array = np.fmax.reduce(v, axis=1)
    m[~(m > 0)] = 0
    return m


# ----------------------------------------------------------------------------------------------------- Q6_K


# make_qx_quants(16, 32, ...) candidates: the first iscale is -32/max, then -(32 + 0.1f*is)/max, is = -9..9 != 0.
_Q6_C = [np.float32(32)] + [np.float32(32) + np.float32(0.1) * np.float32(s) for s in range(-9, 10) if s]
# For finite x, |iscale*x| <= c*(1+2^-24)^2: below 31.5 the levels never leave [-32, 31] (no clip), below
# 32.5 only the upper bound can be reached (clip 0, a minimum against a row of 31s is cheaper than np.clip).
_Q6_CLIP = [0 if float(c) < 31.45 else 1 if float(c) < 32.45 else 2 for c in _Q6_C]


def _q6_search(
    x: F32Array, imatrix: F32Array | None, n_rows: int
) -> tuple[F32Array, F32Array, I32Array, npt.NDArray[np.bool_], F32Array]:
    """make_qx_quants(16, 32, x, L, 1, qw) for every group of finite ``x`` (16, G), without its levels
    (``qw``: the imatrix values of the group, the same for each of the ``n_rows`` rows).

    Returns (scale, the candidates' divisor ``safe_mx``, the accepted candidate's index, all-zero groups,
    largest |x|). The levels are only needed where the requantization keeps them (d == 0), see
    :func:`_q6_keep_levels`. The sums of all 19 candidates are computed first (a few passes over the
    values each), then C's accept-if-better scan runs over the (19, G) sums; only the few groups that
    accept a candidate compute its scale (C's divisions).
    """
    n, g = x.shape
    k = len(_Q6_C)
    amax, mx = _first_absmax(x)
    zero = amax < np.float32(1e-15)
    safe_mx = np.where(zero, _F1, mx)
    ww = scratch("q6.ww", (2, n, g))  # [w*x, w]
    if imatrix is None:
        np.multiply(x, x, out=ww[1])
    else:
        np.copyto(ww[1].reshape(n, n_rows, -1), imatrix.reshape(-1, n).T[:, None, :])
    np.multiply(ww[1], x, out=ww[0])
    v = scratch("q6.v", (n, g))
    t = scratch("q6.t", (2, n, g))
    S = scratch("q6.S", (k, 2, g))  # [sumlx, suml2] per candidate
    row31 = np.full(g, 31, dtype=np.float32)
    fused = g >= 2 and einsum_sums_exact()
    for j, c in enumerate(_Q6_C):
        iscale = np.divide(-c, safe_mx)
        np.multiply(x, iscale, out=v)
        np.rint(v, out=v)
        if _Q6_CLIP[j] == 1:
            np.minimum(v, row31, out=v)
        elif _Q6_CLIP[j] == 2:
            np.clip(v, np.float32(-32), np.float32(31), out=v)
        if fused:  # C's in-order sums of the rounded products, one pass each (see einsum_sums_exact)
            np.einsum("in,in->n", ww[0], v, out=S[j, 0])
            np.einsum("in,in,in->n", ww[1], v, v, out=S[j, 1])
            continue
        np.multiply(ww, v, out=t)
        np.multiply(t[1], v, out=t[1])
        seq_sum_middle(t, S[j])
    slx, sl2 = S[:, 0], S[:, 1]
    lhs = np.multiply(slx, slx, out=scratch("q6.lhs", (k, g)))
    pos = np.greater(sl2, _F0, out=scratch("q6.pos", (k, g), np.bool_))
    sc0 = np.divide(slx[0], sl2[0])
    np.putmask(sc0, sl2[0] == 0, _F0)  # suml2 ? sumlx/suml2 : 0
    best = np.multiply(sc0, slx[0])
    idx = np.zeros(g, dtype=np.int32)
    rhs = np.empty(g, dtype=np.float32)
    better = np.empty(g, dtype=np.bool_)
    for j in range(1, k):
        np.multiply(best, sl2[j], out=rhs)
        np.greater(lhs[j], rhs, out=better)  # if (suml2 > 0 && sumlx*sumlx > best*suml2)
        better &= pos[j]
        acc = np.flatnonzero(better)  # a few percent of the groups
        if acc.size:
            lx = slx[j][acc]
            best[acc] = lx / sl2[j][acc] * lx  # scale = sumlx/suml2; best = scale*sumlx
            idx[acc] = j
    flat = idx.astype(np.intp)
    flat *= 2 * g  # S[idx, 0, group], S[idx, 1, group]
    flat += np.arange(g)
    Sf = S.reshape(-1)
    scale = np.divide(np.take(Sf, flat), np.take(Sf, flat + g))
    scale = np.where(idx == 0, sc0, scale)  # a masked copyto runs element by element, far slower
    scale[zero] = 0
    return scale, safe_mx, idx, zero, amax


def _q6_keep_levels(x: F32Array, safe_mx: F32Array, idx: I32Array) -> F32Array:
    """The search's levels (l + 32) of the groups given as columns of ``x`` (16, k)."""
    c = np.array(_Q6_C, dtype=np.float32)[idx]
    L = np.multiply(x, np.negative(c) / safe_mx)
    np.rint(L, out=L)
    np.clip(L, np.float32(-32), np.float32(31), out=L)
    L += np.float32(32)
    return L


def _q6_levels(
    x: F32Array, d: F32Array, dz: npt.NDArray[np.intp], keep: F32Array | None, amax: F32Array | None
) -> U8Array:
    """``L = clamp(nearest_int(x/d), -32, 31) + 32`` per group of ``x`` (16, G), as uint8 in the same
    layout; the groups ``dz`` (d == 0) take ``keep``.

    Where every |x/d| stays below 2^22 (checked from the groups' largest |x|), rint is nearest_int.
    """
    q = np.divide(x, d, out=scratch("q6.q", x.shape))
    lo, hi = np.float32(-32), np.float32(31)
    if amax is not None and bool(np.all((amax <= np.float32(4e6) * np.abs(d)) | (d == 0))):
        np.rint(q, out=q)
        np.clip(q, lo, hi, out=q)
        q += np.float32(32)
        L: U8Array = scratch("q6.L", x.shape, np.uint8)
        np.copyto(L, q, casting="unsafe")  # the d == 0 groups (inf/NaN here) are replaced below
    else:
        qi = nearest_int_inplace(q)
        np.clip(qi, -32, 31, out=qi)
        qi += np.int32(32)
        L = qi.astype(np.uint8)
    if keep is not None:
        L[:, dz] = keep
    return L


@quiet_fp
def quantize_q6_k(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    n_rows = rows.shape[0]
    n_super = rows.size // QK_K
    x16 = scratch("q6.x16", (16, rows.size // 16))  # the _groups layout, in a reused buffer
    np.copyto(x16, rows.reshape(-1, 16).T)
    # A finite total means every value is finite (inf and NaN propagate); otherwise the generic search.
    fast = bool(np.isfinite(np.add.reduce(x16, axis=None)))
    if fast:
        scales, safe_mx, best_idx, group_zero, group_amax = _q6_search(x16, imatrix, n_rows)
    else:
        qw = None if imatrix is None else _weights_groups(imatrix, n_rows, 16)
        scales, L0 = make_qx_quants(x16, 32, qw)
    sc = scales.reshape(n_super, 16)

    max_abs, max_scale = _first_absmax_rows(sc)
    zero = ~(max_abs >= np.float32(1e-15))

    iscale = np.float32(-128.0) / np.where(zero, np.float32(1), max_scale)
    d = np.float32(1) / iscale
    q_sc = np.minimum(_nint(iscale[:, None] * sc), 127)
    q_sc_i8 = q_sc.astype(np.int8)  # stored as int8_t
    dq = _fp16r(d)[:, None] * q_sc_i8.astype(np.float32)

    dqg = dq.reshape(-1)
    dz = np.flatnonzero(dqg == 0)  # C: if (!d) keep the search's levels
    keep = None
    if dz.size:
        if fast:
            keep = _q6_keep_levels(x16[:, dz], safe_mx[dz], best_idx[dz])
            keep[:, group_zero[dz]] = 0
        else:
            keep = L0[:, dz]
    L = _q6_levels(x16, dqg, dz, keep, group_amax if fast else None)

    # Packed straight from the (16, G) layout: value 16*j + i of a super-block is L[i, s, j]; with
    # j = 8h + 2q + lh (half h, quarter q) its bits go to ql[64h + 32(q&1) + 16lh + i] and
    # qh[32h + 16lh + i]. The 8 levels of one (i, s, h) are one little-endian uint64, byte 2q + lh.
    w = L.reshape(16, n_super, 16).view(_LE64)  # (16, S, 2)
    lo4 = np.bitwise_and(w, np.uint64(0x0F0F0F0F0F0F0F0F), out=scratch("q6.lo", w.shape, np.uint64))
    hi2 = np.right_shift(w, np.uint64(4), out=w)
    hi2 &= np.uint64(0x0303030303030303)
    lo4 |= lo4 >> np.uint64(28)  # bytes 0..3: lo(q) | lo(q + 2) << 4 for q = 0, 1
    qh = np.right_shift(hi2, np.uint64(14), out=scratch("q6.qh", w.shape, np.uint64))
    qh |= hi2
    qh |= hi2 >> np.uint64(28)
    qh |= hi2 >> np.uint64(42)  # bytes 0, 1: the 2-bit highs of q = 0..3 for lh = 0, 1
    out = np.empty((n_super, 210), dtype=np.uint8)
    lb = lo4.view(np.uint8).reshape(16, n_super, 2, 8)
    out[:, :128].reshape(n_super, 2, 4, 16)[...] = lb[..., :4].transpose(1, 2, 3, 0)
    hb = qh.view(np.uint8).reshape(16, n_super, 2, 8)
    out[:, 128:192].reshape(n_super, 2, 2, 16)[...] = hb[..., :2].transpose(1, 2, 3, 0)
    out[:, 192:208] = q_sc_i8.view(np.uint8)
    out[:, 208:210] = _fp16_bytes(d)
    out[zero] = 0
    return out.reshape(n_rows, -1)


# ----------------------------------------------------------------------------------------------------- Q3_K


_LSB = np.uint64(0x0101010101010101)
_LOW2 = np.uint64(0x0303030303030303)
_NIB = np.uint64(0x0F0F0F0F0F0F0F0F)
_LOW32 = np.uint64(0xFFFFFFFF)


def _q3_scale_bytes(ls: AnyArray) -> U8Array:
    """Pack 16 6-bit scales (S, 16) into ggml's 12-byte Q3_K layout.

    On uint64 words (8 scales each): every shift below stays inside its byte once masked, and numpy's
    uint8 shifts are not vectorized.
    """
    w = np.ascontiguousarray(ls, dtype=np.uint8).view(np.uint64)  # (S, 2): scales 0-7, 8-15
    out = np.empty((w.shape[0], 12), dtype=np.uint8)
    lo = w & _NIB
    out[:, :8] = (lo[:, 0] | (lo[:, 1] << np.uint64(4))).view(np.uint8).reshape(-1, 8)
    h = (w >> np.uint64(4)) & _LOW2  # 2 high bits; byte k of word q is scale 8q + k
    # scales[8 + j%4] |= (l >> 4) << 2*(j/4): bytes 0-3 and 4-7 of both words, j/4 = 0..3
    hi = (h[:, 0] & _LOW32) | ((h[:, 0] >> np.uint64(32)) << np.uint64(2))
    hi |= (h[:, 1] & _LOW32) << np.uint64(4)
    hi |= (h[:, 1] >> np.uint64(32)) << np.uint64(6)
    out[:, 8:] = hi.view(np.uint8).reshape(-1, 8)[:, :4]
    return out


_SC_LO, _SC_HI = np.array(-32, dtype=np.float32), np.array(31, dtype=np.float32)  # 0-d: faster np.clip


def _q3_super_scale(scales: F32Array, n_super: int) -> tuple[U8Array, F32Array]:
    """quantize_row_q3_K_ref's 6-bit scales (S, 16) of the 16 sub-block scales and the super-block
    scale ``1/iscale`` (0 where the largest scale is 0)."""
    sc = scales.reshape(n_super, 16)
    sct = np.ascontiguousarray(sc.T)
    hi = np.maximum.reduce(sct, axis=0)
    lo = np.minimum.reduce(sct, axis=0)
    nlo = np.negative(lo)
    if np.isfinite(hi - lo).all() and not ((nlo == hi) & (hi != 0)).any():
        # one sign holds the largest magnitude: no tie to break (and hi + lo < 0 exactly when
        # -lo > hi: the sign picked without a data-dependent select)
        max_scale = np.maximum(hi, nlo)
        np.copysign(max_scale, np.add(hi, lo), out=max_scale)
    else:  # NaN, inf, a huge range, or +a and -a both largest (the first one wins)
        max_scale = _first_absmax(sct)[1]
    nz = max_scale != 0
    iscale = np.float32(-32.0) / np.where(nz, max_scale, _F1)
    v = sc * iscale[:, None]
    if np.isfinite(v).all():
        # |v| <= 32 (rounded): nearest_int is round-half-even and the int8 cast cannot wrap
        np.rint(v, out=v)
        np.clip(v, _SC_LO, _SC_HI, out=v)
        v += np.float32(32)
        ls = v.astype(np.uint8)
    else:
        li = _nint(v)
        li = ((li + 128) & 0xFF) - 128  # int8_t l
        ls = (np.clip(li, -32, 31) + 32).astype(np.uint8)
    if not nz.all():
        ls[~nz] = 0
    d = np.where(nz, _F1 / iscale, _F0)
    return ls, d


_SUPER_TILE = 32  # super-blocks per tile of the (256, S) transposition (2.4x faster than one copy)
_G16_TILE = 512  # groups per tile of the (16, G) transposition: 1.5x faster than one transposed copy


def _groups16(rows: F32Array) -> F32Array:
    """The chunk in the (16, G) group layout (a scratch buffer)."""
    g = rows.size // 16
    src = rows.reshape(g, 16)
    x16: F32Array = scratch("q3k.x16", (16, g))
    for b in range(0, g, _G16_TILE):
        np.copyto(x16[:, b : b + _G16_TILE], src[b : b + _G16_TILE].T)
    return x16


_MAGIC = np.float32(12582912.0)  # 1.5 * 2**23: ggml's nearest_int adds it
_L3_LO, _L3_HI = np.array(0x400000 - 4, dtype=np.int32), np.array(0x400000 + 3, dtype=np.int32)


def _q3_levels(rows: F32Array, d: F32Array, keep: Callable[[], AnyArray]) -> U8Array:
    """Final levels in row order, (S, 256) uint8 in [0, 8): ``clamp(nearest_int(x/d), -4, 3) + 4`` per
    sub-block of 16 (``d``: one per group, in row order); where ``d == 0`` the search's levels
    (``keep()``, in the (16, G) group layout) stay. The result lives in a scratch buffer (valid until
    the next call).

    Computed in row order (a division by ``d`` repeated over each group): the group layout needed a
    byte transposition back (16 strided row copies) that cost more than all the rest. nearest_int is
    ggml's own bit trick (exact for every input, no range check): the bits of ``q + 1.5*2^23`` hold
    ``0x400000 + l`` in their low 23 bits; clamped there, their low byte is ``l`` modulo 256.
    """
    g = d.size
    dz = d == 0
    any_dz = bool(dz.any())
    dd = np.where(dz, _F1, d) if any_dz else d
    # a contiguous divisor: broadcasting d over 16-value inner loops costs more than repeating it
    divisor = np.repeat(dd, 16).reshape(g, 16)
    q = np.divide(np.ascontiguousarray(rows).reshape(g, 16), divisor, out=scratch("q3k.q", (g, 16)))
    q += _MAGIC
    qi = q.view(np.int32)
    qi &= np.int32(0x007FFFFF)
    np.clip(qi, _L3_LO, _L3_HI, out=qi)
    L = scratch("q3k.L", (g, 16), np.uint8)
    np.copyto(L, qi, casting="unsafe")  # the low byte: l mod 256
    L += np.uint8(4)
    if any_dz:
        np.copyto(L, keep().T, where=dz[:, None], casting="unsafe")
    return L.reshape(-1, QK_K)


def _q3_pack(n_super: int, L: U8Array, scale_bytes: U8Array, d: F32Array, out: U8Array) -> U8Array:
    """L in [0, 8): high bit to hmask (bit j/32 of byte j%32), low 2 bits to qs; written with the
    scales and ``d`` into ``out`` (S, 110).

    Byte-parallel on uint64 words: every shift below stays inside its byte once masked. The words are
    first regrouped by j/32 (one small copy) so that every step reads whole contiguous planes instead
    of strided slices.
    """
    v = L.view(np.uint64).reshape(n_super, 8, 4)  # [s, j/32, (j%32)/8], 8 levels per word
    vt = np.ascontiguousarray(v.transpose(1, 0, 2))  # [j/32, s, (j%32)/8]
    hb = np.right_shift(vt, np.uint64(2))
    hb &= _LSB
    hm = hb[7].copy()  # Horner over the 8 bit planes: hm = sum of hb[b] << b
    for b in range(6, -1, -1):
        hm += hm
        hm |= hb[b]
    lo = np.bitwise_and(vt, _LOW2, out=vt).reshape(2, 4, n_super, 4)  # [j/128, (j%128)/32, s, .]
    qs = lo[:, 3] << np.uint64(6)
    qs |= lo[:, 2] << np.uint64(4)
    qs |= lo[:, 1] << np.uint64(2)
    qs |= lo[:, 0]
    # whole uint64 planes above; the strided byte rows of ``out`` (110 apart) are written once each
    out[:, :32] = hm.view(np.uint8).reshape(n_super, 32)
    out[:, 32:96].reshape(n_super, 2, 32)[...] = qs.view(np.uint8).reshape(2, n_super, 32).transpose(1, 0, 2)
    out[:, 96:108] = scale_bytes
    out[:, 108:110] = _fp16_bytes(d)
    return out


def quantize_q3_k(rows: F32Array, imatrix: F32Array | None, out: U8Array | None = None) -> U8Array:
    """Q3_K rows, written into ``out`` (the caller's ``(n_rows, row_bytes)`` rows) when given."""
    with np.errstate(all="ignore"):  # as quiet_fp
        return _q3_k(rows, imatrix, out)


def _q3_k(rows: F32Array, imatrix: F32Array | None, dest: U8Array | None) -> U8Array:
    n_rows = rows.shape[0]
    n_super = rows.size // QK_K
    x16 = _groups16(rows)
    if imatrix is None:
        # quantize_row_q3_K_ref
        scales, l0 = make_q3_quants(x16, 4, rows.reshape(-1, 16), offset=False)

        def keep() -> F32Array:  # the search's levels, needed only where a final scale is 0
            return l0 + np.float32(4)

        ls, d = _q3_super_scale(scales, n_super)
    else:
        # quantize_row_q3_K_impl
        xs = scratch("q3k.sq", (QK_K, n_super))
        src = rows.reshape(-1, QK_K)
        for b in range(0, n_super, _SUPER_TILE):
            np.copyto(xs[:, b : b + _SUPER_TILE], src[b : b + _SUPER_TILE].T)
        sumx2 = seq_sum(np.multiply(xs, xs, out=xs))
        sigma2 = np.float32(2) * sumx2 / np.float32(QK_K)
        # weight = qw * sqrtf(sigma2 + x*x), in place, with contiguous operands (the broadcasts of
        # sigma2 over each super-block's 16 groups and of the imatrix over the rows are slower)
        weight = np.multiply(x16, x16, out=scratch("q3k.w", x16.shape))
        weight += np.repeat(sigma2, 16)
        np.sqrt(weight, out=weight)
        w3 = weight.reshape(16, n_rows, -1)  # a view
        w3 *= imatrix.reshape(-1, 16).T[:, None, :]  # broadcast over the rows: no fresh np.tile array
        sw = seq_sum(weight)
        scales, iscale0, zero0, finite = make_qx_quants_iscale(x16, weight, 4)

        def keep() -> F32Array:  # the search's levels, needed only where a final scale is 0
            v = np.multiply(x16, iscale0)
            clamped_levels(v, np.float32(-4), np.float32(3), finite)
            v += np.float32(4)
            np.copyto(v, _F0, where=zero0)
            return v

        d, Ls = make_qx_quants(
            np.ascontiguousarray(scales.reshape(n_super, 16).T),
            32,
            np.ascontiguousarray(sw.reshape(n_super, 16).T),
        )
        ls = np.ascontiguousarray(Ls.T).astype(np.uint8)
    scale_bytes = _q3_scale_bytes(ls)
    sc_dec = ls.astype(np.float32)  # 0..63
    sc_dec -= np.float32(32)
    dq = _fp16r(d)[:, None] * sc_dec
    L = _q3_levels(rows, dq.reshape(-1), keep)
    out = _q3_pack(n_super, L, scale_bytes, d, out_blocks(dest, n_super, 110))
    return finish_blocks(out, n_rows, dest)


# ---------------------------------------------------------------------------------------------- Q4_K / Q5_K


def _k4_scale_bytes(ls: I32Array, lm: I32Array) -> U8Array:
    """The 12-byte scales/mins field of Q4_K/Q5_K, written exactly as ggml's uint8_t stores do."""
    out = np.zeros((ls.shape[0], 12), dtype=np.int32)
    out[:, 0:4] = ls[:, :4]
    out[:, 4:8] = lm[:, :4]
    out[:, 8:12] = (ls[:, 4:] & 0xF) | ((lm[:, 4:] & 0xF) << 4)
    out[:, 0:4] |= (ls[:, 4:] >> 4) << 6
    out[:, 4:8] |= (lm[:, 4:] >> 4) << 6
    return (out & 0xFF).astype(np.uint8)


def _k4_scale_decode(q: U8Array) -> tuple[I32Array, I32Array]:
    """get_scale_min_k4 for j = 0..7."""
    b = q.astype(np.int32)
    sc = np.empty((q.shape[0], 8), dtype=np.int32)
    mn = np.empty((q.shape[0], 8), dtype=np.int32)
    sc[:, :4] = b[:, 0:4] & 63
    mn[:, :4] = b[:, 4:8] & 63
    sc[:, 4:] = (b[:, 8:12] & 0xF) | ((b[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (b[:, 8:12] >> 4) | ((b[:, 4:8] >> 6) << 4)
    return sc, mn


def _q45_k(
    rows: F32Array, imatrix: F32Array | None, nmax: int
) -> tuple[int, U8Array, F32Array, F32Array, U8Array]:
    """Shared Q4_K/Q5_K body up to the final levels: (n_super, scale bytes, d, dmin, L (S, 256))."""
    n_rows = rows.shape[0]
    n_super = rows.size // QK_K
    x32 = _groups(rows, 32, "q45.x32")
    if imatrix is None:
        # quantize_row_q{4,5}_K_ref
        sq = np.multiply(x32, x32, out=scratch("q45.w", x32.shape))
        av_x = np.sqrt(seq_sum(sq) / np.float32(32))
        weights = np.abs(x32, out=sq)
        weights += av_x  # av_x + fabsf(x[i])
        if nmax == 15:
            scales, mins, L0 = make_qkx2_quants(x32, weights, 15, -1.0, 0.1, 20, False)
        else:
            scales, mins, L0 = make_qkx2_quants(x32, weights, 31, -0.5, 0.1, 15, False)
        sc = scales.reshape(n_super, 8)
        mn = mins.reshape(n_super, 8)
        max_scale = _max_pos_rows(sc)
        max_min = _max_pos_rows(mn)
        inv_scale = np.where(max_scale > 0, np.float32(63) / max_scale, np.float32(0))
        inv_min = np.where(max_min > 0, np.float32(63) / max_min, np.float32(0))
        ls = np.minimum(_nint(inv_scale[:, None] * sc) & 0xFF, 63)
        lm = np.minimum(_nint(inv_min[:, None] * mn) & 0xFF, 63)
        d = max_scale / np.float32(63)
        dmin = max_min / np.float32(63)
    else:
        # quantize_row_q{4,5}_K_impl
        sigma2 = np.float32(2) * _superblock_sumsq(rows) / np.float32(QK_K)
        qw = _weights_groups(imatrix, n_rows, 32)
        weights = qw * np.sqrt(np.repeat(sigma2, 8) + x32 * x32)
        sw = seq_sum(weights)
        scales, mins, L0 = make_qkx3_quants(x32, weights, nmax, -0.9, 0.05, 36, False)
        d, dmin, ls, lm = _qp_scales_mins(scales, mins, sw, n_super, 63)
        if nmax == 31:
            ls = np.minimum(ls, 63)
            lm = np.minimum(lm, 63)
    scale_bytes = _k4_scale_bytes(ls, lm)
    sc_dec, mn_dec = _k4_scale_decode(scale_bytes)
    dq = _fp16r(d)[:, None] * sc_dec.astype(np.float32)
    dmq = _fp16r(dmin)[:, None] * mn_dec.astype(np.float32)
    L = _requant(rows, dq.reshape(-1), 0, nmax, L0, dmq.reshape(-1))
    return n_super, scale_bytes, d, dmin, L


@quiet_fp
def quantize_q4_k(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    n_super, scale_bytes, d, dmin, L = _q45_k(rows, imatrix, 15)
    Lr = L.reshape(n_super, 4, 2, 32)
    out = np.empty((n_super, 144), dtype=np.uint8)
    out[:, 0:2] = _fp16_bytes(d)
    out[:, 2:4] = _fp16_bytes(dmin)
    out[:, 4:16] = scale_bytes
    out[:, 16:144] = (Lr[:, :, 0] | (Lr[:, :, 1] << 4)).reshape(n_super, 128)
    return out.reshape(rows.shape[0], -1)


@quiet_fp
def quantize_q5_k(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    n_super, scale_bytes, d, dmin, L = _q45_k(rows, imatrix, 31)
    Lr = L.reshape(n_super, 4, 2, 32)
    # bit 2n+h of qh[j] is the high bit of L[64n + 32h + j]
    qh = _pack_bits((L >> 4).reshape(n_super, 8, 32))
    lo = Lr & 0xF
    out = np.empty((n_super, 176), dtype=np.uint8)
    out[:, 0:2] = _fp16_bytes(d)
    out[:, 2:4] = _fp16_bytes(dmin)
    out[:, 4:16] = scale_bytes
    out[:, 16:48] = qh
    out[:, 48:176] = (lo[:, :, 0] | (lo[:, :, 1] << 4)).reshape(n_super, 128)
    return out.reshape(rows.shape[0], -1)


# ----------------------------------------------------------------------------------------------------- Q2_K


@quiet_fp
def quantize_q2_k(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    n_rows = rows.shape[0]
    n_super = rows.size // QK_K
    x16 = _groups(rows, 16, "q2.x16")
    f15 = np.float32(15)
    if imatrix is None:
        # quantize_row_q2_K_ref
        scales, mins, L0 = make_qkx2_quants(x16, np.abs(x16), 3, -0.5, 0.1, 15, True)
        sc = scales.reshape(n_super, 16)
        mn = mins.reshape(n_super, 16)
        max_scale = _max_pos_rows(sc)
        max_min = _max_pos_rows(mn)
        has_s = max_scale > 0
        has_m = max_min > 0
        ls = _nint((f15 / np.where(has_s, max_scale, f15))[:, None] * sc)
        lm = _nint((f15 / np.where(has_m, max_min, f15))[:, None] * mn)
        ls = np.where(has_s[:, None], ls, 0)
        lm = np.where(has_m[:, None], lm, 0)
        d = np.where(has_s, max_scale / f15, np.float32(0))
        dmin = np.where(has_m, max_min / f15, np.float32(0))
    else:
        # quantize_row_q2_K_impl
        sigma2 = _superblock_sumsq(rows) / np.float32(QK_K)
        qw = _weights_groups(imatrix, n_rows, 16)
        weights = qw * np.sqrt(np.repeat(sigma2, 16) + x16 * x16)
        sw = seq_sum(weights)
        scales, mins, L0 = make_qkx3_quants(x16, weights, 3, -0.9, 0.05, 36, False)
        d, dmin, ls, lm = _qp_scales_mins(scales, mins, sw, n_super, 15)
    scale_bytes = ((ls & 0xFF) | (lm << 4)) & 0xFF
    dq = _fp16r(d)[:, None] * (scale_bytes & 0xF).astype(np.float32)
    dmq = _fp16r(dmin)[:, None] * (scale_bytes >> 4).astype(np.float32)
    L = _requant(rows, dq.reshape(-1), 0, 3, L0, dmq.reshape(-1))
    out = np.empty((n_super, 84), dtype=np.uint8)
    out[:, :16] = scale_bytes
    out[:, 16:80] = _pack_2bit(L)
    out[:, 80:82] = _fp16_bytes(d)
    out[:, 82:84] = _fp16_bytes(dmin)
    return out.reshape(n_rows, -1)
