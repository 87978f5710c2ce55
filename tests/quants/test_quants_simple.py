"""Float, legacy (Q8_0/Q4_0/Q4_1/Q5_0/Q5_1) and ternary/MXFP4 quantizers: round trip error, agreement
with gguf-py's numpy quantizers, and hypothesis properties (never crash, right byte size)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize
from gguf.quants import quantize as gguf_quantize
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gguf_recipe.quants import implemented_types, quantize
from helpers.ggml_ref import ggml_bytes
from helpers.quants import FINITE_F32, imatrices


def _type_name(t: GGMLQuantizationType) -> str:
    return t.name


T = GGMLQuantizationType

# Relative RMS error of dequantize(quantize(x)) for N(0,1) data: comfortably above what ggml gets.
MAX_REL_RMSE: dict[GGMLQuantizationType, float] = {
    T.F32: 0.0,
    T.F16: 5e-4,
    T.BF16: 4e-3,
    T.Q8_0: 0.008,
    T.Q5_0: 0.05,
    T.Q5_1: 0.05,
    T.Q4_0: 0.1,
    T.Q4_1: 0.1,
    T.MXFP4: 0.14,
    # ternary: x is mapped to {-amax, 0, +amax}; meant for ternary weights, large error on gaussians
    T.TQ1_0: 0.9,
    T.TQ2_0: 0.9,
}
USES_IMATRIX: set[GGMLQuantizationType] = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1}
OURS: list[GGMLQuantizationType] = sorted(set(MAX_REL_RMSE) & set(implemented_types()), key=_type_name)
# gguf-py's numpy quantizers match ggml byte for byte on finite inputs without negative zeros.
GGUF_PY = [t for t in OURS if t not in (T.F32,)]


def _rel_rmse(x: np.ndarray, q: np.ndarray, qtype: GGMLQuantizationType) -> float:
    y = dequantize(q, qtype).reshape(x.shape)
    return float(np.sqrt(np.mean((y - x) ** 2)) / np.sqrt(np.mean(x**2)))


def _gaussian(rows: int, cols: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, cols)).astype(np.float32)


@pytest.mark.parametrize("qtype", OURS, ids=_type_name)
def test_dequantized_error_is_small(qtype: GGMLQuantizationType) -> None:
    x = _gaussian(8, 1024)
    assert _rel_rmse(x, quantize(x, qtype), qtype) <= MAX_REL_RMSE[qtype]


@pytest.mark.parametrize("qtype", [t for t in OURS if t in USES_IMATRIX], ids=_type_name)
def test_imatrix_lowers_the_weighted_error(qtype: GGMLQuantizationType) -> None:
    x = _gaussian(16, 1024, seed=1)
    im = np.random.default_rng(2).exponential(size=1024).astype(np.float32) ** 3
    y_plain = dequantize(quantize(x, qtype), qtype).reshape(x.shape)
    y_im = dequantize(quantize(x, qtype, im), qtype).reshape(x.shape)
    err_plain = float(np.sum(im * (y_plain - x) ** 2))
    err_im = float(np.sum(im * (y_im - x) ** 2))
    assert err_im < err_plain
    assert _rel_rmse(x, quantize(x, qtype, im), qtype) <= 1.5 * MAX_REL_RMSE[qtype]


@pytest.mark.parametrize("qtype", GGUF_PY, ids=_type_name)
def test_same_bytes_as_gguf_py(qtype: GGMLQuantizationType) -> None:
    x = _gaussian(6, 512, seed=4) * np.float32(3.0)
    ours = quantize(x, qtype)
    theirs = np.ascontiguousarray(gguf_quantize(x, qtype)).view(np.uint8).reshape(ours.shape)
    assert np.array_equal(ours, theirs)


def test_imatrix_ignored_where_ggml_ignores_it() -> None:
    x = _gaussian(4, 512, seed=5)
    im = np.random.default_rng(6).exponential(size=512).astype(np.float32)
    for qtype in set(OURS) - USES_IMATRIX:
        assert np.array_equal(quantize(x, qtype), quantize(x, qtype, im)), qtype.name


def test_zero_block_sign_conventions() -> None:
    """ggml stores d = -0.0 (0x8000) for an all-zero Q4_0 block without imatrix, +0.0 with one."""
    x = np.zeros((1, 32), dtype=np.float32)
    plain = quantize(x, "Q4_0")
    assert plain[0, :2].tolist() == [0x00, 0x80] and set(plain[0, 2:].tolist()) == {0x88}
    weighted = quantize(x, "Q4_0", np.ones(32, dtype=np.float32))
    assert not weighted.any()
    # Q4_1 min keeps the sign of the first zero of a block that has no negative value.
    y = np.zeros((1, 32), dtype=np.float32)
    y[0, 0] = -0.0
    y[0, 5] = 1.0
    assert quantize(y, "Q4_1")[0, 2:4].tolist() == [0x00, 0x80]


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "MXFP4"])
def test_whole_chunks_match_ggml(qtype: str) -> None:
    """Full chunks (CHUNK_VALUES values, whose quad transposition runs in two halves) and a short
    last chunk give ggml's bytes; the rows' scales differ so that every block's bytes do."""
    from gguf_recipe.quants import CHUNK_VALUES

    cols = 4096
    rows = 2 * CHUNK_VALUES // cols + 3
    x = _gaussian(rows, cols, seed=7) * np.geomspace(1e-3, 1e3, rows, dtype=np.float32)[:, None]
    t = GGMLQuantizationType[qtype]
    assert np.array_equal(quantize(x, t, threads=1), ggml_bytes(x, t, None))


# Bytes of ggml's quantize_row_q*_ref (ggml-quants.c built like the oracle's libggml-base) for four
# blocks: subnormals (1/d overflows; C's int8 conversion of +-inf gives 0), NaN + inf (NaN skipped,
# inf is the max), all NaN (C keeps its initial max/min), -inf + NaN.
_C_EXTREME_BLOCKS = {
    "Q4_0": "00800000000000000000000000000000000000fc88888888808888888880888888888888"
    "008000000000000000000000000000000000007c88888888088888808888888888888888",
    "Q4_1": "0000008000000000000000000000000000000000007c00c200000000000000000000000000000000"
    "00fc007c00000000000000000000000000000000007c00fc00000000000000000000000000000000",
    "Q5_0": "0080000000000000000000000000000000000000000000fceffdffff00000000000000000000000000000000"
    "00800000000000000000000000000000000000000000007c7fffefff00000000000000000000000000000000",
    "Q5_1": "000000800000000000000000000000000000000000000000007c00c20000000000000000000000000000000000000000"
    "00fc007c0000000000000000000000000000000000000000007c00fc0000000000000000000000000000000000000000",
    # amax = MAX(amax, fabsf(v)) restarts after a NaN (NaN > v is false): the last block's d comes
    # from the elements after its NaN, so -inf before it gives 0.
    "Q8_0": "0000" + "00" * 32 + "007c" + "00" * 32 + "007e" + "00" * 32 + "0820"
    "8189919aa2aab200c3cbd3dbe3ecf4fc040c141d002d353d464e565e666f777f",
}


@pytest.mark.parametrize("qtype", sorted(_C_EXTREME_BLOCKS))
def test_reference_paths_follow_c_on_extreme_blocks(qtype: str) -> None:
    j = np.arange(32, dtype=np.float32)
    subnormal = (j - 13) * np.float32(1e-40)
    with_inf = np.linspace(-3, 2, 32).astype(np.float32)
    with_inf[4], with_inf[9] = np.nan, np.inf
    all_nan = np.full(32, np.nan, dtype=np.float32)
    with_neg_inf = np.linspace(-1, 1, 32).astype(np.float32)
    with_neg_inf[7], with_neg_inf[20] = -np.inf, np.nan
    x = np.concatenate([subnormal, with_inf, all_nan, with_neg_inf])[None, :]
    assert quantize(x, qtype).tobytes().hex() == _C_EXTREME_BLOCKS[qtype]


def test_q8_0_follows_c_after_a_nan() -> None:
    """Q8_0's amax covers only the elements after a block's last NaN (C bytes, as above): earlier
    larger values give |x*id| > 127, stored as the low byte of C's int conversion (-900 -> -191 ->
    0x41); a block ending in NaN has d = NaN (fp16 0x7e00) and all-zero levels; 3e38 * id is past
    the int32 range (0)."""
    wraps = np.linspace(-900, 600, 32).astype(np.float32)
    wraps[25] = np.nan
    ends_nan = np.linspace(-2, 2, 32).astype(np.float32)
    ends_nan[2], ends_nan[31] = -np.nan, np.nan
    overflow = np.full(32, 1e-3, dtype=np.float32)
    overflow[:3] = 3e38, np.nan, -1e5
    x = np.concatenate([wraps, ends_nan, overflow])[None, :]
    assert quantize(x, "Q8_0").tobytes().hex() == (
        "b944414c56606a757f89939ea8b2bcc7d1dbe5f0fa040e19232d37004c56606b757f"
        "007e" + "00" * 32 + "2762000081" + "00" * 29
    )


def test_legacy_scale_fp16_matches_ieee_rounding() -> None:
    """The legacy types' fp16 scales, written into the strided scale columns of the output blocks, are
    GGML_FP32_TO_FP16 (IEEE round to nearest even; NaN as ``sign | 0x7E00``): every float32 exponent,
    with mantissas on and around each rounding boundary (ties, one ulp either side) and both signs,
    two scale rows at once as Q4_1/Q5_1 store them."""
    from gguf_recipe.quants.legacy import _scale_fp16_into, _work

    exponents = np.arange(256, dtype=np.uint32) << np.uint32(23)
    kept = (np.arange(1 << 10, dtype=np.uint32) << np.uint32(13))[::7]
    dropped = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF], dtype=np.uint32)
    bits = (exponents[:, None, None] | kept[None, :, None] | dropped[None, None, :]).reshape(-1)
    bits = np.concatenate([bits, bits | np.uint32(0x80000000)])
    v = bits.view(np.float32).reshape(2, -1)
    nb = v.shape[1]
    dst = np.zeros((nb, 2), dtype=np.uint16)
    with np.errstate(all="ignore"):
        _scale_fp16_into(_work(nb), v, dst)
        expected = v.astype(np.float16).view(np.uint16).T.copy()
    nan = np.isnan(v.T)
    expected[nan] = (expected[nan] & np.uint16(0x8000)) | np.uint16(0x7E00)
    assert np.array_equal(dst, expected)


def test_legacy_fast_scale_fp16_is_ieee_or_declines() -> None:
    """The reference paths' fast fp16 conversion (normal results only) on groups of scales: each
    float32 exponent on the rounding boundaries above, and the values next to the smallest normal
    fp16 number (2^-14) and the largest (65504). Where it accepts a group, the bits are IEEE's; it
    accepts exactly the groups whose values all round to normal fp16 numbers (exponents 113..142)
    and declines the others (zeros, subnormals, overflow to inf, NaN), since its range test replaces
    the callers' own tests."""
    from gguf_recipe.quants.legacy import _scale_fp16_fast, _work

    kept = (np.arange(1 << 10, dtype=np.uint32) << np.uint32(13))[::7]
    dropped = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF], dtype=np.uint32)
    mantissas = (kept[:, None] | dropped[None, :]).reshape(-1)
    groups = [(np.uint32(e) << np.uint32(23)) | mantissas for e in range(256)]
    top = np.arange(0x7FE000, 0x800000, 0x400, dtype=np.uint32)  # the last 8 ulps of 11 bits
    groups += [(np.uint32(112) << np.uint32(23)) | top, (np.uint32(142) << np.uint32(23)) | top]
    accepted = []
    for g, magnitude in enumerate(groups):
        v = np.stack([magnitude, magnitude | np.uint32(0x80000000)]).view(np.float32)
        nb = v.shape[1]
        with np.errstate(all="ignore"):
            expected = v.astype(np.float16).view(np.uint16).T
            results = []
            for signed, rows in ((slice(None), v), (slice(1, 2), np.stack([np.abs(v[0]), v[1]]))):
                dst = np.zeros((nb, 2), dtype=np.uint16)
                results.append(_scale_fp16_fast(_work(nb), rows, dst, signed))
                assert not results[-1] or np.array_equal(dst, expected), g
            one = np.zeros((nb, 1), dtype=np.uint16)
            results.append(_scale_fp16_fast(_work(nb), v[1:], one))
            assert not results[-1] or np.array_equal(one, expected[:, 1:]), g
            # magnitudes with their signs given apart (Q4_0's d), alternating signs
            sign_bits = (np.arange(nb, dtype=np.uint32) % np.uint32(2)) << np.uint32(31)
            one = np.zeros((nb, 1), dtype=np.uint16)
            mags = v[:1]
            results.append(_scale_fp16_fast(_work(nb), mags, one, slice(0), sign_bits.view(np.float32)))
            signed_v = (magnitude | sign_bits).view(np.float32)
            assert not results[-1] or np.array_equal(
                one[:, 0], signed_v.astype(np.float16).view(np.uint16)
            ), g
        assert len(set(results)) == 1, g
        if results[0]:
            accepted.append(g)
    assert accepted == list(range(113, 143))


moderate_f32 = st.floats(min_value=-1e4, max_value=1e4, width=32, allow_nan=False)


@st.composite
def _case(
    draw: st.DrawFn, qtype: GGMLQuantizationType, elements: st.SearchStrategy[float]
) -> tuple[Any, ...]:
    block = GGML_QUANT_SIZES[qtype][0]
    unit = max(block, 32)
    rows = draw(st.integers(1, 8))
    cols = unit * draw(st.integers(1, 512 // unit if unit < 256 else 2))
    x = draw(hnp.arrays(np.float32, (rows, cols), elements=elements))
    im = draw(imatrices(cols))
    return x, im


@pytest.mark.parametrize("qtype", OURS, ids=_type_name)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_any_finite_input_gives_the_right_size(qtype: GGMLQuantizationType, data: st.DataObject) -> None:
    x, im = data.draw(_case(qtype, FINITE_F32))
    with np.errstate(divide="raise", over="raise", invalid="raise"):  # no numpy warning may leak out
        q = quantize(x, qtype, im, threads=1)
    block, type_size = GGML_QUANT_SIZES[qtype]
    assert q.dtype == np.uint8
    assert q.shape == (x.shape[0], x.shape[1] // block * type_size)


@pytest.mark.parametrize("qtype", OURS, ids=_type_name)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_moderate_input_round_trips(qtype: GGMLQuantizationType, data: st.DataObject) -> None:
    x, im = data.draw(_case(qtype, moderate_f32))
    q = quantize(x, qtype, im, threads=1)
    y = dequantize(q, qtype).reshape(x.shape)
    assert np.all(np.isfinite(y))
    if im is not None:
        # a weighted fit may land far outside the block's range (importances of 1e5 next to 0 or 1 pull
        # the free min/scale of Q4_1 to 2.4x the largest value): the bar is ggml's own bytes
        np.testing.assert_array_equal(q, ggml_bytes(x, qtype, im))
        return
    # no garbage: every value stays near its block's range (MXFP4's grid may overshoot).
    block = max(GGML_QUANT_SIZES[qtype][0], 32)
    xb = x.reshape(-1, block)
    amax = np.abs(xb).max(axis=1, keepdims=True)
    assert np.all(np.abs(y.reshape(-1, block)) <= 2 * amax + 1e-5)  # + fp16 subnormal rounding


def test_weighted_q4_1_fit_far_outside_the_block_is_ggmls() -> None:
    """Found by hypothesis: huge importances next to ones and zeros make ggml's weighted Q4_1 fit put
    a block's levels 2.4x past its largest value. Ours gives the same bytes (the fit, not garbage)."""
    flat = np.zeros(2 * 416, dtype=np.float32)
    for i, v in {
        144: 5.0,
        416: 8722.0,
        417: 8441.0,
        418: 8723.25,
        419: 3222.0,
        420: 648.0,
        422: 921.25,
    }.items():
        flat[i] = v
    flat[[423, 609, 613, 640, 641]] = [1238.21875, -3173.0, 3209.0, 9318.0, 9624.0]
    x = flat.reshape(2, 416)
    im = np.ones(416, dtype=np.float32)
    im[[0, 199]] = 0.0
    im[[192, 194, 195, 196, 209]] = [682447.0, 589643.0, 252663.0, 683298.0, 271110.0]
    q = quantize(x, T.Q4_1, im, threads=1)
    np.testing.assert_array_equal(q, ggml_bytes(x, T.Q4_1, im))
    y = dequantize(q, T.Q4_1).reshape(-1, 32)
    assert np.abs(y).max(axis=1)[19] > 2 * np.abs(x.reshape(-1, 32)).max(axis=1)[19]
