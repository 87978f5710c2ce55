"""make_qx_quants_iscale (the imatrix search of Q4_0 / Q5_0 / Q3_K) and make_qx_quants against a plain
transcription of ggml's make_qx_quants, on every path it can take (einsum sums or products and reductions, the clamp
on x or per candidate), and the einsum check that picks the sums' path.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gguf_recipe.quants import _scale_search as ss
from gguf_recipe.quants import quantize
from gguf_recipe.quants._numeric import seq_sum
from helpers.ggml_ref import ggml_bytes

f32 = np.float32


def _ref_make_qx_quants(x: np.ndarray, w: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """C's make_qx_quants(n, nmax, x, L, 1, w) line by line, vectorized only over the groups (columns):
    returns (scale, L)."""
    n, g = x.shape
    ax = np.abs(x)
    amax, mx = np.zeros(g, f32), np.zeros(g, f32)
    for i in range(n):
        up = ax[i] > amax
        amax, mx = np.where(up, ax[i], amax), np.where(up, x[i], mx)
    zero = amax < f32(1e-15)
    safe = np.where(zero, f32(1), mx)

    def levels(iscale: np.ndarray) -> np.ndarray:
        lv: np.ndarray = np.clip(np.rint(x * iscale), -nmax, nmax - 1).astype(f32)
        return lv

    def sums(lv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sumlx, suml2 = np.zeros(g, f32), np.zeros(g, f32)
        for i in range(n):
            sumlx = sumlx + w[i] * x[i] * lv[i]
            suml2 = suml2 + w[i] * lv[i] * lv[i]
        return sumlx, suml2

    best_l = levels(f32(-nmax) / safe)
    sumlx, suml2 = sums(best_l)
    scale = np.where(suml2 != 0, sumlx / np.where(suml2 != 0, suml2, f32(1)), f32(0))
    best = scale * sumlx
    for step in [*range(-9, 0), *range(1, 10)]:
        lv = levels(-(f32(nmax) + f32(0.1) * f32(step)) / safe)
        sumlx, suml2 = sums(lv)
        take = (suml2 > 0) & (sumlx * sumlx > best * suml2)
        new_scale = sumlx / np.where(take, suml2, f32(1))
        scale = np.where(take, new_scale, scale)
        best = np.where(take, new_scale * sumlx, best)
        best_l = np.where(take, lv, best_l)
    L = best_l + f32(nmax)
    L[:, zero] = 0
    return np.where(zero, f32(0), scale), L


def _search_levels(x: np.ndarray, w: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    scale, iscale, zero, finite = ss.make_qx_quants_iscale(x, w, nmax)
    v = np.multiply(x, iscale)
    ss.clamped_levels(v, f32(-nmax), f32(nmax - 1), finite)
    v += f32(nmax)
    v[:, zero] = 0
    return scale, v


def _boundary_groups(n: int, g: int, nmax: int, seed: int) -> np.ndarray:
    """Groups whose values sit on and next to the candidates' rounding and clamping boundaries: x/max =
    (k + 1/2)/c for the candidates' c, both signs of max, -max present or not."""
    rng = np.random.default_rng(seed)
    cs = np.float32(nmax) + np.float32(0.1) * np.arange(-9, 10, dtype=np.float32)
    ks = np.arange(-nmax - 1, nmax + 1, dtype=np.float32) + np.float32(0.5)
    ratios = (ks[:, None] / cs[None, :]).reshape(-1).astype(np.float32)
    ratios = ratios[np.abs(ratios) <= 1]
    r = rng.choice(ratios, size=(n, g))
    r = r * (np.float32(1) + rng.integers(-2, 3, size=(n, g)).astype(np.float32) * np.float32(2.0**-23))
    r[0] = 1
    r[1, ::2] = -1  # the largest |x| with both signs (the first one is max)
    mx = rng.choice(np.array([-3.0, -1.0, 0.37, 1.0, 2.5e-3], dtype=np.float32), size=g)
    return np.ascontiguousarray(np.clip(r, -1, 1).astype(np.float32) * mx)


@pytest.fixture(params=["einsum", "reduce"])
def sums_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "reduce":
        monkeypatch.setattr(ss, "einsum_sums_exact", lambda: False)
    elif not ss.einsum_sums_exact():
        pytest.skip("this numpy's einsum is not C's sequential sum")
    return str(request.param)


def _assert_both_searches_match_c(x: np.ndarray, w: np.ndarray, nmax: int) -> None:
    """make_qx_quants_iscale (through its levels) and make_qx_quants give C's scales and levels."""
    with np.errstate(all="ignore"):
        scale, L = _search_levels(x, w, nmax)
        ref_scale, ref_L = _ref_make_qx_quants(x, w, nmax)
        scale2, L2 = ss.make_qx_quants(x, nmax, w)
    assert scale.tobytes() == ref_scale.tobytes()
    assert np.array_equal(L, ref_L)
    assert scale2.tobytes() == ref_scale.tobytes()
    assert np.array_equal(L2, ref_L)


@pytest.mark.parametrize("clamp_on_x", [True, False])
@pytest.mark.parametrize(("n", "nmax"), [(32, 8), (32, 16), (16, 4)])
def test_search_matches_c_on_rounding_boundaries(
    sums_path: str, clamp_on_x: bool, n: int, nmax: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not clamp_on_x:  # as if no clip point were found: every candidate clamps its levels
        monkeypatch.setattr(ss, "_qx_clipped_x", lambda *args: None)
    x = _boundary_groups(n, 3000, nmax, seed=nmax)
    w = np.random.default_rng(1).exponential(size=x.shape).astype(np.float32)
    w[:, ::7] = 1  # equal weights: more ties between candidates
    _assert_both_searches_match_c(x, w, nmax)


@settings(max_examples=30, deadline=None)
@given(
    groups=hnp.arrays(
        np.float32,
        st.tuples(st.sampled_from([16, 32]), st.integers(1, 24)),
        elements=st.one_of(st.integers(-8, 8).map(float), st.floats(-(2.0**100), 2.0**100, width=32)),
    ),
    nmax=st.sampled_from([4, 8, 16]),
    data=st.data(),
)
def test_search_matches_c_on_any_finite_groups(groups: np.ndarray, nmax: int, data: st.DataObject) -> None:
    w = data.draw(hnp.arrays(np.float32, groups.shape, elements=st.floats(0, 1e6, width=32)))
    x = np.ascontiguousarray(groups)
    _assert_both_searches_match_c(x, w, nmax)


def test_einsum_probe_tells_c_sums_from_fused_wide_and_reordered_ones() -> None:
    """The probe's built columns fail on a fused multiply-add, a float64 temporary, a pairwise sum and a
    sum started from the first product (-0.0), so a build with any of them takes the products-and-reduction
    path."""
    a, b, c = ss._einsum_probe_operands()
    d = np.float64
    want2, want3 = seq_sum(a * b), seq_sum(a * b * c)
    fused = f32(d(a[0, 0]) * d(b[0, 0]) + d(a[1, 0]) * d(b[1, 0]))  # round(-1 + u*u), s = -1 exactly
    wide = f32(sum(d(a[i, 1]) * d(b[i, 1]) * d(c[i, 1]) for i in range(2)))
    pairwise = (a[1, 2] * b[1, 2] + a[2, 2] * b[2, 2]) + a[0, 2] * b[0, 2]
    assert fused != want2[0]
    assert wide != want3[1]
    assert pairwise != want2[2]
    assert np.signbit(seq_sum(a[:, 3:4] * b[:, 3:4], from_first=True)) != np.signbit(want2[3])


@pytest.mark.parametrize(
    ("n", "groups"), [(32, 2), (32, 3), (32, 5), (16, 17), (32, 1000), (32, 8192), (16, 16384)]
)
def test_einsum_sums_are_c_sums_where_used(n: int, groups: int) -> None:
    """Up to a whole chunk's groups (64 x 4096 values as 32- or 16-value groups)."""
    if not ss.einsum_sums_exact():
        pytest.skip("this numpy's einsum is not C's sequential sum")
    rng = np.random.default_rng(groups)
    a, b, c = (rng.standard_normal((n, groups)).astype(np.float32) for _ in range(3))
    assert np.array_equal(np.einsum("in,in->n", a, b), seq_sum(a * b))
    assert np.array_equal(np.einsum("in,in,in->n", a, b, c), seq_sum(a * b * c))


@pytest.mark.parametrize("qtype", [T.Q4_0, T.Q5_0, T.Q3_K], ids=lambda t: t.name)
def test_boundary_rows_match_ggml(qtype: T) -> None:
    nmax = {T.Q4_0: 8, T.Q5_0: 16, T.Q3_K: 4}[qtype]
    n = 16 if qtype == T.Q3_K else 32
    rows = np.ascontiguousarray(_boundary_groups(n, 2048, nmax, seed=3).T.reshape(-1, 1024))
    im = np.random.default_rng(5).exponential(size=1024).astype(np.float32)
    assert np.array_equal(quantize(rows, qtype.name, im, threads=1), ggml_bytes(rows, qtype, im))


@pytest.mark.parametrize("nmax", [4, 8, 16])
def test_one_clip_point_serves_each_candidate_set(nmax: int) -> None:
    """For Q3_K's, Q4_0's and Q5_0's nmax the clamp on x is found for every group (otherwise every
    candidate clamps its levels: exact, but the slow path)."""
    x = _boundary_groups(32, 2000, nmax, seed=7)
    safe, _ = ss._first_absmax_finite(x)
    c = ss._qx_candidates(nmax)
    iscales = np.divide(np.negative(c)[:, None], safe)
    modes = np.array(ss._qx_clip_modes(c, nmax))
    for mode in (1, 2):
        js = np.flatnonzero(modes == mode)
        assert js.size
        assert ss._qx_clipped_x(x, safe, iscales[js], c[js], nmax, mode == 2, np.empty_like(x)) is not None
