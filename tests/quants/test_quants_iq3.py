"""IQ3_XXS / IQ3_S: grid tables, neighbour search, round-trip error and robustness.

Byte-exactness against ggml is covered by tests/quants/test_quant_oracle.py.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import IQ3_S, IQ3_XXS, dequantize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from test_quants_iq2 import reference_neighbours

from gguf_recipe.quants import iq3 as iq3_mod
from gguf_recipe.quants import quantize
from gguf_recipe.quants._iq3_tables import KMAP_SIZE, build_iq3_tables, iq3_tables

TYPES = {"IQ3_XXS": 98, "IQ3_S": 110}
GRID_SIZE = {"IQ3_XXS": 256, "IQ3_S": 512}


def _reference_neighbours(levels: np.ndarray, nwant: int, code: int) -> list[int]:
    pos = [2 * ((code >> 3 * k) & 7) + 1 for k in range(4)]
    return reference_neighbours((2 * levels.astype(int) + 1).tolist(), pos, nwant)


@pytest.mark.parametrize("name", sorted(TYPES))
def test_grid_matches_gguf_py(name: str) -> None:
    cls = IQ3_XXS if name == "IQ3_XXS" else IQ3_S
    cls.init_grid()  # type: ignore[no-untyped-call]
    theirs = np.asarray(cls.grid).reshape(-1, 4)
    t = iq3_tables(GRID_SIZE[name])
    ours = np.asarray(cls.grid_map, dtype=np.float32)[t.grid_levels]
    assert np.array_equal(ours, theirs)


@pytest.mark.parametrize("size", [256, 512])
def test_tables(size: int) -> None:
    t = iq3_tables(size)
    assert iq3_tables(size) is t  # cached
    assert t.grid_size == size
    assert np.array_equal(t.kmap[t.grid_codes], np.arange(size))
    assert (t.kmap >= 0).sum() == size
    assert np.all((t.kmap >= 0) != (t.nb_row >= 0))  # every code: on the grid xor has a list
    assert (t.nb_row >= 0).sum() == KMAP_SIZE - size
    assert t.nb_count.min() >= 1
    # padding carries no neighbours
    pad = np.arange(t.nb_index.shape[1])[None, :] >= t.nb_count[:, None]
    assert np.all(t.nb_index[pad] == 0)
    assert np.all(t.nb_pos[pad] == 0)
    assert np.array_equal(t.nb_pos[~pad], (2 * t.grid_levels[t.nb_index[~pad]].astype(np.float32) + 1))


@pytest.mark.parametrize("size", [256, 512])
def test_neighbour_lists_match_ggml_port(size: int) -> None:
    t = build_iq3_tables(size)
    nwant = 2 if size == 256 else 3
    off = np.flatnonzero(t.nb_row >= 0)
    rng = np.random.default_rng(3)
    for code in rng.choice(off, size=80, replace=False):
        r = t.nb_row[code]
        want = _reference_neighbours(t.grid_levels, nwant, int(code))
        assert t.nb_index[r, : t.nb_count[r]].tolist() == want


def _find_best_reference(size: int, code: int, x4: np.ndarray, w4: np.ndarray, scale: np.float32) -> int:
    """Port of ggml's iq3_find_best_neighbour (float32, no FMA, first strict minimum)."""
    tab = iq3_tables(size)
    r = tab.nb_row[code]
    best_d2, best = np.float32(np.finfo(np.float32).max), -1
    for n in range(tab.nb_count[r]):
        j = int(tab.nb_index[r, n])
        d2 = np.float32(0)
        for i in range(4):
            q = np.float32(2 * int(tab.grid_levels[j, i]) + 1)
            diff = np.float32(np.float32(scale * q) - x4[i])
            d2 = np.float32(d2 + np.float32(np.float32(w4[i] * diff) * diff))
        if d2 < best_d2:
            best_d2, best = d2, j
    return best


@pytest.mark.parametrize("size", [256, 512])
def test_best_neighbour_search_matches_port(size: int) -> None:
    tab = iq3_tables(size)
    rng = np.random.default_rng(11)
    n = 400
    codes = rng.choice(np.flatnonzero(tab.nb_row >= 0), size=n)
    x4 = (rng.random((4, n)) * 16).astype(np.float32)
    w4 = rng.exponential(size=(4, n)).astype(np.float32)
    w4[:, :40] = 1.0  # equal weights: exact ties between neighbours are likely
    x4[:, :40] = np.round(x4[:, :40])
    w4[0, 40:60] = 0.0
    scale = rng.uniform(0.8, 1.2, n).astype(np.float32)
    rows = tab.nb_row[codes].astype(np.intp)
    got = iq3_mod._best_neighbours(tab, rows, np.arange(n), x4, w4, scale)
    want = [_find_best_reference(size, int(codes[g]), x4[:, g], w4[:, g], scale[g]) for g in range(n)]
    assert got.tolist() == want


@pytest.mark.parametrize("name", sorted(TYPES))
@pytest.mark.parametrize("with_imatrix", [False, True])
def test_round_trip_error(name: str, with_imatrix: bool) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((8, 1024)).astype(np.float32)
    im = rng.exponential(size=1024).astype(np.float32) if with_imatrix else None
    q = quantize(x, name, im, threads=1)
    assert q.shape == (8, 4 * TYPES[name])
    y = dequantize(q, GGMLQuantizationType[name]).reshape(x.shape)
    rel = float(np.sqrt(np.mean((y - x) ** 2) / np.mean(x**2)))
    assert rel < (0.24 if name == "IQ3_XXS" else 0.19)
    assert np.mean(np.sign(y) == np.sign(x)) > 0.9  # signs are stored explicitly


@pytest.mark.parametrize("name", sorted(TYPES))
def test_zero_and_tiny_rows(name: str) -> None:
    x = np.zeros((2, 512), dtype=np.float32)
    x[1, 256:] = 1e-30
    y = dequantize(quantize(x, name, threads=1), GGMLQuantizationType[name])
    assert np.all(y == 0)


@pytest.mark.parametrize("name", sorted(TYPES))
def test_blocks_do_not_depend_on_neighbours(name: str) -> None:
    """Quantizing rows one at a time or in one call (different internal batching) gives the same bytes."""
    rng = np.random.default_rng(9)
    x = (rng.standard_t(3, size=(6, 768)) * 0.05).astype(np.float32)
    x[2, :256] = 0.0
    im = rng.exponential(size=768).astype(np.float32)
    whole = quantize(x, name, im, threads=1)
    single = np.concatenate([quantize(x[i : i + 1], name, im, threads=1) for i in range(6)])
    assert np.array_equal(whole, single)


finite = st.floats(width=32, allow_nan=False, allow_infinity=False)


@pytest.mark.parametrize("name", sorted(TYPES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_finite_input(name: str, data: st.DataObject) -> None:
    n_rows = data.draw(st.integers(1, 8))
    n_per_row = 256 * data.draw(st.integers(1, 3))
    x = data.draw(arrays(np.float32, (n_rows, n_per_row), elements=finite))
    im = data.draw(
        st.none()
        | arrays(np.float32, (n_per_row,), elements=st.floats(0, 1e6, width=32, allow_subnormal=False))
    )
    q = quantize(x, name, im, threads=1)
    assert q.dtype == np.uint8
    assert q.shape == (n_rows, n_per_row // 256 * TYPES[name])


@pytest.mark.parametrize("name", sorted(TYPES))
def test_internal_steps_do_not_change_bytes(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(13)
    x = rng.standard_normal((4, 1024)).astype(np.float32)
    im = rng.exponential(size=1024).astype(np.float32)
    fn = iq3_mod.quantize_iq3_xxs if name == "IQ3_XXS" else iq3_mod.quantize_iq3_s
    whole = fn(x, im)
    for kind in ("_XXS", "_S"):
        monkeypatch.setattr(iq3_mod, kind, dataclasses.replace(getattr(iq3_mod, kind), blocks_per_step=24))
    assert np.array_equal(fn(x, im), whole)


def _two_contenders_per_entry(
    v: np.ndarray, first: np.ndarray, last: np.ndarray, s_flat: np.ndarray
) -> dict[int, int]:
    """Every entry of the runs decided on its own: j1 where d < 0, j0 else, -1 unless |d| > margin."""
    out = {}
    for r in range(first.size):
        for p in range(int(first[r]), int(last[r]) + 1):
            s = s_flat[p % s_flat.size]
            with np.errstate(all="ignore"):
                d = np.float32(np.float32(v[0, r] * s) - v[1, r])
            gi = int(v[4, r]) if d < 0 else int(v[3, r])
            out[p] = gi if abs(d) > v[2, r] else -1
    return out


@pytest.mark.parametrize("seed", range(4))
def test_two_contender_segments_match_entry_by_entry(seed: int) -> None:
    """The binary searches on the monotone d give each entry the grid index (or the exact search) that
    evaluating it alone gives: runs in both directions, margins equal to d at some entry (the '<' and
    '<=' limits), repeated scales, lengths 1..31, non-finite terms, a negative margin."""
    rng = np.random.default_rng(seed)
    n_t = 31
    n_runs = 400
    s_rows = np.sort(rng.uniform(0.05, 2.0, (n_runs, n_t)).astype(np.float32), axis=1)[:, ::-1]
    s_rows[::5, 10:14] = s_rows[::5, 10:11]  # flat stretches
    s_flat = np.ascontiguousarray(s_rows).reshape(-1)
    lengths = rng.integers(1, n_t + 1, n_runs)
    starts = rng.integers(0, n_t - lengths + 1)
    first = np.arange(n_runs) * n_t + starts
    last = first + lengths - 1
    v = np.empty((5, n_runs), dtype=np.float32)
    v[0] = rng.standard_normal(n_runs)  # both signs: d increasing or decreasing along a run
    s_mid = s_flat[first + lengths // 2]
    v[1] = v[0] * s_mid * rng.uniform(0.8, 1.2, n_runs).astype(np.float32)  # sign change inside
    v[2] = np.abs(rng.standard_normal(n_runs).astype(np.float32)) * np.float32(0.05)
    # margins exactly |d| at an entry, so some entries sit on either limit
    pick = first + rng.integers(0, lengths)
    d_pick = (v[0] * s_flat[pick]) - v[1]
    v[2, ::3] = np.abs(d_pick[::3])
    v[3] = rng.integers(0, 256, n_runs)
    v[4] = rng.integers(0, 256, n_runs)
    v[0, 7] = np.inf
    v[1, 11] = np.nan
    v[2, 13] = -0.5  # not a margin the search makes, but decided as entry by entry would
    segs, tie_pos = iq3_mod._two_segments(v, first, last, s_flat)
    got: dict[int, int] = {}
    for a, b, gi in segs:
        for lo, hi, g in zip(a.tolist(), b.tolist(), gi.tolist(), strict=True):
            for p in range(lo, hi + 1):
                assert p not in got
                got[p] = g
    for p in tie_pos.tolist():
        assert p not in got
        got[p] = -1
    want = _two_contenders_per_entry(v, first, last, s_flat)
    assert got == want
    assert sum(1 for g in want.values() if g < 0) > 10  # the margins' edges were hit


def test_trial_codes_match_level_codes() -> None:
    """The clipped-first level codes of the trials equal the general ones: ties of the rounding (y odd),
    y on and around the clip bounds 0 and 14, negative (sign-flipped) values, -0.0 and NaN."""
    rng = np.random.default_rng(5)
    nb = 64
    xval = np.abs(rng.standard_normal((32, nb))).astype(np.float32)
    xval[::5] *= -1
    xval[3, :8] = -0.0
    xval[4, 8:10] = np.nan
    steps = np.arange(-15, 16, dtype=np.float32)
    ids_t = (
        (np.float32(15.0) + steps * np.float32(0.2))[None, :] / np.abs(xval).max(axis=0)[:, None]
    ).astype(np.float32)
    # blocks whose id*x - 1 is exactly an odd integer (a rounding tie) or sits at the clip bounds
    ids_t[:4] = 1.0
    xval[:, 0] = np.arange(32, dtype=np.float32) % 16 + 1  # y = 0..15
    xval[:, 1] = np.arange(32, dtype=np.float32) % 16 + np.float32(1.5)  # y = 0.5..15.5
    edge = np.array([0.0, 1.0, 14.0, 15.0, 16.0], dtype=np.float32)
    xval[:5, 2] = np.nextafter(edge, np.float32(np.inf))
    xval[5:10, 2] = np.nextafter(edge, np.float32(-np.inf))
    xval[:, 3] = -(np.arange(32, dtype=np.float32) % 4)
    want = iq3_mod._level_codes(xval[:, :, None], ids_t[None, :, :])
    assert np.array_equal(iq3_mod._trial_codes(xval, ids_t), want)


def test_trial_sums_are_c_sequential_sums() -> None:
    """Per value index sums equal C's float sums from +0.0, in order (all-(-0.0) terms give +0.0)."""
    rng = np.random.default_rng(6)
    nb, n_t = 48, 31
    codes = rng.integers(0, 4096, (8, nb, n_t)).astype(np.int16)
    w = rng.exponential(size=(32, nb)).astype(np.float32)
    x = rng.standard_normal((32, nb)).astype(np.float32) * np.float32(1e3)
    w[:, 0] = -0.0  # every term -0.0
    x[:, 1] = -0.0
    wx = w * x
    sx, s2 = iq3_mod._trial_sums(codes, w, wx)
    q = iq3_mod._positions(codes)
    want_x = np.full((nb, n_t), np.float32(0.0))
    want_2 = np.full((nb, n_t), np.float32(0.0))
    for j in range(32):
        want_x = want_x + wx[j][:, None] * q[j]
        want_2 = want_2 + (w[j][:, None] * q[j]) * q[j]
    assert np.array_equal(sx.view(np.uint32), want_x.view(np.uint32))
    assert np.array_equal(s2.view(np.uint32), want_2.view(np.uint32))
