"""ggml's own quantizer as the reference: ``ggml_quantize_chunk`` of llama-cpp-python's libggml-base
(built from its sdist's C, a test dependency), called through ctypes."""

from __future__ import annotations

import ctypes
from functools import cache
from typing import Any

import numpy as np
from gguf import GGMLQuantizationType
from gguf.constants import GGML_QUANT_SIZES


@cache
def _lib() -> Any:
    from llama_cpp import _ggml

    lib = _ggml.libggml
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    lib.ggml_quantize_init.restype = None
    lib.ggml_quantize_init.argtypes = [ctypes.c_int]
    return lib


def ggml_bytes(x: np.ndarray, qtype: GGMLQuantizationType, imatrix: np.ndarray | None) -> np.ndarray:
    """The bytes ggml writes for float32 rows ``x`` (n_rows, n_per_row), as uint8 (n_rows, row_bytes)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_rows, n_per_row = x.shape
    block, size = GGML_QUANT_SIZES[qtype]
    out = np.zeros((n_rows, n_per_row // block * size), dtype=np.uint8)
    im = None if imatrix is None else np.ascontiguousarray(imatrix, dtype=np.float32)
    lib = _lib()
    lib.ggml_quantize_init(int(qtype))
    lib.ggml_quantize_chunk(
        int(qtype),
        x.ctypes.data,
        out.ctypes.data,
        0,
        n_rows,
        n_per_row,
        None if im is None else im.ctypes.data,
    )
    return out
