"""IQ2_XXS / IQ2_XS / IQ2_S: grid tables, neighbour search, round-trip error and robustness.

Byte-exactness against ggml is covered by tests/quants/test_quant_oracle.py.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants
from gguf.quants import dequantize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gguf_recipe.quants import QuantizationError, quantize
from gguf_recipe.quants import iq2 as iq2_mod
from gguf_recipe.quants._iq1_tables import iq1_tables
from gguf_recipe.quants._iq2_tables import (
    KGRID_IQ2S,
    KGRID_IQ2XS,
    KGRID_IQ2XXS,
    KMAP_SIZE,
    KSIGNS_IQ2XS,
    build_grid_tables,
    iq2_tables,
    keven_signs,
)
from gguf_recipe.quants._numeric import nearest_int

TYPES = ["IQ2_XXS", "IQ2_XS", "IQ2_S"]
NEEDS_IMATRIX = {"IQ2_XXS", "IQ2_XS"}
ROW_BYTES_PER_256 = {"IQ2_XXS": 66, "IQ2_XS": 74, "IQ2_S": 82}
GRIDS = {"IQ2_XXS": (KGRID_IQ2XXS, 2), "IQ2_XS": (KGRID_IQ2XS, 2), "IQ2_S": (KGRID_IQ2S, 1)}


def reference_neighbours(grid_pos: list[list[int]], pos: list[int], nwant: int) -> list[int]:
    """Line-by-line port of the per-point part of ggml's iq2xs_init_impl / iq3xs_init_impl: indices of
    the grid points (positions ``grid_pos``) at the ``nwant`` smallest distances from ``pos``."""
    dist2 = []
    for j, gp in enumerate(grid_pos):
        dist2.append((sum((a - b) * (a - b) for a, b in zip(gp, pos, strict=True)), j))
    dist2.sort()
    out: list[int] = []
    d2, nhave = dist2[0][0], 1
    for d, j in dist2:
        if d > d2:
            if nhave == nwant:
                break
            d2 = d
            nhave += 1
        out.append(j)
    return out


def _positions(code: int) -> list[int]:
    return [2 * ((code >> 2 * k) & 3) + 1 for k in range(8)]


def _reference_neighbours(grid: Iterable[int], nwant: int, code: int) -> list[int]:
    return reference_neighbours([_positions(int(g)) for g in grid], _positions(code), nwant)


@pytest.mark.parametrize("name", [*TYPES, "IQ1_S"])
def test_grid_data_matches_gguf_py(name: str) -> None:
    """The compact grids in data/*.npy expand to the dequantization grids gguf-py ships."""
    cls = getattr(gguf_quants, name)
    cls.init_grid()
    theirs = np.asarray(cls.grid).reshape(-1, 8)
    tables = iq1_tables() if name == "IQ1_S" else iq2_tables(name)
    ours = np.asarray(cls.grid_map, dtype=theirs.dtype)[tables.grid_levels]
    assert np.array_equal(ours, theirs)


def test_grid_sizes_and_kmap() -> None:
    for name, size in (("IQ2_XXS", 256), ("IQ2_XS", 512), ("IQ2_S", 1024)):
        t = iq2_tables(name)
        assert t.grid_size == size
        assert np.array_equal(t.kmap[t.grid_codes.astype(np.int64)], np.arange(size))
        assert (t.kmap >= 0).sum() == size
        # every code reachable by the quantizers (levels <= 2) is on the grid or has a neighbour list
        lv = (np.arange(KMAP_SIZE)[:, None] >> (2 * np.arange(8))) & 3
        reachable = (lv <= 2).all(axis=1)
        assert np.all((t.kmap >= 0) | (t.nb_row >= 0) | ~reachable)
        assert np.all((t.kmap < 0) | (t.nb_row < 0))
        assert iq2_tables(name) is t  # cached


@pytest.mark.parametrize("name", TYPES)
def test_neighbour_lists_match_ggml_port(name: str) -> None:
    grid, nwant = GRIDS[name]
    t = iq2_tables(name)
    rng = np.random.default_rng(3)
    for r in rng.choice(t.nb_codes.size, size=60, replace=False):
        code = int(t.nb_codes[r])
        want = _reference_neighbours(grid, nwant, code)
        got = t.nb_flat[t.nb_start[r] : t.nb_start[r] + t.nb_count[r]].tolist()
        assert got == want
        assert t.nb_padded[r, : t.nb_count[r]].tolist() == want
        assert t.nb_valid[r].sum() == t.nb_count[r]
        assert np.all(t.nb_padded[r, t.nb_count[r] :] == want[0])


def test_builder_is_generic_and_can_cover_every_code() -> None:
    grid = (0, 5, 21, 170, 1365, 43690, 0xFFFF & 0x3FFF)
    t = build_grid_tables(grid, 3, max_level=3)
    for r in range(0, t.nb_codes.size, 997):
        assert t.nb_flat[t.nb_start[r] : t.nb_start[r] + t.nb_count[r]].tolist() == _reference_neighbours(
            grid, 3, int(t.nb_codes[r])
        )
    assert t.nb_codes.size == KMAP_SIZE - len(set(grid))
    with pytest.raises(ValueError):
        build_grid_tables((), 1)


def test_sign_tables() -> None:
    assert KSIGNS_IQ2XS[:8].tolist() == [0, 129, 130, 3, 132, 5, 6, 135]
    assert KSIGNS_IQ2XS[-1] == 255
    signs = keven_signs()
    assert signs.shape == (128, 8)
    assert np.all((signs < 0).sum(axis=1) % 2 == 0)


@pytest.mark.parametrize("name", TYPES)
@pytest.mark.parametrize("seed", [5, 6])
def test_shared_search_equals_exact_search(name: str, seed: int) -> None:
    """The neighbour search over runs of candidates (shared per code, decided at the run's ends, two-line
    runs, near ties handed to the exact path) picks what C's sequential search picks for every entry."""
    g = iq2_mod._grid(name)
    t = g.tables
    rng = np.random.default_rng(seed)
    n, k = 3000, 9
    # integer-valued data produces many exact ties, which must reach the exact path
    xval = np.where(rng.random((n, 8)) < 0.5, rng.integers(0, 6, (n, 8)), rng.random((n, 8)) * 6).astype(
        np.float32
    )
    waux = np.where(rng.random((n, 8)) < 0.5, 1.0, rng.exponential(size=(n, 8))).astype(np.float32)
    # every group: runs of a few codes (off and on the grid) over increasing candidate scales
    off_codes = t.nb_codes[rng.integers(0, t.nb_codes.size, (n, 3))]
    on_codes = t.grid_codes.astype(np.int32)[rng.integers(0, t.grid_size, (n, 1))]
    choice = np.sort(rng.integers(0, 4, (n, k)), axis=1)
    codes = np.take_along_axis(np.concatenate([off_codes, on_codes], axis=1), choice, axis=1).astype(np.int32)
    base = np.where(rng.random(n) < 0.3, 1.0, rng.uniform(0.5, 1.5, n))
    scale = (base[:, None] * (1 + 0.04 * np.arange(k))[None, :]).astype(np.float32)
    gi, on, clear = iq2_mod._neighbours(g, codes, scale, xval, waux)
    assert np.array_equal(on, t.kmap[codes] >= 0)
    assert np.array_equal(gi[on], t.kmap[codes][on])
    grp, cand = np.nonzero(~on)
    terms = iq2_mod._d2_terms(g, xval[grp], waux[grp], scale[grp, cand])
    exact = iq2_mod._exact_neighbour(g, t.nb_row[codes[grp, cand]], terms)
    assert np.array_equal(gi[grp, cand], exact)

    # what the refit reuses (_reuse_decided): adjacent candidates with the same code, both decided by a
    # clear margin, with the same winner -- that winner is C's pick at every scale in between
    same = (codes[:, 1:] == codes[:, :-1]) & ~on[:, 1:] & clear[:, 1:] & clear[:, :-1]
    same &= gi[:, 1:] == gi[:, :-1]
    rg, rk = np.nonzero(same)
    assert rg.size > 100
    assert not clear[~on].all()  # the ties of the integer data were not taken as clear
    lo, hi = scale[rg, rk], scale[rg, rk + 1]
    mid = (lo + rng.random(rg.size) * (hi - lo)).astype(np.float32)
    terms = iq2_mod._d2_terms(g, xval[rg], waux[rg], mid)
    exact = iq2_mod._exact_neighbour(g, t.nb_row[codes[rg, rk]], terms)
    assert np.array_equal(gi[rg, rk], exact)


def test_sign_byte_packing_is_packbits() -> None:
    # every pattern of 8 flags, and flags laid out like _prepare's (blocks, groups, 8)
    every = ((np.arange(256)[:, None] >> np.arange(8)) & 1).astype(np.bool_)
    assert np.array_equal(iq2_mod._pack_bits8(every), np.arange(256, dtype=np.uint8))
    flags = np.random.default_rng(3).random((64, 4, 8)) < 0.5
    assert np.array_equal(iq2_mod._pack_bits8(flags), np.packbits(flags, axis=-1, bitorder="little")[..., 0])


def test_level_codes_match_nearest_int() -> None:
    """Levels by comparison (and the fallback for huge/NaN values) and the packed code equal C's
    ``MAX(0, MIN(2, nearest_int(0.5f*(id*x - 1))))`` and ``u |= l << 2*i``."""
    rng = np.random.default_rng(9)
    edges = np.array([2.0, 4.0, 0.0, -0.0, 1.0, 3.0, 5.0], dtype=np.float32)
    near = np.concatenate([edges, np.nextafter(edges, np.float32(9)), np.nextafter(edges, np.float32(-9))])
    for y in (
        np.concatenate([rng.uniform(-8, 8, 8 * 4000).astype(np.float32), np.resize(near, 8 * 21)]),
        np.array([3.0, 1e30, -1e30, np.nan, 2.5, 4.5, 0.1, 2**22 + 3], dtype=np.float32).repeat(8),
    ):
        y = y.reshape(-1, 8)
        lv = np.clip(nearest_int(np.float32(0.5) * (y - np.float32(1))), 0, 2)
        assert np.array_equal(iq2_mod._level_bytes(y), lv)
        want = (lv << (2 * np.arange(8))).sum(axis=1)
        assert np.array_equal(iq2_mod._codes(iq2_mod._level_bytes(y)), want)
        into = np.zeros((y.shape[0], 3), dtype=np.int32)  # a strided column, as the scale search uses
        iq2_mod._codes(iq2_mod._level_bytes(y), into[:, 1])
        assert np.array_equal(into[:, 1], want) and not into[:, [0, 2]].any()


def _relative_rmse(name: str, x: np.ndarray, imatrix: np.ndarray | None) -> float:
    q = quantize(x, name, imatrix, threads=1)
    y = dequantize(q, GGMLQuantizationType[name]).reshape(x.shape)
    return float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2)))


@pytest.mark.parametrize(("name", "limit"), [("IQ2_XXS", 0.45), ("IQ2_XS", 0.40), ("IQ2_S", 0.33)])
def test_dequantized_error(name: str, limit: float) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((8, 1024)).astype(np.float32)
    im = rng.exponential(size=1024).astype(np.float32)
    assert _relative_rmse(name, x, im) < limit
    if name not in NEEDS_IMATRIX:
        assert _relative_rmse(name, x, None) < limit


@pytest.mark.parametrize("name", TYPES)
def test_zero_rows_give_zero_bytes(name: str) -> None:
    x = np.zeros((2, 512), dtype=np.float32)
    q = quantize(x, name, np.ones(512, dtype=np.float32), threads=1)
    assert q.shape == (2, 2 * ROW_BYTES_PER_256[name])
    assert not q.any()


@pytest.mark.parametrize("name", sorted(NEEDS_IMATRIX))
def test_imatrix_is_required(name: str) -> None:
    with pytest.raises(QuantizationError, match="requires an importance matrix"):
        quantize(np.ones((1, 256), dtype=np.float32), name)


_finite = st.floats(width=32, allow_nan=False, allow_infinity=False)


@st.composite
def _inputs(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    n_rows = draw(st.integers(1, 8))
    n_per_row = 256 * draw(st.integers(1, 2))
    scale = draw(st.sampled_from([1.0, 1e-6, 1e3, 1e30]))
    x = draw(arrays(np.float32, (n_rows, n_per_row), elements=_finite))
    with np.errstate(over="ignore"):
        x = np.where(np.abs(x) <= 3.0e38 / max(scale, 1.0), x * np.float32(scale), x).astype(np.float32)
    im = draw(arrays(np.float32, (n_per_row,), elements=st.floats(0, 1e4, width=32)))
    return x, im


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_inputs(), use_imatrix=st.booleans())
def test_never_crashes_and_sizes_are_right(
    name: str, data: tuple[np.ndarray, np.ndarray], use_imatrix: bool
) -> None:
    x, im = data
    imatrix = im if (use_imatrix or name in NEEDS_IMATRIX) else None
    q = quantize(x, name, imatrix, threads=1)
    assert q.dtype == np.uint8
    assert q.shape == (x.shape[0], x.shape[1] // 256 * ROW_BYTES_PER_256[name])


def _reference_qp_iscale(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """make_qp_quants' trial loop as C writes it, per (S, 32) row, with nearest_int's bit trick."""
    f32 = np.float32
    mx = x.max(axis=1)
    iscale = f32(4) / mx
    lq = (nearest_int(iscale[:, None] * x) & 255).astype(f32)
    diff = x - (f32(1) / iscale)[:, None] * lq
    terms = (w * diff) * diff
    best = np.zeros(x.shape[0], dtype=f32)
    for i in range(32):
        best += terms[:, i]
    for is_ in (-4, -3, -2, -1, 1, 2, 3, 4):
        trial = (f32(0.1) * f32(is_) + f32(4)) / mx
        li = np.minimum(nearest_int(trial[:, None] * x), 4).astype(f32)
        diff = x - (f32(1) / trial)[:, None] * li
        terms = (w * diff) * diff
        mse = np.zeros(x.shape[0], dtype=f32)
        for i in range(32):
            mse += terms[:, i]
        better = mse < best
        best = np.where(better, mse, best)
        iscale = np.where(better, trial, iscale)
    out: np.ndarray = iscale
    return out


def test_qp_trial_rounding_is_nearest_int() -> None:
    """IQ2_XXS's make_qp_quants rounds its trial levels with the float constant 1.5*2**23, which is
    nearest_int only below 2**22: half-way values (a trial inverse scale of exactly 2 on (k + 0.5)/2)
    pick what C picks, and a row with a value past that bound (a huge negative, as the parity flip of
    a low-importance element makes) must take nearest_int's bit trick like C."""
    rng = np.random.default_rng(3)
    n_sub = 4000
    is_ = rng.choice([-4, -3, -2, -1, 1, 2, 3, 4], n_sub).astype(np.float32)
    mx = (np.float32(0.1) * is_ + np.float32(4)) / np.float32(2)  # that trial's inverse scale is 2
    x = rng.choice(np.array([0.25, 0.75, 1.25, 1.75, 0.5, 1.0], dtype=np.float32), (n_sub, 32))
    x[np.arange(n_sub), rng.integers(0, 32, n_sub)] = mx
    w = rng.choice(np.array([1.0, 2.0, 0.5], dtype=np.float32), (n_sub, 32)) * rng.exponential(
        size=(n_sub, 1)
    )
    w = w.astype(np.float32)
    want = _reference_qp_iscale(x, w)
    got = iq2_mod._qp_best_iscale(np.ascontiguousarray(x.T), np.ascontiguousarray(w.T), x.max(axis=1))
    assert np.array_equal(got.view(np.uint32), want.view(np.uint32))
    huge = x.copy()
    huge[:, 7] = -3e7
    got = iq2_mod._qp_best_iscale(np.ascontiguousarray(huge.T), np.ascontiguousarray(w.T), huge.max(axis=1))
    assert np.array_equal(got.view(np.uint32), _reference_qp_iscale(huge, w).view(np.uint32))


def _reference_best_neighbour(g: iq2_mod._Grid, rows: np.ndarray, terms: np.ndarray) -> np.ndarray:
    """``iq2_find_best_neighbour`` list entry by list entry: ``d2 = 0; d2 += term`` over the 8
    coordinates in float32, the first entry with ``d2 < best`` wins (best starts at FLT_MAX; a list
    without a finite smaller distance keeps its first entry, as the vectorized search does for NaN)."""
    t = g.tables
    n = rows.shape[0]
    out = t.nb_flat[t.nb_start[rows]].copy()
    best = np.full(n, np.finfo(np.float32).max, dtype=np.float32)
    lv = t.grid_levels.astype(np.intp)
    for k in range(int(t.nb_count[rows].max())):
        has = k < t.nb_count[rows]
        gp = t.nb_flat[t.nb_start[rows] + np.where(has, k, 0)]
        d2 = np.zeros(n, dtype=np.float32)
        for i in range(8):
            d2 = d2 + terms[np.arange(n), i, lv[gp, i]]
        better = has & (d2 < best)
        best = np.where(better, d2, best)
        out = np.where(better, gp, out)
    result: np.ndarray = out
    return result


@pytest.mark.parametrize("name", TYPES)
def test_exact_neighbour_is_the_sequential_search(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The exact search reads the running sum of the first four coordinates from a per-group table and
    runs in chunks of list entries: it picks what C's entry-by-entry float32 loop picks, on integer data
    (exact ties: the first entry must win), -0.0 weights (C's sum starts from +0.0), NaN and inf terms,
    with chunk boundaries inside the groups' range."""
    monkeypatch.setattr(iq2_mod, "_EXACT_SLOTS", 1000)
    g = iq2_mod._grid(name)
    t = g.tables
    rng = np.random.default_rng(11)
    n = 4000
    xval = np.where(rng.random((n, 8)) < 0.6, rng.integers(0, 6, (n, 8)), rng.random((n, 8)) * 6)
    waux = np.where(rng.random((n, 8)) < 0.5, 1.0, rng.exponential(size=(n, 8)))
    waux[rng.random((n, 8)) < 0.1] = -0.0
    xval[rng.random((n, 8)) < 0.002] = np.nan
    xval[rng.random((n, 8)) < 0.002] = np.inf
    scale = rng.choice([1.0, 0.5, 0.75, 1.25], n).astype(np.float32)
    rows = rng.integers(0, t.nb_codes.size, n).astype(np.int32)
    with np.errstate(all="ignore"):
        terms = iq2_mod._d2_terms(g, xval.astype(np.float32), waux.astype(np.float32), scale)
        got = iq2_mod._exact_neighbour(g, rows, terms)
        want = _reference_best_neighbour(g, rows, terms)
    assert np.array_equal(got, want)
