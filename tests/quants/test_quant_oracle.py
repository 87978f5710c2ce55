"""Every oracle vector that ggml's ggml_quantize_chunk produced must be reproduced byte for byte."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import numpy as np
import pytest

from gguf_recipe.quants import QuantizationError, parse_qtype, quantize
from gguf_recipe.quants.registry import SPECS
from helpers.oracle_models import ORACLE

INDEX: dict[str, Any] = json.loads((ORACLE / "quant" / "index.json").read_text())
TYPES = sorted(t.name for t in SPECS)  # every type a recipe may ask for


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


@pytest.mark.parametrize("type_name", TYPES)
def test_threads_do_not_change_bytes(type_name: str) -> None:
    rng = np.random.default_rng(7)
    x = rng.standard_normal((37, 512)).astype(np.float32)
    im = rng.exponential(size=512).astype(np.float32)
    assert np.array_equal(quantize(x, type_name, im, threads=1), quantize(x, type_name, im, threads=2))


def test_the_oracle_covers_every_type() -> None:
    assert sorted(INDEX["types"]) == [t for t in TYPES if t != "F32"]  # F32 is a copy


def test_unknown_type_is_a_clear_error() -> None:
    with pytest.raises(QuantizationError, match="unknown quantization type 'Q9_Z'"):
        parse_qtype("Q9_Z")
