"""k-quants (Q2_K..Q6_K): reconstruction error, shape/size properties, imatrix handling.

Byte-exactness against ggml is covered by tests/quants/test_quant_oracle.py; these tests check the quantizers'
behaviour on inputs the oracle does not contain.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gguf_recipe.quants import _scale_search as ss
from gguf_recipe.quants import quantize, spec_for
from gguf_recipe.quants._numeric import nearest_int
from helpers.quants import round_trip

KQUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]

# RMS error bound for N(0, 1) inputs (measured ~0.29, 0.15, 0.071, 0.036, 0.018).
RMSE_BOUND = {"Q2_K": 0.33, "Q3_K": 0.18, "Q4_K": 0.085, "Q5_K": 0.045, "Q6_K": 0.022}


@pytest.mark.parametrize("qtype", KQUANTS)
@pytest.mark.parametrize("with_imatrix", [False, True])
def test_gaussian_reconstruction_error(qtype: str, with_imatrix: bool) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((8, 1024)).astype(np.float32)
    im = rng.uniform(0.5, 2.0, size=1024).astype(np.float32) if with_imatrix else None
    y = round_trip(x, qtype, im)
    rmse = float(np.sqrt(np.mean((x - y) ** 2)))
    assert rmse < RMSE_BOUND[qtype]


@pytest.mark.parametrize("qtype", KQUANTS)
def test_error_scales_with_input(qtype: str) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    for scale in (1e-3, 1e3):
        xs = (x * np.float32(scale)).astype(np.float32)
        y = round_trip(xs, qtype)
        assert float(np.sqrt(np.mean((xs - y) ** 2))) < RMSE_BOUND[qtype] * scale


@pytest.mark.parametrize("qtype", KQUANTS)
def test_zero_rows_dequantize_to_zero(qtype: str) -> None:
    x = np.zeros((3, 512), dtype=np.float32)
    im = np.ones(512, dtype=np.float32)
    assert not round_trip(x, qtype).any()
    assert not round_trip(x, qtype, im).any()


@pytest.mark.parametrize("qtype", KQUANTS)
def test_imatrix_weights_matter(qtype: str) -> None:
    """Heavily weighted columns are reconstructed better than with a flat imatrix."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 512)).astype(np.float32)
    im = np.full(512, 1e-3, dtype=np.float32)
    im[::8] = 1e3
    y_w = round_trip(x, qtype, im)
    y_flat = round_trip(x, qtype, np.ones(512, dtype=np.float32))
    err_w = float(np.mean((x - y_w)[:, ::8] ** 2))
    err_flat = float(np.mean((x - y_flat)[:, ::8] ** 2))
    assert err_w < err_flat


@pytest.mark.parametrize("qtype", KQUANTS)
def test_rows_are_independent_of_chunking(qtype: str) -> None:
    rng = np.random.default_rng(9)
    x = rng.standard_normal((40, 2048)).astype(np.float32)
    im = rng.exponential(size=2048).astype(np.float32)
    for imx in (None, im):
        whole = quantize(x, qtype, imx, threads=1)
        parts = np.concatenate([quantize(x[i : i + 7], qtype, imx, threads=1) for i in range(0, 40, 7)])
        assert np.array_equal(whole, parts)


_finite_f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
_small_f32 = st.floats(min_value=-1e4, max_value=1e4, width=32)


@st.composite
def _matrices(draw: st.DrawFn) -> np.ndarray:
    rows = draw(st.integers(1, 8))
    blocks = draw(st.integers(1, 3))
    elements = draw(st.sampled_from([_finite_f32, _small_f32]))
    arr: np.ndarray = draw(hnp.arrays(np.float32, (rows, 256 * blocks), elements=elements))
    return arr


@pytest.mark.parametrize("qtype", KQUANTS)
@settings(max_examples=25, deadline=None)
@given(x=_matrices(), data=st.data())
def test_any_finite_input_gives_right_size(qtype: str, x: np.ndarray, data: st.DataObject) -> None:
    use_im = data.draw(st.booleans())
    im = None
    if use_im:
        im = data.draw(
            hnp.arrays(
                np.float32,
                (x.shape[1],),
                elements=st.floats(min_value=0, max_value=1e6, width=32),
            )
        )
    with np.errstate(all="ignore"):
        q = quantize(x, qtype, im, threads=1)
    assert q.dtype == np.uint8
    assert q.shape == (x.shape[0], spec_for(qtype).row_bytes(x.shape[1]))
    # Quantizing the same input twice gives the same bytes.
    assert np.array_equal(q, quantize(x, qtype, im, threads=1))


@pytest.mark.parametrize("qtype", KQUANTS)
@settings(max_examples=25, deadline=None)
@given(
    x=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 4), st.sampled_from([256, 512])),
        elements=st.floats(min_value=-100, max_value=100, width=32),
    )
)
def test_moderate_inputs_roundtrip_within_block_range(qtype: str, x: np.ndarray) -> None:
    """Dequantized values stay finite and within the per-block magnitude (plus the quantization step)."""
    y = round_trip(x, qtype)
    assert np.isfinite(y).all()
    blocks_x = np.abs(x.reshape(-1, 256)).max(axis=1)
    blocks_y = np.abs(y.reshape(-1, 256)).max(axis=1)
    assert (blocks_y <= blocks_x * 2.5 + 1e-6).all()


@pytest.mark.parametrize("qtype", KQUANTS)
def test_inputs_are_not_modified(qtype: str) -> None:
    # A single super-block once made a transposed view alias the caller's row (regression).
    for x in (np.full((1, 256), -1.0, dtype=np.float32), np.random.default_rng(1).standard_normal((3, 512))):
        x = x.astype(np.float32)
        im = np.zeros(x.shape[1], dtype=np.float32)
        x0, im0 = x.copy(), im.copy()
        first = quantize(x, qtype, im, threads=1)
        assert np.array_equal(x, x0) and np.array_equal(im, im0)
        assert np.array_equal(first, quantize(x, qtype, im, threads=1))
        quantize(x, qtype, threads=1)
        assert np.array_equal(x, x0)


# ------------------------------------------------------------------ scale-search building blocks vs scalar C

f32 = np.float32


def _nint(v: np.float32) -> int:
    return int(nearest_int(np.array([v], dtype=np.float32))[0])


def _ref_make_q3_quants(
    x: np.ndarray, nmax: int, n_itry: int = 5, changes: list[int] | None = None
) -> tuple[np.float32, list[int], int]:
    """make_q3_quants(n, nmax, x, L, true) transcribed line by line with float32 scalars; also returns
    the last itry that changed a level (-1: none). ``n_itry``: C's 5 itries, or others for tests;
    ``changes`` receives the number of changed levels of each itry run."""
    n = len(x)
    amax, mx = f32(0), f32(0)
    for i in range(n):
        ax = abs(x[i])
        if ax > amax:
            amax, mx = ax, x[i]
    if amax < f32(1e-15):
        return f32(0), [0] * n, -1
    iscale = f32(-nmax) / mx
    L = [0] * n
    sumlx = suml2 = f32(0)
    for i in range(n):
        lv = max(-nmax, min(nmax - 1, _nint(iscale * x[i])))
        L[i] = lv
        w = x[i] * x[i]
        sumlx += w * x[i] * f32(lv)
        suml2 += w * f32(lv) * f32(lv)
    last_itry = -1
    for itry in range(n_itry):
        n_changed = 0
        for i in range(n):
            w = x[i] * x[i]
            slx = sumlx - w * x[i] * f32(L[i])
            if slx > 0:
                sl2 = suml2 - w * f32(L[i]) * f32(L[i])
                new_l = max(-nmax, min(nmax - 1, _nint(x[i] * sl2 / slx)))
                if new_l != L[i]:
                    slx += w * x[i] * f32(new_l)
                    sl2 += w * f32(new_l) * f32(new_l)
                    if sl2 > 0 and slx * slx * suml2 > sumlx * sumlx * sl2:
                        L[i], sumlx, suml2 = new_l, slx, sl2
                        n_changed += 1
        if changes is not None:
            changes.append(n_changed)
        if not n_changed:
            break
        last_itry = itry
    return (sumlx / suml2 if suml2 > 0 else f32(0)), [v + nmax for v in L], last_itry


@settings(max_examples=25, deadline=None)
@given(
    groups=hnp.arrays(
        np.float32,
        st.tuples(st.just(16), st.integers(1, 40)),
        elements=st.one_of(st.integers(-8, 8).map(float), st.floats(-50, 50, width=32)),
    )
)
def test_make_q3_quants_matches_scalar_reference(groups: np.ndarray) -> None:
    _assert_q3_matches_reference(groups)


def _assert_q3_matches_reference(groups: np.ndarray) -> list[int]:
    """make_q3_quants on the (16, G) ``groups`` equals the scalar reference, bit for bit; returns the
    reference's last changing itry per group."""
    scale, L = ss.make_q3_quants(np.ascontiguousarray(groups), 4)
    last = []
    for gi in range(groups.shape[1]):
        ref_scale, ref_L, ref_last = _ref_make_q3_quants(groups[:, gi], 4)
        assert scale[gi].tobytes() == ref_scale.tobytes()
        assert L[:, gi].astype(int).tolist() == ref_L
        last.append(ref_last)
    return last


def _gaussian_chunk() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((64, 4096)).astype(np.float32)


# N(0, 1) groups whose refinement would still change a level in a sixth itry (found among 800k)
_Q3_SIXTH_ITRY_GROUPS = [
    [-0.8772099, -1.874813, -1.4292636, 1.8155423, 0.43827474, -0.16949378, -0.5591299, -1.7727034,
     1.3935924, 0.23847169, 1.7814386, 0.69672817, 0.9597375, -1.6494361, 0.91128236, -1.4900589],
    [0.36503056, 0.45269606, -0.35657746, -0.2019296, 0.8737334, -0.23753053, 1.1090956, -0.75458544,
     -1.1917945, -0.743968, 0.8097996, -0.69565135, -0.78353256, -0.7785503, 0.3720198, -0.63295877],
    [-0.9147903, -0.003542534, 0.97672385, -0.2731076, 0.8111214, -0.36567676, 0.09435189, 1.6056862,
     0.7315695, 0.6552212, 1.0841768, -0.6806379, -1.6926587, -1.1410306, 0.18683411, 0.24109377],
]  # fmt: skip


def test_make_q3_quants_stops_after_the_fifth_itry() -> None:
    """Groups whose levels still change in C's fifth and last itry: those of a N(0, 1) chunk, and
    groups where a sixth itry would change more. The rounds must not wrap past the fifth."""
    chunk_groups = _gaussian_chunk().reshape(-1, 16)[[448, 1679, 5152, 14059]]
    sixth = np.array(_Q3_SIXTH_ITRY_GROUPS, dtype=np.float32)
    for g in sixth:
        assert _ref_make_q3_quants(g, 4, n_itry=6)[1] != _ref_make_q3_quants(g, 4)[1]
    groups = np.concatenate((chunk_groups, sixth)).T
    assert _assert_q3_matches_reference(groups) == [4] * 7


# A N(0, 1) group that changes one level in each of the five itries (so its refinement wraps to the
# next itry every round) and would change another in a sixth.
_Q3_ONE_CHANGE_PER_ITRY = [
    0.6306108832359314, -0.11914607882499695, 1.0174678564071655, -0.2178569883108139, 1.0058560371398926,
    -1.591684103012085, -1.2953181266784668, -1.1494643688201904, -2.077484130859375, 0.527211606502533,
    0.8413059115409851, 0.5786775946617126, -0.8242793679237366, 1.9803386926651, 0.6039498448371887,
    0.7659838199615479,
]  # fmt: skip


# N(0, 1) groups whose sixth itry would change its first element (step 5n of C's flattened loops, the
# first one past the last): found as the groups where _q3_refine's step limit moved up by one differs.
_Q3_SIXTH_ITRY_AT_ELEMENT_0 = [
    [0.30254364013671875, -1.4881823062896729, -0.7927394509315491, -1.4455745220184326, -0.3070748448371887,
     -0.5488379001617432, 1.836488127708435, 0.8036741614341736, -0.44059625267982483, -0.4649735987186432,
     -1.8456264734268188, 1.7025349140167236, 0.9550202488899231, 0.7606111168861389, 1.376346230506897,
     -1.1568446159362793],
    [-1.827952265739441, -1.0198508501052856, 2.220768928527832, 1.0027275085449219, -0.4730948805809021,
     0.876796543598175, 1.04477059841156, -2.227210760116577, -0.03695472329854965, 0.8472819328308105,
     -0.5861700177192688, 0.6455926895141602, -1.0375291109085083, 0.6707901358604431, -1.0424621105194092,
     1.1467788219451904],
]  # fmt: skip


def test_make_q3_quants_no_sixth_itry_from_element_0() -> None:
    """The refinement's last step is element n-1 of the fifth itry: groups whose sixth itry would
    begin by changing element 0 keep their levels, as in the scalar reference and ggml."""
    from helpers.ggml_ref import ggml_bytes

    groups = np.array(_Q3_SIXTH_ITRY_AT_ELEMENT_0, dtype=np.float32)
    for g in groups:
        changes: list[int] = []
        assert _ref_make_q3_quants(g, 4, n_itry=6, changes=changes)[1] != _ref_make_q3_quants(g, 4)[1]
        assert len(changes) == 6 and changes[5] > 0
    assert _assert_q3_matches_reference(groups.T) == [4, 4]
    row = np.zeros((1, 256), dtype=np.float32)
    row[0, :32] = groups.reshape(-1)
    assert np.array_equal(quantize(row, "Q3_K", threads=1), ggml_bytes(row, spec_for("Q3_K").qtype, None))


def test_make_q3_quants_fifth_itry_reached_in_the_fifth_round() -> None:
    """A group that wraps to a new itry in every round reaches the fifth (last) itry after four rounds
    of _q3_refine (its first change is phase A's): from then on it must not wrap again, though a sixth
    itry would change a level. Against the scalar reference and ggml's bytes."""
    from helpers.ggml_ref import ggml_bytes

    g = np.array(_Q3_ONE_CHANGE_PER_ITRY, dtype=np.float32)
    changes: list[int] = []
    _ref_make_q3_quants(g, 4, n_itry=6, changes=changes)
    assert changes == [1, 1, 1, 1, 1, 1]
    assert _assert_q3_matches_reference(g[:, None]) == [4]
    row = np.zeros((1, 256), dtype=np.float32)
    row[0, 16:32] = g
    row[0, 64:80] = -g  # the same group with a positive max: no refinement
    assert np.array_equal(quantize(row, "Q3_K", threads=1), ggml_bytes(row, spec_for("Q3_K").qtype, None))


def test_make_q3_quants_positive_max_groups_never_change() -> None:
    """make_q3_quants refines only groups whose largest magnitude is negative: with a positive one
    every w*x*l is <= 0, so no leave-one-out slx is > 0 and C never tests a change. Checked on groups
    of very different magnitudes (products that underflow, overflow, are subnormal)."""
    rng = np.random.default_rng(7)
    n_groups = 400
    groups = rng.standard_normal((16, n_groups)) * 10.0 ** rng.integers(-25, 13, n_groups)
    groups = groups.astype(np.float32)
    top = groups[np.argmax(np.abs(groups), axis=0), np.arange(n_groups)]
    groups *= np.where(top < 0, f32(-1), f32(1))
    assert _assert_q3_matches_reference(groups) == [-1] * n_groups


def test_make_q3_quants_first_round_without_range_check() -> None:
    """Refinable groups (largest magnitude negative) with |max| in [1e-6, 1e6] skip the 2^22 range
    check of the first round's x*sl2/slx (``_q3_first_round_small``). Groups where one element
    dominates the sums (leave-one-out slx tiny or exactly 0), at both ends of the range, still match
    the scalar reference."""
    rng = np.random.default_rng(3)
    n_groups = 300
    groups = rng.uniform(-0.14, 0.14, (16, n_groups)).astype(np.float32)  # levels 0 or +-1 of 4
    groups[0] = -1  # the dominant element: level -4
    groups[1:, :60] *= f32(0.5)  # every other level 0: slx = 0 when element 0 is left out
    groups[1:, 60:120] = f32(-0.1250001)  # just past the level -1 threshold
    groups *= (10.0 ** rng.uniform(-5.99, 5.99, n_groups)).astype(np.float32)
    assert ss._q3_first_round_small(groups[0])
    with np.errstate(over="ignore"):  # slx*slx*suml2 overflows near 1e6, in C as well
        last = _assert_q3_matches_reference(groups)
    assert max(last) >= 0  # some refinement happens


def test_q3_k_gaussian_chunk_matches_ggml() -> None:
    """A whole N(0, 1) chunk (16384 groups, the refinement's long tail of rounds) against ggml."""
    from helpers.ggml_ref import ggml_bytes

    x = _gaussian_chunk()
    assert np.array_equal(quantize(x, "Q3_K", threads=1), ggml_bytes(x, spec_for("Q3_K").qtype, None))


@settings(max_examples=40, deadline=None)
@given(
    groups=hnp.arrays(
        np.float32,
        st.tuples(st.just(16), st.sampled_from([1, 2, 3])),
        elements=st.one_of(st.integers(-8, 8).map(float), st.floats(-(2.0**100), 2.0**100, width=32)),
    ),
    data=st.data(),
)
def test_q6_search_matches_make_qx_quants(groups: np.ndarray, data: st.DataObject) -> None:
    """Q6_K's own make_qx_quants(16, 32) (sums of every candidate, then the accept scan) agrees with the
    generic search: the scale bit for bit, and the levels it would keep."""
    from gguf_recipe.quants import kquants as kq

    n_rows = groups.shape[1]
    x = np.ascontiguousarray(groups)
    im = None
    if data.draw(st.booleans()):
        im = data.draw(hnp.arrays(np.float32, (16,), elements=st.floats(0, 1e6, width=32)))
    qw = None if im is None else np.ascontiguousarray(np.tile(im[:, None], (1, n_rows)))
    with np.errstate(all="ignore"):
        ref_scale, ref_L = ss.make_qx_quants(x, 32, qw)
        scale, safe_mx, idx, zero, amax = kq._q6_search(x, im, n_rows)
        L = kq._q6_keep_levels(x, safe_mx, idx)
    L[:, zero] = 0
    assert scale.tobytes() == ref_scale.tobytes()
    assert np.array_equal(L, ref_L)
    assert np.array_equal(amax, np.abs(x).max(axis=0))


def test_q6_k_ties_and_kept_levels() -> None:
    """Groups whose largest |x| occurs with both signs, and sub-blocks whose scale rounds to 0 (the
    levels of the search are kept), against the generic make_qx_quants path (non-finite input)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 1024)).astype(np.float32)
    x[:, 16:32] *= np.float32(1e-4)  # q_sc == 0
    x[:, 40] = -np.abs(x[:, 32:48]).max(axis=1) * 2  # tie: -m first, +m later
    x[:, 45] = -x[:, 40]
    x[:, 64:80] = 0
    im = rng.exponential(size=1024).astype(np.float32)
    bad = x.copy()
    bad[:, 1000:] = np.nan  # the last super-block makes the whole work item take the generic path
    for imx in (None, im):
        fast = quantize(x, "Q6_K", imx, threads=1)
        slow = quantize(bad, "Q6_K", imx, threads=1)
        assert np.array_equal(fast[:, :630], slow[:, :630])


@pytest.mark.parametrize("groups", [1, 2, 300])
def test_seq_sum_middle_is_cs_sequential_sum(groups: int) -> None:
    # The scale searches' sums: C's float s = 0; s += a[i] in order, bit for bit (a pairwise sum or a
    # start from a[0] instead of +0.0 would differ), an all -0.0 column included.
    rng = np.random.default_rng(5)
    t = (rng.standard_normal((3, 32, groups)) * np.exp2(rng.integers(-20, 20, (3, 32, groups)))).astype(
        np.float32
    )
    t[:, :, 0] = -0.0
    out = np.empty((3, groups), dtype=np.float32)
    ss.seq_sum_middle(t, out)
    expected = np.zeros((3, groups), dtype=np.float32)
    for i in range(32):
        expected += t[:, i]
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))


def test_q3_k_super_scale_ties_match_ggml() -> None:
    """Sub-block scales of equal magnitude and opposite signs as a super-block's largest (the first
    one wins in C; the fast path without a tie-break must not be taken), next to rows without ties."""
    from helpers.ggml_ref import ggml_bytes

    rng = np.random.default_rng(9)
    x = np.zeros((4, 512), dtype=np.float32)
    x[0, 0], x[0, 16] = 1, -1  # scales -0.25 and 0.25 (neither group refines)
    x[1, 16], x[1, 32] = -1, 1
    x[1, 256 + 48] = 2
    x[2] = rng.standard_normal(512).astype(np.float32)
    x[2, 256:272], x[2, 272:288] = x[2, 0:16], -x[2, 0:16]
    x[3] = rng.standard_normal(512).astype(np.float32)
    assert np.array_equal(quantize(x, "Q3_K", threads=1), ggml_bytes(x, spec_for("Q3_K").qtype, None))


def _ref_signed_absmax(group: np.ndarray) -> np.float32:
    """make_q3_quants' ``if (ax > amax) { amax = ax; max = x[i]; }`` from amax = max = 0."""
    amax, mx = f32(0), f32(0)
    for v in group:
        if abs(v) > amax:
            amax, mx = abs(v), v
    return mx


def test_signed_absmax_picks_cs_element() -> None:
    """The largest-magnitude element with its sign, bit for bit (zeros are +0.0), on the cases where
    the sign choice is decided by one rounding or by order: near and exact ties of opposite signs
    (huge, tiny and subnormal), signed zeros, infinities and NaNs next to random groups."""
    rng = np.random.default_rng(5)
    big, sub = f32(3e38), f32(1e-45)
    cases = [
        [0.0, -0.0],
        [-0.0, -0.0],
        [-0.0, 0.0, -0.0],
        [1.0, -1.0],
        [-1.0, 1.0],
        [1.0, -np.nextafter(f32(1), f32(2))],
        [-1.0, np.nextafter(f32(1), f32(2))],
        [np.nextafter(f32(1), f32(0)), -1.0],
        [big, -big],
        [-big, big, 1.0],
        [sub, -sub],
        [-sub, 2 * sub],
        [-2 * sub, sub],
        [np.inf, -np.inf],
        [-np.inf, np.inf],
        [-np.inf, 1.0],
        [np.inf, -big],
        [np.nan, -1.0],
        [np.nan, 1.0, -1.0],
        [-3.0, np.nan, 2.0],
    ]
    groups = np.zeros((16, len(cases) + 200), dtype=np.float32)
    for j, c in enumerate(cases):
        groups[:, j] = np.resize(np.array(c, dtype=np.float32), 16)  # repeated: no +0.0 padding
    groups[:, len(cases) :] = rng.standard_normal((16, 200)).astype(np.float32)
    mx, finite = ss._first_absmax_finite(groups)
    expected = np.array([_ref_signed_absmax(groups[:, j]) for j in range(groups.shape[1])], dtype=np.float32)
    assert not finite
    assert np.array_equal(mx.view(np.uint32), expected.view(np.uint32))
    finite_part = groups[:, 10:13]  # subnormal near-ties, all finite: the fast path
    mx_f, finite_f = ss._first_absmax_finite(np.ascontiguousarray(finite_part))
    assert finite_f
    assert np.array_equal(mx_f.view(np.uint32), expected[10:13].view(np.uint32))


def test_q3_first_round_small_bounds_only_negative_maxima() -> None:
    """The no-range-check predicate looks at groups whose largest magnitude is negative only, with
    |max| in [1e-6, 1e6] inclusive; positive maxima of any size do not matter."""
    lo, hi = f32(1e-6), f32(1e6)
    ok = np.array([-lo, -hi, -1, 1e-30, 1e30, 0, -0.0], dtype=np.float32)
    assert ss._q3_first_round_small(ok)
    for bad in (np.nextafter(-lo, f32(0)), np.nextafter(-hi, f32(-np.inf)), f32(-1e-30)):
        assert not ss._q3_first_round_small(np.append(ok, bad).astype(np.float32))
