"""IQ4_NL and IQ4_XS: ggml's ``quantize_row_iq4_nl_impl`` (non-linear 4-bit codebook), vectorized.

Both types quantize 32-value blocks against the 16 fixed levels ``kvalues_iq4nl``; IQ4_NL keeps one fp16
scale per block, IQ4_XS groups 8 blocks under one fp16 super-scale with 6-bit block scales.

Layout used throughout: per-block quantities are "j-major", shape ``(32, n_blocks)`` (or
``(32, n_trials, n_blocks)``), so that C's sequential ``sum += ...`` over the 32 values of a block is a
reduction over axis 0 done in that order (see :func:`._numeric.seq_sum`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ._numeric import F32Array, U8Array, fp32_to_fp16_bits, nearest_int, quiet_fp, scratch, seq_sum

__all__ = ["KVALUES_IQ4NL", "best_index_iq4nl", "quantize_iq4_nl", "quantize_iq4_xs"]

IntpArray = npt.NDArray[np.intp]

KVALUES_IQ4NL = np.array(
    [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8
)
_KV_F32 = KVALUES_IQ4NL.astype(np.float32)

GROUP_MAX_EPS = np.float32(1e-15)
NTRY = 7

# best_index_int8(16, kvalues_iq4nl, x) picks the upper level when ``x - lo < hi - x`` is false. For the
# values that reach it (|x| <= ~135) both differences are exact in float32 near a midpoint, so the choice
# equals "x >= (lo + hi) / 2". All midpoints are multiples of 0.5, hence the index is a function of
# floor(2 * x): a lookup table over the integers [-232, 202].
_LUT_LO = -232
_LUT_HI = 202
_MID2 = _KV_F32[:-1].astype(np.int32) + _KV_F32[1:].astype(np.int32)  # 2 * midpoints
_LUT_INDEX = np.searchsorted(_MID2, np.arange(_LUT_LO, _LUT_HI + 1), side="right").astype(np.uint8)
_LUT_VALUE = _KV_F32[_LUT_INDEX]

# Blocks handled per inner step: keeps the (32, 16, blocks) work arrays inside the CPU cache.
_BLOCKS_PER_STEP = 512


def _lut_position(x2: F32Array, out: IntpArray | None = None) -> IntpArray:
    """Lookup-table position of ``floor(x2)`` (x2 = 2 * value), clamped; NaN maps to the top like C.

    ``x2`` is overwritten.
    """
    np.floor(x2, out=x2)
    x2 -= np.float32(_LUT_LO)
    # fmin first: it turns NaN into the upper bound, as best_index_int8 returns n-1 for NaN.
    np.fmin(x2, np.float32(_LUT_HI - _LUT_LO), out=x2)
    np.fmax(x2, np.float32(0.0), out=x2)
    if out is None:
        return x2.astype(np.intp)
    np.copyto(out, x2, casting="unsafe")
    return out


def best_index_iq4nl(x: F32Array) -> U8Array:
    """ggml's ``best_index_int8(16, kvalues_iq4nl, x)`` elementwise."""
    x = np.asarray(x, dtype=np.float32)
    x2 = np.multiply(x, np.float32(2.0), out=scratch("bi.x2", x.shape, np.float32))
    pos = _lut_position(x2, scratch("bi.pos", x.shape, np.intp))
    out: U8Array = _LUT_INDEX.take(pos)
    return out


def _iq4_block_scales(xt: F32Array, w: F32Array) -> F32Array:
    """The per-block part of ``quantize_row_iq4_nl_impl`` with ``ntry = 7``.

    ``xt``, ``w``: (32, n_blocks) values and weights. Returns (scale, max) per block; scale is 0 for
    blocks whose max |x| is below GROUP_MAX_EPS.
    """
    n = xt.shape[1]
    scales = np.empty(n, dtype=np.float32)
    for s in range(0, n, _BLOCKS_PER_STEP):
        scales[s : s + _BLOCKS_PER_STEP] = _iq4_block_scales_step(
            xt[:, s : s + _BLOCKS_PER_STEP], w[:, s : s + _BLOCKS_PER_STEP]
        )
    return scales


def _iq4_block_scales_step(xt: F32Array, w: F32Array) -> F32Array:
    nb = xt.shape[1]
    cols = np.arange(nb)
    imax = np.argmax(np.abs(xt), axis=0)  # first of equal |x|: C updates on strict '>'
    vmax = xt[imax, cols]
    valid = np.abs(vmax) >= GROUP_MAX_EPS
    vmax = np.where(valid, vmax, np.float32(1.0))

    # Trial 0: d = -max/values[0], id = 1/d. Trials 1..15: id = (itry + values[0]) / max.
    ids2 = np.empty((2 * NTRY + 2, nb), dtype=np.float32)
    d0 = -vmax / _KV_F32[0]
    ids2[0] = np.float32(1.0) / d0
    for t, itry in enumerate(range(-NTRY, NTRY + 1), start=1):
        ids2[t] = np.float32(itry + int(KVALUES_IQ4NL[0])) / vmax
    ids2 *= np.float32(2.0)  # exact; the lookup wants 2 * id * x

    shape = (32, 2 * NTRY + 2, nb)
    xt3 = xt[:, None, :]
    prod = np.multiply(xt3, ids2[None, :, :], out=scratch("st.prod", shape, np.float32))
    pos = _lut_position(prod, scratch("st.pos", shape, np.intp))
    q = np.take(_LUT_VALUE, pos, out=scratch("st.q", shape, np.float32))
    wq = np.multiply(w[:, None, :], q, out=scratch("st.wq", shape, np.float32))
    sumqx = seq_sum(np.multiply(wq, xt3, out=prod))
    sumq2 = seq_sum(np.multiply(wq, q, out=wq))

    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = np.where(sumq2[0] > 0, sumqx[0] / sumq2[0], np.float32(0.0))
        best = d * sumqx[0]
        for t in range(1, 2 * NTRY + 2):
            sx, s2 = sumqx[t], sumq2[t]
            take = (s2 > 0) & (sx * sx > best * s2)
            d = np.where(take, sx / s2, d)
            best = np.where(take, d * sx, best)
    out: F32Array = np.where(valid, d, np.float32(0.0))
    return out


def _weights(xt: F32Array, qw: F32Array | None, sigma2: F32Array) -> F32Array:
    if qw is None:
        out: F32Array = xt * xt
        return out
    return qw * np.sqrt(sigma2 + xt * xt)


def _pack_nibbles(L: U8Array) -> U8Array:
    """(n, 32*k) indices -> (n, 16*k) bytes: ``q[16i+j] = L[32i+j] | L[32i+16+j] << 4``."""
    n = L.shape[0]
    L4 = L.reshape(n, -1, 2, 16)
    out: U8Array = (L4[:, :, 0, :] | (L4[:, :, 1, :] << np.uint8(4))).reshape(n, -1)
    return out


def _imatrix_t(imatrix: F32Array, n_rows: int) -> F32Array:
    """Per-column weights laid out like the j-major blocks of ``n_rows`` rows: (32, n_rows * n_per_row/32)."""
    qw = np.asarray(imatrix, dtype=np.float32).reshape(-1, 32).T
    return np.ascontiguousarray(np.tile(qw, (1, n_rows)))


@quiet_fp  # inf/NaN propagate silently, as in C
def quantize_iq4_nl(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    n_rows = rows.shape[0]
    xb = rows.reshape(-1, 32)
    nb = xb.shape[0]
    xt = np.ascontiguousarray(xb.T)
    qw = None if imatrix is None else _imatrix_t(imatrix, n_rows)
    sigma2 = seq_sum(xt * xt) * np.float32(2.0 / 32)
    w = _weights(xt, qw, sigma2)
    scales = _iq4_block_scales(xt, w)

    with np.errstate(divide="ignore"):
        inv = np.where(scales != 0, np.float32(1.0) / scales, np.float32(0.0))
    L = best_index_iq4nl(xb * inv[:, None])

    out = np.empty((nb, 18), dtype=np.uint8)
    out[:, 0:2] = fp32_to_fp16_bits(scales).reshape(nb, 1).view(np.uint8)
    out[:, 2:] = _pack_nibbles(L)
    return out.reshape(n_rows, -1)


@quiet_fp  # inf/NaN propagate silently, as in C
def quantize_iq4_xs(rows: F32Array, imatrix: F32Array | None) -> U8Array:
    n_rows = rows.shape[0]
    nsb = rows.size // 256
    xb = rows.reshape(-1, 32)
    xt = np.ascontiguousarray(xb.T)
    qw = None if imatrix is None else _imatrix_t(imatrix, n_rows)
    sigma2 = seq_sum(np.ascontiguousarray(rows.reshape(nsb, 256).T) ** 2) * np.float32(2.0 / 256)
    w = _weights(xt, qw, np.repeat(sigma2, 8))
    scales = _iq4_block_scales(xt, w)
    scales = scales.reshape(nsb, 8)

    # max_scale: the scale of largest |.|, first one on ties (strict '>'), 0 when all are 0; a NaN
    # scale never wins C's comparison.
    abs_scales = np.abs(scales)
    abs_scales[np.isnan(abs_scales)] = -1.0
    iam = np.argmax(abs_scales, axis=1)
    max_scale = scales[np.arange(nsb), iam]
    max_scale = np.where(np.abs(max_scale) > 0, max_scale, np.float32(0.0))
    d = (-max_scale / np.float32(32.0)).astype(np.float32, copy=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_d = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0))
        ls = np.clip(nearest_int(inv_d[:, None] * scales), -32, 31)
        dl = d[:, None] * ls.astype(np.float32)
        # dl is NaN when d is inf; NaN is "true" in C's `dl ? 1/dl : 0`.
        idl = np.where(dl != 0, np.float32(1.0) / dl, np.float32(0.0))
    L = best_index_iq4nl(xb * idl.reshape(-1, 1))

    lu = (ls + 32).astype(np.uint16)
    scales_l = (lu[:, 0::2] & 0xF) | ((lu[:, 1::2] & 0xF) << 4)
    scales_h = np.bitwise_or.reduce((lu >> 4) << (2 * np.arange(8, dtype=np.uint16)), axis=1).astype(
        np.uint16
    )

    out = np.empty((nsb, 136), dtype=np.uint8)
    out[:, 0:2] = fp32_to_fp16_bits(d).reshape(nsb, 1).view(np.uint8)
    out[:, 2:4] = scales_h.astype("<u2").reshape(nsb, 1).view(np.uint8)
    out[:, 4:8] = scales_l.astype(np.uint8)
    out[:, 8:] = _pack_nibbles(L.reshape(nsb, 256))
    return out.reshape(n_rows, -1)
