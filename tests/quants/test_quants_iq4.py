"""IQ4_NL / IQ4_XS: codebook lookup, round-trip error and robustness.

Byte-exactness against ggml is covered by tests/quants/test_quant_oracle.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gguf_recipe.quants import iq4 as iq4_mod
from gguf_recipe.quants import quantize
from gguf_recipe.quants.iq4 import KVALUES_IQ4NL, best_index_iq4nl
from helpers.quants import FINITE_F32, gaussian_round_trip, imatrices, rel_rms_error, round_trip

TYPES = {"IQ4_NL": (32, 18), "IQ4_XS": (256, 136)}


def _best_index_reference(x: float) -> int:
    """Line-by-line port of ggml's best_index_int8 (float32 comparisons)."""
    val = [np.float32(v) for v in KVALUES_IQ4NL]
    fx = np.float32(x)
    if fx <= val[0]:
        return 0
    if fx >= val[-1]:
        return len(val) - 1
    ml, mu = 0, len(val) - 1
    while mu - ml > 1:
        mav = (ml + mu) // 2
        if fx < val[mav]:
            mu = mav
        else:
            ml = mav
    return mu - 1 if np.float32(fx - val[mu - 1]) < np.float32(val[mu] - fx) else mu


def test_best_index_matches_ggml_binary_search() -> None:
    rng = np.random.default_rng(0)
    mids = (KVALUES_IQ4NL[:-1].astype(np.float32) + KVALUES_IQ4NL[1:].astype(np.float32)) / 2
    near = np.concatenate([np.nextafter(mids, -np.inf), mids, np.nextafter(mids, np.inf)])
    xs = np.concatenate(
        [
            rng.uniform(-140, 140, 2000).astype(np.float32),
            near.astype(np.float32),
            KVALUES_IQ4NL.astype(np.float32),
            np.array([0.0, -0.0, -1e30, 1e30, np.inf, -np.inf, np.nan], dtype=np.float32),
        ]
    )
    got = best_index_iq4nl(xs)
    want = [_best_index_reference(float(v)) for v in xs]
    assert got.tolist() == want


@pytest.mark.parametrize("name", sorted(TYPES))
@pytest.mark.parametrize("with_imatrix", [False, True])
def test_round_trip_error(name: str, with_imatrix: bool) -> None:
    x, y = gaussian_round_trip(name, with_imatrix)
    assert rel_rms_error(x, y) < 0.09
    # every value lands on (scale * codebook entry) of the nearest kind: error well below the block max
    assert float(np.max(np.abs(y - x))) < 0.5 * float(np.max(np.abs(x)))


@pytest.mark.parametrize("name", sorted(TYPES))
def test_zero_rows(name: str) -> None:
    assert np.all(round_trip(np.zeros((2, 512), dtype=np.float32), name) == 0)


def _shapes(block: int) -> st.SearchStrategy[tuple[int, int]]:
    return st.tuples(st.integers(1, 8), st.integers(1, 4 if block == 256 else 12).map(lambda k: k * block))


@pytest.mark.parametrize("name", sorted(TYPES))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_finite_input(name: str, data: st.DataObject) -> None:
    block, type_size = TYPES[name]
    n_rows, n_per_row = data.draw(_shapes(block))
    x = data.draw(arrays(np.float32, (n_rows, n_per_row), elements=FINITE_F32))
    im = data.draw(imatrices(n_per_row))
    q = quantize(x, name, im, threads=1)
    assert q.dtype == np.uint8
    assert q.shape == (n_rows, n_per_row // block * type_size)


@pytest.mark.parametrize("name", sorted(TYPES))
def test_internal_steps_do_not_change_bytes(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(13)
    x = rng.standard_normal((4, 1024)).astype(np.float32)
    im = rng.exponential(size=1024).astype(np.float32)
    fn = iq4_mod.quantize_iq4_nl if name == "IQ4_NL" else iq4_mod.quantize_iq4_xs
    whole = fn(x, im)
    monkeypatch.setattr(iq4_mod, "_BLOCKS_PER_STEP", 24)
    assert np.array_equal(fn(x, im), whole)
