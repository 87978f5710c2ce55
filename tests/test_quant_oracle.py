"""Every oracle vector that ggml's ggml_quantize_chunk produced must be reproduced byte for byte."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import numpy as np
import pytest

from conftest import ORACLE
from gguf_recipe.quants import QuantizationError, implemented_types, parse_qtype, quantize

INDEX: dict[str, Any] = json.loads((ORACLE / "quant" / "index.json").read_text())
IMPLEMENTED = {t.name for t in implemented_types()}


@cache
def _archive(type_name: str) -> Any:
    return np.load(ORACLE / "quant" / INDEX["types"][type_name]["file"])


CASES = [
    pytest.param(type_name, vec, id=f"{type_name}-{vec['name']}")
    for type_name, info in INDEX["types"].items()
    for vec in info["vectors"]
]


@pytest.mark.parametrize(("type_name", "vec"), CASES)
def test_matches_ggml_bytes(type_name: str, vec: dict[str, Any]) -> None:
    if type_name not in IMPLEMENTED:
        pytest.skip(f"{type_name} quantizer not implemented yet")
    data = _archive(type_name)
    x = data[vec["x_key"]]
    imatrix = data[vec["imatrix_key"]] if vec["imatrix_key"] else None
    expected = data[vec["q_key"]]
    got = quantize(x, type_name, imatrix, threads=1)
    assert got.shape == expected.shape
    if not np.array_equal(got, expected):
        bad_rows = np.flatnonzero((got != expected).any(axis=1))
        first = int(np.flatnonzero(got[bad_rows[0]] != expected[bad_rows[0]])[0])
        pytest.fail(f"{len(bad_rows)} of {len(got)} rows differ; first at row {bad_rows[0]}, byte {first}")


@pytest.mark.parametrize("type_name", sorted(IMPLEMENTED))
def test_threads_do_not_change_bytes(type_name: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((37, 512)).astype(np.float32)
    im = rng.exponential(size=512).astype(np.float32)
    assert np.array_equal(quantize(x, type_name, im, threads=1), quantize(x, type_name, im, threads=2))


def test_unknown_type_is_a_clear_error() -> None:
    with pytest.raises(QuantizationError, match="unknown quantization type 'Q9_Z'"):
        parse_qtype("Q9_Z")
