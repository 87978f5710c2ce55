"""Fuzzing the readers of untrusted files (issue 12): any bytes given as a GGUF model or as an imatrix
give a valid result or the reader's own clear error (GGUFReadError, SourceFormatError, ImatrixError),
never another exception, and quickly (the deadline catches a hang or an endless loop)."""

from __future__ import annotations

import contextlib
import struct
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gguf_recipe.executor import ImatrixError, SourceFormatError, SourceModel, load_imatrix
from gguf_recipe.model import read_model
from gguf_recipe.model.header import GGUFReadError, parse_header
from helpers.executor import llama_tensors, write_gguf_imatrix, write_legacy_imatrix, write_model

FUZZ = settings(
    max_examples=300,
    deadline=2000,  # ms per example: generous on a busy machine, still catches a hang
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

_DIR = Path(tempfile.mkdtemp(prefix="gguf-recipe-fuzz-"))
MODEL = write_model(_DIR / "valid.gguf", llama_tensors(3, n_layer=1), n_layer=1).read_bytes()
LEGACY = write_legacy_imatrix(
    _DIR / "valid.dat", {"blk.0.attn_q.weight": (2, np.ones(64, np.float32))}
).read_bytes()
GGUF_IM = write_gguf_imatrix(
    _DIR / "valid-im.gguf", {"blk.0.attn_q.weight": (np.ones((2, 64)), np.array([1.0, 3.0]))}
).read_bytes()
HEADER_END = parse_header(memoryview(MODEL), Path("valid.gguf")).header_bytes


def _file(data: bytes, name: str) -> Path:
    p = _DIR / name
    p.write_bytes(data)
    return p


def mutated(base: bytes, region: int) -> st.SearchStrategy[bytes]:
    """``base`` with a few bytes overwritten (mostly inside its first ``region`` bytes: the header),
    32- and 64-bit fields set to edge values, and a truncation."""
    edges = [0, 1, 2, 3, 4, 9, 31, 32, 255, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**63, 2**64 - 1]

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        data = bytearray(base)
        for _ in range(draw(st.integers(1, 4))):
            kind = draw(st.sampled_from(["byte", "u32", "u64"]))
            width = {"byte": 1, "u32": 4, "u64": 8}[kind]
            pos = draw(st.integers(0, min(region, len(data)) - width))
            if kind == "byte":
                data[pos] = draw(st.integers(0, 255))
            else:
                v = draw(st.sampled_from([e for e in edges if e < 1 << (8 * width)]))
                data[pos : pos + width] = v.to_bytes(width, "little")
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data)))]
        return bytes(data)

    return build()


ANY_BYTES = st.one_of(
    st.binary(max_size=512),
    st.binary(max_size=256).map(lambda b: b"GGUF" + struct.pack("<I", 3) + b),
)


def check_header(data: bytes) -> None:
    for strict in (True, False):
        try:
            h = parse_header(memoryview(data), Path("fuzz.gguf"), strict=strict)
        except GGUFReadError:
            continue
        for kv in h.kvs:  # the values decode (the compiler reads them)
            _ = kv.value
    p = _file(data, "fuzz.gguf")
    try:
        m = read_model(p)
        _ = (m.n_layer, m.n_head, m.n_head_kv, m.n_gqa, m.n_expert, m.n_embd, m.n_vocab, m.size_class)
    except GGUFReadError:
        pass
    try:
        with SourceModel(p) as src:
            for t in src.tensors.values():
                src.read_raw_rows(t, 0, min(1, t.n_rows))
    except SourceFormatError:
        pass


@FUZZ
@given(ANY_BYTES)
def test_header_reader_any_bytes(data: bytes) -> None:
    check_header(data)


@FUZZ
@given(mutated(MODEL, HEADER_END))
def test_header_reader_mutated_model(data: bytes) -> None:
    check_header(data)


def check_imatrix(data: bytes) -> None:
    p = _file(data, "fuzz.imatrix")
    try:
        im = load_imatrix(p)
    except ImatrixError:
        return
    for name, e in im.entries.items():
        assert np.isfinite(e).all() and (e >= 0).all(), name
        with contextlib.suppress(ImatrixError):
            im.weights_for(name, [64, 4])


@FUZZ
@given(st.one_of(st.binary(max_size=512), mutated(LEGACY, len(LEGACY))))
def test_legacy_imatrix_reader(data: bytes) -> None:
    check_imatrix(data)


@FUZZ
@given(mutated(GGUF_IM, len(GGUF_IM)))
def test_gguf_imatrix_reader(data: bytes) -> None:
    check_imatrix(data)


@pytest.mark.parametrize("data", [MODEL, LEGACY, GGUF_IM])
def test_the_seeds_are_valid(data: bytes) -> None:
    if data is MODEL:
        parse_header(memoryview(data), Path("m"))
    else:
        assert len(load_imatrix(_file(data, "seed")).entries) == 1
