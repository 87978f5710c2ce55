"""IQ1_S / IQ1_M quantizers: round-trip error, agreement with a scalar port of ggml's C on tie-heavy
inputs, the exactness shortcuts (contender band of the split search, full replay, approximate
neighbour distances), and hypothesis properties (never crash, right byte size)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gguf_recipe.quants import QuantizationError, iq1, quantize
from gguf_recipe.quants._iq1_tables import KGRID_IQ1S, iq1_tables
from gguf_recipe.quants._numeric import nearest_int

T = GGMLQuantizationType
f = np.float32
FLT_MAX = f(np.finfo(np.float32).max)
XP = (f(-0.875), f(0.125), f(1.125))
XM = (f(-1.125), f(-0.125), f(0.875))


def _gaussian(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


def _rel_rmse(x: np.ndarray, q: np.ndarray, qtype: GGMLQuantizationType) -> float:
    y = dequantize(q, qtype).reshape(x.shape)
    return float(np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2)))


# ------------------------------------------------------------------------------------------------
# basic behaviour


def test_grid_matches_gguf_py_dequantization_grid() -> None:
    from gguf import quants

    codes = np.frombuffer(bytes.fromhex(quants.IQ1_S.grid_hex.decode()), dtype="<u2")
    assert np.array_equal(codes, np.array(KGRID_IQ1S, dtype=np.uint16))
    tables = iq1_tables()
    assert tables.grid_size == 2048
    assert int(tables.nb_count.min()) >= 1


@pytest.mark.parametrize(
    ("qtype", "with_im", "limit"),
    [(T.IQ1_S, True, 0.6), (T.IQ1_M, False, 0.65), (T.IQ1_M, True, 0.6)],
    ids=["IQ1_S-im", "IQ1_M", "IQ1_M-im"],
)
def test_dequantized_error_is_small(qtype: GGMLQuantizationType, with_im: bool, limit: float) -> None:
    x = _gaussian(8, 1024)
    im = np.random.default_rng(1).exponential(size=1024).astype(np.float32) if with_im else None
    assert _rel_rmse(x, quantize(x, qtype, im), qtype) <= limit


def test_iq1_m_imatrix_lowers_the_weighted_error() -> None:
    x = _gaussian(16, 1024, seed=1)
    im = np.random.default_rng(2).exponential(size=1024).astype(np.float32) ** 3
    y_plain = dequantize(quantize(x, T.IQ1_M), T.IQ1_M).reshape(x.shape)
    y_im = dequantize(quantize(x, T.IQ1_M, im), T.IQ1_M).reshape(x.shape)
    assert float(np.sum(im * (y_im - x) ** 2)) < float(np.sum(im * (y_plain - x) ** 2))


def test_iq1_s_requires_an_imatrix() -> None:
    x = _gaussian(1, 256)
    with pytest.raises(QuantizationError, match="imatrix"):
        quantize(x, T.IQ1_S)
    with pytest.raises(ValueError):
        iq1.quantize_iq1_s(x, None)


# ------------------------------------------------------------------------------------------------
# scalar port of ggml's quantize_row_iq1_{s,m}_impl (float32 scalars, C order; slow, tiny inputs only)


def _fp16_bits(v: np.float32) -> int:
    with np.errstate(over="ignore"):
        return int(np.array([v], dtype=np.float32).astype(np.float16).view(np.uint16)[0])


def _nint(v: np.float32) -> int:
    return int(nearest_int(np.array([v], dtype=np.float32))[0])


def _neighbour2(u: int, xv: list[Any], wv: list[Any], scale: np.float32, xg: tuple[Any, ...]) -> int:
    tb = iq1_tables()
    r = tb.nb_row[u]
    best, gi = FLT_MAX, -1
    for g in tb.nb_flat[tb.nb_start[r] : tb.nb_start[r] + tb.nb_count[r]]:
        lv = tb.grid_levels[g]
        d2 = f(0)
        for i in range(8):
            diff = f(f(scale * xg[lv[i]]) - xv[i])
            d2 = f(d2 + f(f(wv[i] * diff) * diff))
        if d2 < best:
            best, gi = d2, int(g)
    return gi


def _snap(
    lv_all: list[Any], xb: list[Any], w: list[Any], scale: np.float32, xxs: list[Any]
) -> tuple[list[Any], bool]:
    tb = iq1_tables()
    index, allon = [], True
    for k, xx in enumerate(xxs):
        u = sum(lv_all[8 * k + j] << (2 * j) for j in range(8))
        gi = int(tb.kmap[u])
        if gi < 0:
            allon = False
            gi = _neighbour2(u, xb[8 * k : 8 * k + 8], w[8 * k : 8 * k + 8], scale, xx)
        index.append(gi)
    return index, allon


def _refit(index: list[Any], xb: list[Any], w: list[Any], xxs: list[Any]) -> tuple[np.float32, np.float32]:
    tb = iq1_tables()
    a, b = f(0), f(0)
    for k, xx in enumerate(xxs):
        lv = tb.grid_levels[index[k]]
        for j in range(8):
            wq = f(w[8 * k + j] * xx[lv[j]])
            a = f(a + f(wq * xb[8 * k + j]))
            b = f(b + f(wq * xx[lv[j]]))
    return a, b


def _levels(n: int, idx: list[Any], b1: int, b2: int) -> list[Any]:
    lv = [0] * n
    for j in range(n):
        lv[idx[j]] = 0 if j < b1 else (1 if j < b2 else 2)
    return lv


def _ref_iq1_s(x: np.ndarray, qw: np.ndarray) -> bytes:
    with np.errstate(all="ignore"):
        return _ref_iq1_s_impl(x, qw)


def _ref_iq1_m(x: np.ndarray, qw: np.ndarray | None) -> bytes:
    with np.errstate(all="ignore"):
        return _ref_iq1_m_impl(x, qw)


def _snap_refit(
    lv: list[int], xb: list[Any], w: list[Any], scale: np.float32, xx: list[Any]
) -> tuple[list[int], np.float32]:
    """Snap the groups to the grid; refit the scale when one went off the grid (both IQ1 types)."""
    index, allon = _snap(lv, xb, w, scale, xx)
    if not allon:
        a, b = _refit(index, xb, w, xx)
        if a > 0 and b > 0:
            scale = f(a / b)
    return index, scale


def _ref_iq1_s_impl(x: np.ndarray, qw: np.ndarray) -> bytes:
    out = bytearray()
    for ibl in range(len(x) // 256):
        xbl = [f(v) for v in x[256 * ibl : 256 * ibl + 256]]
        sumx2 = f(0)
        for v in xbl:
            sumx2 = f(sumx2 + f(v * v))
        sigma2 = f(f(2 * sumx2) / f(256))
        scales, shifts, qs, qh, max_scale = [f(0)] * 8, [1] * 8, [0] * 32, [0] * 8, f(0)
        for ib in range(8):
            xb = xbl[32 * ib : 32 * ib + 32]
            qwb = qw[256 * ibl + 32 * ib : 256 * ibl + 32 * ib + 32]
            w = [f(qwb[i] * np.sqrt(f(sigma2 + f(xb[i] * xb[i])))) for i in range(32)]
            mx = max(abs(v) for v in xb)
            if mx < f(1e-12):
                continue
            idx = sorted(range(32), key=lambda j: (float(xb[j]), j))
            sx, sw = [f(0)] * 33, [f(0)] * 33
            for j in range(32):
                sx[j + 1] = f(sx[j] + f(w[idx[j]] * xb[idx[j]]))
                sw[j + 1] = f(sw[j] + w[idx[j]])
            best, scale, b1, b2, bsh = -FLT_MAX, mx, -1, -1, 0
            for i1 in range(33):
                for i2 in range(i1, 33):
                    for sh, vx in ((1, XP), (-1, XM)):
                        qx = f(
                            f(f(sx[i1] * vx[0]) + f(f(sx[i2] - sx[i1]) * vx[1]))
                            + f(f(sx[32] - sx[i2]) * vx[2])
                        )
                        q2 = f(
                            f(f(f(sw[i1] * vx[0]) * vx[0]) + f(f(f(sw[i2] - sw[i1]) * vx[1]) * vx[1]))
                            + f(f(f(sw[32] - sw[i2]) * vx[2]) * vx[2])
                        )
                        if q2 > 0 and f(qx * qx) > f(best * q2):
                            scale = f(qx / q2)
                            best, b1, b2, bsh = f(scale * qx), i1, i2, sh
            if b1 < 0:
                continue
            lv = _levels(32, idx, b1, b2)
            if scale < 0:
                lv, scale, bsh = [2 - v for v in lv], -scale, -bsh
            xx = XP if bsh == 1 else XM
            index, scale = _snap_refit(lv, xb, w, scale, [xx] * 4)
            for k in range(4):
                qs[4 * ib + k] = index[k] & 255
                qh[ib] |= (index[k] >> 8) << (3 * k)
            scales[ib], shifts[ib] = scale, bsh
            max_scale = max_scale if max_scale > scale else scale
        dbits = 0
        if max_scale:
            d = f(max_scale / f(15))
            dbits = _fp16_bits(f(d * f(1.125)))
            idd = f(f(1) / d)
            for ib in range(8):
                lsc = max(0, min(7, _nint(f(f(0.5) * f(f(idd * scales[ib]) - f(1))))))
                qh[ib] |= (lsc | (8 if shifts[ib] == -1 else 0)) << 12
        out += dbits.to_bytes(2, "little") + bytes(qs) + b"".join(v.to_bytes(2, "little") for v in qh)
    return bytes(out)


def _ref_iq1_m_impl(x: np.ndarray, qw: np.ndarray | None) -> bytes:
    out = bytearray()
    masks = (0x00, 0x80, 0x08, 0x88)
    cp1, cp2 = f(f(XP[0] * XP[0]) - f(XP[1] * XP[1])), f(f(XP[1] * XP[1]) - f(XP[2] * XP[2]))
    cm1, cm2 = f(f(XM[0] * XM[0]) - f(XM[1] * XM[1])), f(f(XM[1] * XM[1]) - f(XM[2] * XM[2]))

    def xxs(k4: int) -> list[Any]:
        return [XP if k4 < 2 else XM, XP if k4 % 2 == 0 else XM]

    for ibl in range(len(x) // 256):
        xbl = [f(v) for v in x[256 * ibl : 256 * ibl + 256]]
        sumx2 = f(0)
        for v in xbl:
            sumx2 = f(sumx2 + f(v * v))
        sigma2 = f(f(2 * sumx2) / f(256))

        def wts(ib: int, xbl: list[Any] = xbl, sigma2: np.float32 = sigma2, ibl: int = ibl) -> list[Any]:
            xb = xbl[16 * ib : 16 * ib + 16]
            if qw is None:
                return [f(v * v) for v in xb]
            q = qw[256 * ibl + 16 * ib : 256 * ibl + 16 * ib + 16]
            return [f(q[i] * np.sqrt(f(sigma2 + f(xb[i] * xb[i])))) for i in range(16)]

        scales, shifts, qs, qh, sc, max_scale = [f(0)] * 16, [0] * 16, [0] * 32, [0] * 16, [0] * 4, f(0)
        for ib in range(16):
            xb = xbl[16 * ib : 16 * ib + 16]
            w = wts(ib)
            mx = max(abs(v) for v in xb)
            if mx < f(1e-7):
                continue
            idx = sorted(range(16), key=lambda j: (float(xb[j]), j))
            px = [[f(0)] * 17, [f(0)] * 17]
            pw = [[f(0)] * 17, [f(0)] * 17]
            for j in range(16):
                i = idx[j]
                h = 0 if i < 8 else 1
                px[h][j + 1], px[1 - h][j + 1] = f(px[h][j] + f(w[i] * xb[i])), px[1 - h][j]
                pw[h][j + 1], pw[1 - h][j + 1] = f(pw[h][j] + w[i]), pw[1 - h][j]
            best, scale, b1, b2, bk = -FLT_MAX, mx, -1, -1, -1
            for i1 in range(17):
                for i2 in range(i1, 17):
                    qp, qm, rp, rm = [], [], [], []
                    for h in range(2):
                        s = f(px[h][i1] + px[h][i2])
                        qp.append(f(f(px[h][16] * XP[2]) - s))
                        qm.append(f(f(px[h][16] * XM[2]) - s))
                        rp.append(
                            f(f(f(f(pw[h][16] * XP[2]) * XP[2]) + f(pw[h][i1] * cp1)) + f(pw[h][i2] * cp2))
                        )
                        rm.append(
                            f(f(f(f(pw[h][16] * XM[2]) * XM[2]) + f(pw[h][i1] * cm1)) + f(pw[h][i2] * cm2))
                        )
                    cands = [
                        (f(qp[0] + qp[1]), f(rp[0] + rp[1])),
                        (f(qp[0] + qm[1]), f(rp[0] + rm[1])),
                        (f(qm[0] + qp[1]), f(rm[0] + rp[1])),
                        (f(qm[0] + qm[1]), f(rm[0] + rm[1])),
                    ]
                    for k4, (qx, q2) in enumerate(cands):
                        if q2 > 0 and f(qx * qx) > f(best * q2):
                            scale = f(qx / q2)
                            best, b1, b2, bk = f(scale * qx), i1, i2, k4
            if b1 < 0:
                continue
            lv = _levels(16, idx, b1, b2)
            if scale < 0:
                lv, scale, bk = [2 - v for v in lv], -scale, 3 - bk
            index, scale = _snap_refit(lv, xb, w, scale, xxs(bk))
            qs[2 * ib], qs[2 * ib + 1] = index[0] & 255, index[1] & 255
            qh[ib] = (index[0] >> 8) | ((index[1] >> 8) << 4)
            scales[ib], shifts[ib] = scale, bk
            max_scale = max_scale if max_scale > scale else scale
        if max_scale:
            tb = iq1_tables()
            d = f(max_scale / f(15))
            idd = f(f(1) / d)
            a, b = f(0), f(0)
            for ib in range(16):
                lsc = max(0, min(7, _nint(f(f(0.5) * f(f(idd * scales[ib]) - f(1))))))
                sc[ib // 4] |= lsc << (3 * (ib % 4))
                qh[ib] |= masks[shifts[ib]]
                xb = xbl[16 * ib : 16 * ib + 16]
                w = wts(ib)
                for k, xx in enumerate(xxs(shifts[ib])):
                    lv8 = tb.grid_levels[qs[2 * ib + k] + ((qh[ib] << (8 - 4 * k)) & 0x700)]
                    for j in range(8):
                        q = f(xx[lv8[j]] * f(2 * lsc + 1))
                        wq = f(w[8 * k + j] * q)
                        a, b = f(a + f(wq * xb[8 * k + j])), f(b + f(wq * q))
            if b > 0:
                d = f(a / b)
            s16 = _fp16_bits(f(d * f(1.1125)))
            for k in range(4):
                sc[k] |= ((s16 >> (4 * k)) & 0xF) << 12
        out += bytes(qs) + bytes(qh) + b"".join(v.to_bytes(2, "little") for v in sc)
    return bytes(out)


def _adversarial(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 256
    if kind == "int_grid":
        x = rng.integers(-2, 3, n).astype(np.float64)
    elif kind == "sparse_signed_zeros":
        x = rng.standard_normal(n) * (rng.random(n) < 0.3)  # about half of the zeros are -0.0
    elif kind == "repeated":
        x = np.repeat(rng.standard_normal(n // 8), 8)
    elif kind == "few_values":
        x = rng.choice([-1.0, 1.0, 0.5, -0.5, 0.0, -0.0], n)
    else:  # "mixed_scales": sub-blocks spanning many magnitudes
        x = rng.standard_normal(n) * np.repeat(10.0 ** rng.uniform(-9, 3, n // 16), 16)
    im = (np.exp(rng.standard_normal(n)) * (rng.random(n) < 0.8)).astype(np.float32)
    return x.astype(np.float32), im


KINDS = ["int_grid", "sparse_signed_zeros", "repeated", "few_values", "mixed_scales"]


@pytest.mark.parametrize("kind", KINDS)
def test_iq1_s_matches_scalar_port(kind: str) -> None:
    x, im = _adversarial(kind, 11)
    assert iq1.quantize_iq1_s(x[None], im).tobytes() == _ref_iq1_s(x, im)


@pytest.mark.parametrize("with_im", [False, True], ids=["no-im", "im"])
@pytest.mark.parametrize("kind", KINDS)
def test_iq1_m_matches_scalar_port(kind: str, with_im: bool) -> None:
    x, im = _adversarial(kind, 12)
    imm = im if with_im else None
    assert iq1.quantize_iq1_m(x[None], imm).tobytes() == _ref_iq1_m(x, imm)


def test_tiny_weights_take_the_full_replay_and_match_scalar_port() -> None:
    x, _ = _adversarial("int_grid", 13)
    im = np.full(256, 1e-30, dtype=np.float32)  # products underflow: every candidate is replayed
    assert iq1.quantize_iq1_s(x[None], im).tobytes() == _ref_iq1_s(x, im)


@pytest.mark.parametrize("seed", range(4))
def test_negative_importances_match_scalar_port(seed: int) -> None:
    """Negative weights make some terms of the neighbour distances negative: cancellation, so those
    groups skip the approximate ranking and compare every neighbour's exact distance."""
    rng = np.random.default_rng(40 + seed)
    x = (rng.standard_normal(256) * 10.0 ** rng.uniform(-2, 2)).astype(np.float32)
    im = (np.exp(rng.standard_normal(256)) * np.where(rng.random(256) < 0.4, -1.0, 1.0)).astype(np.float32)
    assert iq1.quantize_iq1_s(x[None], im).tobytes() == _ref_iq1_s(x, im)
    assert iq1.quantize_iq1_m(x[None], im).tobytes() == _ref_iq1_m(x, im)


@pytest.mark.parametrize("x_kind", ["ones", "gauss"])
def test_zero_imatrix_spans_match_scalar_port(x_kind: str) -> None:
    x = np.ones(256, dtype=np.float32) if x_kind == "ones" else _gaussian(1, 256, seed=14)[0]
    im = np.exp(_gaussian(1, 256, seed=15)[0]).astype(np.float32)
    im[:32] = 0.0  # one IQ1_S sub-block without weight
    im[64:80] = -0.0  # one IQ1_M sub-block, signed zeros
    im[200:203] = 0.0
    assert iq1.quantize_iq1_s(x[None], im).tobytes() == _ref_iq1_s(x, im)
    assert iq1.quantize_iq1_m(x[None], im).tobytes() == _ref_iq1_m(x, im)
    zero = np.zeros(256, dtype=np.float32)
    assert iq1.quantize_iq1_s(x[None], zero).tobytes() == _ref_iq1_s(x, zero)
    assert iq1.quantize_iq1_m(x[None], zero).tobytes() == _ref_iq1_m(x, zero)


# ------------------------------------------------------------------------------------------------
# the contender shortcut must give the same bytes as replaying ggml's whole scan


def _tie_heavy(rows: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(21)
    x = rng.integers(-3, 4, (rows, 512)).astype(np.float32)
    x[1] = rng.standard_normal(512) * (rng.random(512) < 0.3)
    x[2] = _gaussian(1, 512, seed=3)[0]
    im = (rng.exponential(size=512) * (rng.random(512) < 0.9)).astype(np.float32)
    return x, im


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, im: iq1.quantize_iq1_s(x, im),
        lambda x, im: iq1.quantize_iq1_m(x, im),
        lambda x, im: iq1.quantize_iq1_m(x, None),
    ],
    ids=["IQ1_S", "IQ1_M-im", "IQ1_M"],
)
def test_shortcut_equals_full_replay(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    x, im = _tie_heavy()
    fast = fn(x, im)
    # every band is ambiguous: walks all eps steps, then replays everything
    monkeypatch.setattr(iq1, "_BAND", 0.99)
    monkeypatch.setattr(iq1, "_BAND_S", 0.99)
    monkeypatch.setattr(iq1, "_BAND_M", 0.99)
    assert np.array_equal(fn(x, im), fast)
    monkeypatch.undo()
    # no block passes the range check: the whole scan is replayed for every block
    monkeypatch.setattr(iq1, "_safe", lambda m, *a: np.zeros(m.shape, dtype=bool))
    assert np.array_equal(fn(x, im), fast)
    monkeypatch.undo()
    # every neighbour gets the exact sequential distance
    monkeypatch.setattr(iq1, "_NB_TOL", np.float32(1e30))
    assert np.array_equal(fn(x, im), fast)


@pytest.mark.parametrize("band", [None, 0.99], ids=["first-step", "every-step"])
@pytest.mark.parametrize(
    "fn",
    [lambda x, im: iq1.quantize_iq1_s(x, im), lambda x, im: iq1.quantize_iq1_m(x, None)],
    ids=["IQ1_S", "IQ1_M"],
)
def test_contenders_come_in_scan_order(
    fn: Callable[[np.ndarray, np.ndarray], np.ndarray], band: float | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """_replay scans each block's candidates in the listed order: (block, candidate) ascending, also when
    the list mixes blocks settled at different eps steps and fully replayed ones (a stable sort by
    block relies on every step keeping the candidates ascending)."""
    x, im = _tie_heavy()
    x[3, :64] = np.float32(1e-38)  # sub-blocks that fail the range check: replayed in full
    x[3, 64:128] = 1.0  # equal scores: many candidates per block settle at the first step
    x[3, 128:192] = np.tile(np.array([-1.0, 1.0], dtype=np.float32), 32)
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    real = iq1._contenders

    def spy(*args: Any, **kwargs: Any) -> tuple[np.ndarray, np.ndarray]:
        blk, cand = real(*args, **kwargs)
        seen.append((blk, cand))
        return blk, cand

    monkeypatch.setattr(iq1, "_contenders", spy)
    if band is not None:
        monkeypatch.setattr(iq1, "_BAND_S", band)
        monkeypatch.setattr(iq1, "_BAND_M", band)
    fn(x, im)
    assert seen
    for blk, cand in seen:
        key = blk.astype(np.int64) * (int(cand.max()) + 1) + cand
        assert np.all(np.diff(key) > 0)


def _replay_reference(
    blk: np.ndarray, qx: np.ndarray, q2: np.ndarray, nb: int
) -> tuple[np.ndarray, np.ndarray]:
    """ggml's scan, one candidate at a time in float32."""
    best = np.full(nb, -1, dtype=np.int64)
    scale = np.zeros(nb, dtype=np.float32)
    bsc = np.full(nb, -np.finfo(np.float32).max, dtype=np.float32)
    with np.errstate(all="ignore"):
        for i in range(blk.size):
            b = blk[i]
            if q2[i] > 0 and qx[i] * qx[i] > bsc[b] * q2[i]:
                scale[b] = qx[i] / q2[i]
                bsc[b] = scale[b] * qx[i]
                best[b] = i
    return best, scale


@pytest.mark.parametrize("tail", [(0, 0), (4, 512), (10**6, 10**9)], ids=["arrays", "default", "scalars"])
def test_replay_matches_the_sequential_scan(tail: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    """_replay (array rounds, then a scalar tail for a few long lists) is ggml's sequential scan: lists of
    1 to 95 candidates, exact ties, NaN, zero and negative sumq2, and scores a few ulps apart (where
    the float32 rounding of best_score*sumq2 decides)."""
    monkeypatch.setattr(iq1, "_TAIL_BLOCKS", tail[0])
    monkeypatch.setattr(iq1, "_TAIL_STEPS", tail[1])
    rng = np.random.default_rng(7)
    nb = 40
    count = rng.integers(1, 6, nb)
    count[[3, 17, 30]] = [60, 41, 33]
    count[[5, 11, 25, 38]] = [95, 88, 80, 72]  # the longest lists: the scalar tail by default
    blk = np.repeat(np.arange(nb), count)
    n = blk.size
    # few distinct values: many exact ties between candidates of a block
    qx = rng.choice(np.array([-2.0, -1.0, 0.5, 1.0, 1.5, 3.0], dtype=np.float32), n)
    q2 = rng.choice(np.array([0.25, 1.0, 2.0, 3.0], dtype=np.float32), n)
    q2[rng.random(n) < 0.05] = 0
    q2[rng.random(n) < 0.05] = -1
    qx[rng.random(n) < 0.03] = np.nan
    near = np.isin(blk, [5, 11, 25, 38])
    ulps = rng.integers(-3, 4, (2, n)) * 2.0**-23
    qx[near] = (rng.uniform(1, 2, nb)[blk] * (1 + ulps[0]))[near]
    q2[near] = (rng.uniform(1, 2, nb)[blk] * (1 + ulps[1]))[near]
    best, scale = iq1._replay(blk, qx, q2, nb)
    ref_best, ref_scale = _replay_reference(blk, qx, q2, nb)
    assert np.array_equal(best, ref_best)
    assert np.array_equal(scale.view(np.int32), ref_scale.view(np.int32))


@pytest.mark.parametrize("with_im", [False, True], ids=["IQ1_M", "IQ1_M-im"])
def test_iq1m_tiles_of_the_candidate_loop_agree(with_im: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """The candidate loop over column tiles (a last, partial tile included) gives one tile's result."""
    x, im = _tie_heavy()
    one_tile = iq1.quantize_iq1_m(x, im if with_im else None)
    monkeypatch.setattr(iq1, "_TILE_M", 7)
    assert np.array_equal(iq1.quantize_iq1_m(x, im if with_im else None), one_tile)


@pytest.mark.parametrize("seed", range(3))
def test_iq1m_regrouped_q2_stays_within_its_bound(seed: int) -> None:
    """IQ1_M ranks with sumq2 = (cc[0] + cc[1]) + (dd[0] + dd[1]) instead of C's (cc[0] + dd[0]) +
    (cc[1] + dd[1]); its documented bound (< 245 ulp-units of 2^-24 relative, behind _BAND_M) checked
    over every split and shift of sub-blocks with badly balanced halves."""
    rng = np.random.default_rng(60 + seed)
    n = 4096
    x = rng.standard_normal((n, 16)).astype(np.float32)
    w = (np.exp(3 * rng.standard_normal((n, 16))) * (rng.random((n, 16)) < 0.8)).astype(np.float32)
    w[: n // 2, 8:] *= np.float32(1e-6)  # one half nearly weightless
    order = np.argsort(x, axis=1, kind="stable")
    half = order >= 8
    ws = np.take_along_axis(w, order, axis=1)
    pw = [np.zeros((n, 17), np.float32) for _ in range(2)]
    for j in range(16):
        for h in (0, 1):
            pw[h][:, j + 1] = pw[h][:, j] + np.where(half[:, j] == h, ws[:, j], np.float32(0))
    tws = [pw[h][:, 16] for h in (0, 1)]
    i1, i2 = np.triu_indices(17)
    worst = 0.0
    for v0 in (0, 1):
        for v1 in (0, 1):
            cc, dd = [], []
            for h, v in ((0, v0), (1, v1)):
                xs = XM if v else XP
                v2 = xs[2]
                c1 = f(xs[0] * xs[0] - xs[1] * xs[1])
                c2 = f(xs[1] * xs[1] - xs[2] * xs[2])
                cc.append(((tws[h] * v2) * v2)[:, None] + pw[h][:, i1] * c1)
                dd.append(pw[h][:, i2] * c2)
            c_q2 = (cc[0] + dd[0]) + (cc[1] + dd[1])
            ours = (cc[0] + cc[1]) + (dd[0] + dd[1])
            rel = np.abs(ours.astype(np.float64) - c_q2) / c_q2
            worst = max(worst, float(np.max(rel[c_q2 > 0])))
    assert worst < 245 * 2.0**-24


# ------------------------------------------------------------------------------------------------
# properties


@st.composite
def _inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    rows = draw(st.integers(1, 8))
    cols = 256 * draw(st.integers(1, 2))
    elems = st.floats(width=32, allow_nan=False, allow_infinity=False)
    x = draw(hnp.arrays(np.float32, (rows, cols), elements=elems))
    im = draw(hnp.arrays(np.float32, (cols,), elements=st.floats(0, 1e6, width=32, allow_nan=False)))
    return x, im


@settings(max_examples=25, deadline=None)
@given(_inputs(), st.booleans())
def test_never_crashes_and_has_the_right_size(data: tuple[np.ndarray, np.ndarray], use_im: bool) -> None:
    x, im = data
    for qtype in (T.IQ1_S, T.IQ1_M):
        imm = im if (use_im or qtype == T.IQ1_S) else None
        with np.errstate(all="ignore"):
            q = quantize(x, qtype, imm, threads=1)
        block, size = GGML_QUANT_SIZES[qtype]
        assert q.dtype == np.uint8
        assert q.shape == (x.shape[0], x.shape[1] // block * size)
