"""k-quants (Q2_K..Q6_K): reconstruction error, shape/size properties, imatrix handling.

Byte-exactness against ggml is covered by tests/test_quant_oracle.py; these tests check the quantizers'
behaviour on inputs the oracle does not contain.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from gguf_recipe.quants import quantize, spec_for

KQUANTS = ["Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]

# RMS error bound for N(0, 1) inputs (measured ~0.29, 0.15, 0.071, 0.036, 0.018).
RMSE_BOUND = {"Q2_K": 0.33, "Q3_K": 0.18, "Q4_K": 0.085, "Q5_K": 0.045, "Q6_K": 0.022}


def _roundtrip(x: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    q = quantize(x, qtype, imatrix, threads=1)
    assert q.dtype == np.uint8
    assert q.shape == (x.shape[0], spec_for(qtype).row_bytes(x.shape[1]))
    return np.asarray(dequantize(q, GGMLQuantizationType[qtype]), dtype=np.float32).reshape(x.shape)


@pytest.mark.parametrize("qtype", KQUANTS)
@pytest.mark.parametrize("with_imatrix", [False, True])
def test_gaussian_reconstruction_error(qtype: str, with_imatrix: bool) -> None:
    rng = np.random.default_rng(11)
    x = rng.standard_normal((8, 1024)).astype(np.float32)
    im = rng.uniform(0.5, 2.0, size=1024).astype(np.float32) if with_imatrix else None
    y = _roundtrip(x, qtype, im)
    rmse = float(np.sqrt(np.mean((x - y) ** 2)))
    assert rmse < RMSE_BOUND[qtype]


@pytest.mark.parametrize("qtype", KQUANTS)
def test_error_scales_with_input(qtype: str) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 512)).astype(np.float32)
    for scale in (1e-3, 1e3):
        xs = (x * np.float32(scale)).astype(np.float32)
        y = _roundtrip(xs, qtype)
        assert float(np.sqrt(np.mean((xs - y) ** 2))) < RMSE_BOUND[qtype] * scale


@pytest.mark.parametrize("qtype", KQUANTS)
def test_zero_rows_dequantize_to_zero(qtype: str) -> None:
    x = np.zeros((3, 512), dtype=np.float32)
    im = np.ones(512, dtype=np.float32)
    assert not _roundtrip(x, qtype).any()
    assert not _roundtrip(x, qtype, im).any()


@pytest.mark.parametrize("qtype", KQUANTS)
def test_imatrix_weights_matter(qtype: str) -> None:
    """Heavily weighted columns are reconstructed better than with a flat imatrix."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 512)).astype(np.float32)
    im = np.full(512, 1e-3, dtype=np.float32)
    im[::8] = 1e3
    y_w = _roundtrip(x, qtype, im)
    y_flat = _roundtrip(x, qtype, np.ones(512, dtype=np.float32))
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
    y = _roundtrip(x, qtype)
    assert np.isfinite(y).all()
    blocks_x = np.abs(x.reshape(-1, 256)).max(axis=1)
    blocks_y = np.abs(y.reshape(-1, 256)).max(axis=1)
    assert (blocks_y <= blocks_x * 2.5 + 1e-6).all()
