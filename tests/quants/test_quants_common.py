"""Properties every quantizer must have, whatever its family.

- Row independence: quantizing the rows one at a time (1-row calls, where a chunk may hold a single
  block or a single column of groups) gives the same bytes as one call over all rows, and as threads=2.
- quantize() never modifies its inputs (rows and imatrix).
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pytest

from gguf_recipe.quants import CHUNK_VALUES, implemented_types, quantize, spec_for
from gguf_recipe.quants._numeric import fp32_to_fp16_bits, page_aligned, scratch, seq_sum
from gguf_recipe.quants.registry import QuantIntoFn


def _c_sum(a: np.ndarray, from_first: bool) -> np.ndarray:
    """Reference: ``float s = 0 (or a[0]); for (i...) s += a[i];`` one slice at a time."""
    s: npt.NDArray[Any] = a[0].copy() if from_first else np.zeros(a.shape[1:], dtype=np.float32) + a[0]
    for i in range(1, a.shape[0]):
        s = s + a[i]
    return s


@pytest.mark.parametrize(
    "shape", [(32, 5), (32, 1), (256, 1), (7, 3, 2), (16, 1, 1), (1, 4), (300, 2), (8, 4096)]
)
@pytest.mark.parametrize("from_first", [False, True])
def test_seq_sum_is_sequential(shape: tuple[int, ...], from_first: bool) -> None:
    rng = np.random.default_rng(len(shape) * 100 + shape[0])
    a = (rng.standard_normal(shape) * np.exp(rng.standard_normal(shape) * 4)).astype(np.float32)
    want = _c_sum(a, from_first)
    assert np.array_equal(seq_sum(a, from_first=from_first).view(np.uint32), want.view(np.uint32))
    # the same along a middle axis, and through a non-contiguous (transposed) view
    b = np.ascontiguousarray(np.moveaxis(np.stack([a, -a]), 0, -1))  # (*shape, 2)
    got_mid = seq_sum(np.moveaxis(b, -1, 0), axis=1, from_first=from_first)
    assert np.array_equal(got_mid[0].view(np.uint32), want.view(np.uint32))
    # and along the last (innermost) axis, where numpy itself would sum pairwise
    c = np.ascontiguousarray(np.moveaxis(a, 0, -1))
    assert np.array_equal(seq_sum(c, axis=-1, from_first=from_first).view(np.uint32), want.view(np.uint32))
    out = np.empty(shape[1:], dtype=np.float32)
    seq_sum(a, from_first=from_first, out=out)
    assert np.array_equal(out.view(np.uint32), want.view(np.uint32))


def test_seq_sum_signed_zeros_and_empty() -> None:
    negz = np.full((4, 1), -0.0, dtype=np.float32)
    assert not np.signbit(seq_sum(negz)).any()  # 0.0f + -0.0f is +0.0
    assert np.signbit(seq_sum(negz, from_first=True)).all()
    assert np.signbit(seq_sum(np.full((4, 3), -0.0, dtype=np.float32), from_first=True)).all()
    assert seq_sum(np.zeros((0, 3), dtype=np.float32)).tolist() == [0.0, 0.0, 0.0]


def test_scratch_reuses_per_key() -> None:
    a = scratch("test.a", (4, 8))
    assert a.shape == (4, 8) and a.dtype == np.float32
    b = scratch("test.a", (2, 3))
    assert np.shares_memory(a, b)
    c = scratch("test.c", (2, 3), np.int32)
    assert c.dtype == np.int32 and not np.shares_memory(a, c)
    assert a.ctypes.data % 4096 == 0 and c.ctypes.data % 4096 == 0


def test_page_aligned_arrays_are_aligned_and_disjoint() -> None:
    """Work arrays (the legacy quad paths', every scratch buffer): the asked shapes and dtypes,
    C-contiguous, each on a page boundary (a set of 2 MiB or more on a huge page boundary), none
    overlapping another."""
    for specs, align in (
        ((((3, 5), np.float32), ((7,), np.uint64), ((2, 3, 4), np.int8)), 4096),
        ((((8, 16384), np.complex128), ((2, 32768), np.float32), ((9,), np.uint16)), 2 << 20),
    ):
        arrays = page_aligned(*specs)
        assert [(a.shape, a.dtype) for a in arrays] == [(shape, np.dtype(dt)) for shape, dt in specs]
        assert all(a.flags.c_contiguous and a.ctypes.data % 4096 == 0 for a in arrays)
        assert arrays[0].ctypes.data % align == 0
        for i, a in enumerate(arrays):
            a.view(np.uint8)[...] = i + 1
        for i, a in enumerate(arrays):
            assert np.all(a.view(np.uint8) == i + 1)


SHAPES = [(1, 32), (3, 32), (1, 256), (3, 256), (5, 512), (64, 256)]


def _cases() -> list[tuple[str, bool]]:
    cases = []
    for qt in implemented_types():
        spec = spec_for(qt)
        for with_imatrix in (False, True):
            if spec.requires_imatrix and not with_imatrix:
                continue
            cases.append((qt.name, with_imatrix))
    return cases


def _shaped_cases() -> list[tuple[str, bool, tuple[int, int]]]:
    return [
        (name, with_imatrix, shape)
        for name, with_imatrix in _cases()
        for shape in SHAPES
        if shape[1] % spec_for(name).block_size == 0
    ]


def _inputs(shape: tuple[int, int], seed: int, with_imatrix: bool) -> tuple[np.ndarray, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    rows = rng.standard_normal(shape).astype(np.float32)
    rows *= rng.lognormal(0.0, 1.0, (shape[0], 1)).astype(np.float32)  # rows of different ranges
    imatrix = rng.uniform(0.01, 4.0, shape[1]).astype(np.float32) if with_imatrix else None
    return rows, imatrix


@pytest.mark.parametrize(
    ("qtype", "with_imatrix", "shape"),
    _shaped_cases(),
    ids=lambda v: f"{v[0]}x{v[1]}" if isinstance(v, tuple) else str(v),
)
def test_rows_are_independent_and_inputs_untouched(
    qtype: str, with_imatrix: bool, shape: tuple[int, int]
) -> None:
    rows, imatrix = _inputs(shape, seed=shape[0] * 1000 + shape[1], with_imatrix=with_imatrix)
    rows_before = rows.copy()
    imatrix_before = None if imatrix is None else imatrix.copy()

    whole = quantize(rows, qtype, imatrix, threads=1)
    np.testing.assert_array_equal(rows, rows_before)
    if imatrix is not None:
        np.testing.assert_array_equal(imatrix, imatrix_before)

    for i in range(shape[0]):
        one = quantize(rows[i : i + 1], qtype, imatrix, threads=1)
        assert one.tobytes() == whole[i].tobytes(), f"row {i} differs when quantized alone"
        np.testing.assert_array_equal(rows, rows_before)
        if imatrix is not None:
            np.testing.assert_array_equal(imatrix, imatrix_before)

    threaded = quantize(rows, qtype, imatrix, threads=2)
    assert threaded.tobytes() == whole.tobytes()


@pytest.mark.parametrize(("qtype", "with_imatrix"), _cases())
def test_many_chunks_match_single_rows(qtype: str, with_imatrix: bool) -> None:
    """Enough rows to be split into several chunks (and run on 2 threads), row by row identical."""
    block = spec_for(qtype).block_size
    n_per_row = 256 if 256 % block == 0 else block
    n_rows = CHUNK_VALUES // n_per_row + 3
    rows, imatrix = _inputs((n_rows, n_per_row), seed=7, with_imatrix=with_imatrix)
    rows_before = rows.copy()
    whole = quantize(rows, qtype, imatrix, threads=2)
    np.testing.assert_array_equal(rows, rows_before)
    for i in (0, n_rows // 2, n_rows - 1):
        one = quantize(rows[i : i + 1], qtype, imatrix, threads=1)
        assert one.tobytes() == whole[i].tobytes(), f"row {i} differs when quantized alone"


def test_fp16_bits_match_numpy_conversion() -> None:
    """The integer-pass fp32 -> fp16 rounding gives numpy's (IEEE round-to-nearest-even) bits, except
    that every NaN becomes ggml's ``sign | 0x7E00`` (numpy keeps the payload).

    Every float32 exponent with the mantissas around each rounding boundary (half-way points, one ulp
    either side, carries into the exponent), both signs, plus zeros, subnormals, inf and NaN patterns.
    (Checked offline against every mantissa of the boundary exponents 0, 101-102, 112-113, 141-143, 255.)
    """
    exps = np.arange(256, dtype=np.uint32) << np.uint32(23)
    rng = np.random.default_rng(3)
    mant_hi = np.concatenate([np.arange(0, 1 << 10, 37), [(1 << 10) - 1]]).astype(np.uint32) << np.uint32(13)
    low = np.array([0, 1, 0xFFF, 0x1000, 0x1001, 0x1FFF, 0x0800], dtype=np.uint32)
    mants = (mant_hi[:, None] | low[None, :]).reshape(-1)
    bits = (exps[:, None] | mants[None, :]).reshape(-1)
    bits = np.concatenate([bits, rng.integers(0, 1 << 32, 200_000, dtype=np.uint64).astype(np.uint32)])
    bits = np.concatenate([bits, bits | np.uint32(0x80000000)])
    x = bits.view(np.float32)
    assert x.size >= 4096  # the fast path
    with np.errstate(all="ignore"):
        want = x.astype(np.float16).view(np.uint16)
        got = fp32_to_fp16_bits(x)
    nan = np.isnan(x)
    want[nan] = (want[nan] & np.uint16(0x8000)) | np.uint16(0x7E00)
    np.testing.assert_array_equal(got, want)
    small = np.concatenate([np.flatnonzero(nan)[:50], np.arange(50)])  # the small-array path
    np.testing.assert_array_equal(fp32_to_fp16_bits(x[small]), want[small])


_WRITES_INTO = [t for t in implemented_types() if spec_for(t).writes_into]


def test_the_direct_writers_include_the_streaming_types() -> None:
    names = {t.name for t in _WRITES_INTO}
    assert {"F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q3_K"} <= names


@pytest.mark.parametrize("qtype", _WRITES_INTO, ids=lambda t: t.name)
@pytest.mark.parametrize("with_imatrix", [False, True])
def test_writing_into_the_callers_rows_gives_the_returned_bytes(qtype: Any, with_imatrix: bool) -> None:
    """The ``out=`` path (what ``quantize`` uses for these types) fills the caller's rows with exactly
    the bytes the function returns without it, contiguous rows and rows of a wider array, and nothing
    else."""
    fn = spec_for(qtype).load()
    into = cast(QuantIntoFn, fn)
    x = np.random.default_rng(3).standard_normal((3, 512), dtype=np.float32)
    im = np.random.default_rng(4).exponential(1.0, 512).astype(np.float32) if with_imatrix else None
    expected = fn(x, im)
    contiguous = np.zeros_like(expected)
    assert np.shares_memory(into(x, im, out=contiguous), contiguous)
    assert np.array_equal(contiguous, expected)
    wide = np.full((3, 2 * expected.shape[1]), 0xAB, dtype=np.uint8)
    assert np.shares_memory(into(x, im, out=wide[:, : expected.shape[1]]), wide)
    assert np.array_equal(wide[:, : expected.shape[1]], expected)
    assert (wide[:, expected.shape[1] :] == 0xAB).all()
