"""The one place that maps a ggml type to the function that quantizes it.

Each family module exposes one pure function per type::

    def quantize_q4_k(rows: F32Array, imatrix: F32Array | None) -> U8Array

``rows`` is a C-contiguous float32 array of shape ``(n_rows, n_per_row)`` with ``n_per_row`` a multiple
of the block size; ``imatrix`` is ``None`` or float32 of shape ``(n_per_row,)``. The result is uint8 of
shape ``(n_rows, row_bytes)`` holding exactly the bytes ggml writes. Functions marked ``writes_into``
also accept ``out=`` (the caller's output rows) and fill it, which saves a copy for the streaming types. Functions must not loop over blocks
in Python: every step runs over all blocks of the chunk at once.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ._numeric import F32Array, U8Array

QuantFn = Callable[[F32Array, "F32Array | None"], U8Array]


class QuantIntoFn(Protocol):
    """A quantizer that can also write straight into the caller's output rows."""

    def __call__(
        self, rows: F32Array, imatrix: F32Array | None, /, out: U8Array | None = None
    ) -> U8Array: ...


T = GGMLQuantizationType


@dataclass(frozen=True)
class QuantizerSpec:
    qtype: GGMLQuantizationType
    module: str
    function: str
    requires_imatrix: bool = False
    writes_into: bool = False  # the function takes ``out=`` (see QuantIntoFn)
    # Values per work item when it should differ from ``quants.CHUNK_VALUES`` (a plain copy has no
    # temporaries to keep near the cache, so it runs best in one call).
    chunk_values: int | None = None

    @property
    def block_size(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][0]

    @property
    def type_size(self) -> int:
        return GGML_QUANT_SIZES[self.qtype][1]

    def row_bytes(self, n_per_row: int) -> int:
        return n_per_row // self.block_size * self.type_size

    def load(self) -> QuantFn:
        module = importlib.import_module(f"{__package__}.{self.module}")
        fn: QuantFn = getattr(module, self.function)
        return fn


def _spec(
    qtype: GGMLQuantizationType,
    module: str,
    requires_imatrix: bool = False,
    writes_into: bool = False,
    chunk_values: int | None = None,
) -> QuantizerSpec:
    function = f"quantize_{qtype.name.lower()}"
    return QuantizerSpec(qtype, module, function, requires_imatrix, writes_into, chunk_values)


# ggml_quantize_requires_imatrix: IQ2_XXS, IQ2_XS and IQ1_S assert on a NULL imatrix.
SPECS: dict[GGMLQuantizationType, QuantizerSpec] = {
    s.qtype: s
    for s in (
        _spec(T.F32, "floats", writes_into=True, chunk_values=1 << 24),
        _spec(T.F16, "floats", writes_into=True),
        _spec(T.BF16, "floats", writes_into=True),
        _spec(T.Q8_0, "legacy", writes_into=True),
        _spec(T.Q4_0, "legacy", writes_into=True),
        _spec(T.Q4_1, "legacy", writes_into=True),
        _spec(T.Q5_0, "legacy", writes_into=True),
        _spec(T.Q5_1, "legacy", writes_into=True),
        _spec(T.Q2_K, "kquants"),
        _spec(T.Q3_K, "kquants", writes_into=True),
        _spec(T.Q4_K, "kquants"),
        _spec(T.Q5_K, "kquants"),
        _spec(T.Q6_K, "kquants"),
        _spec(T.IQ4_NL, "iq4"),
        _spec(T.IQ4_XS, "iq4"),
        _spec(T.TQ1_0, "ternary"),
        _spec(T.TQ2_0, "ternary"),
        _spec(T.MXFP4, "ternary"),
        _spec(T.IQ3_XXS, "iq3"),
        _spec(T.IQ3_S, "iq3"),
        _spec(T.IQ2_XXS, "iq2", requires_imatrix=True),
        _spec(T.IQ2_XS, "iq2", requires_imatrix=True),
        _spec(T.IQ2_S, "iq2"),
        _spec(T.IQ1_S, "iq1", requires_imatrix=True),
        _spec(T.IQ1_M, "iq1"),
    )
}
