"""Row sampling and the error of one tensor's sampled rows in every candidate type.

ggml quantizes every row on its own (every block, in fact), so the bytes of a sampled row are the
bytes ``apply`` writes for that row, and the error over a sample of rows is an unbiased estimate of the
error over the tensor (exact when every row is sampled).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants

from .. import quants
from ..executor.errors import NonFiniteError
from ..executor.source import SourceModel
from ..llamacpp import is_quantized

__all__ = [
    "MIN_ROWS",
    "RowSample",
    "TensorSums",
    "TensorTask",
    "measure_task",
    "n_sample_rows",
    "sample_rows",
]

F32Array = npt.NDArray[np.float32]
F64Array = npt.NDArray[np.float64]
I64Array = npt.NDArray[np.int64]

# the fewest rows sampled from a tensor, however wide its rows (see n_sample_rows)
MIN_ROWS = 16


def n_sample_rows(n_rows: int, ne0: int, max_rows: int, max_values: int) -> int:
    """How many rows of a tensor are measured: ``min(n_rows, max_rows, max(MIN_ROWS, max_values // ne0))``.

    ``max_values`` bounds the work per tensor for very wide rows (a 70B model's ``ffn_down`` has rows
    of 28672 values); the work of a whole measurement is then at most
    ``n_tensors * max_values * (seconds per value of all candidate types)``, whatever the model's size.
    """
    by_values = max(MIN_ROWS, max_values // max(ne0, 1))
    return max(0, min(n_rows, max_rows, by_values))


def _rng(name: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}\0{name}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def sample_rows(name: str, n_rows: int, rows_per_mat: int, k: int, seed: int) -> I64Array:
    """``k`` distinct rows out of ``n_rows`` (sorted), chosen deterministically from the tensor name and
    ``seed``; spread evenly over the matrices (experts) of ``rows_per_mat`` rows each. All rows when
    ``k >= n_rows``."""
    if k >= n_rows:
        return np.arange(n_rows, dtype=np.int64)
    rng = _rng(name, seed)
    n_mats = n_rows // rows_per_mat if rows_per_mat else 1
    if n_mats <= 1:
        return np.sort(rng.choice(n_rows, size=k, replace=False)).astype(np.int64)
    # k // n_mats rows from every matrix, one more from k % n_mats matrices picked at random
    base, extra = divmod(k, n_mats)
    per = np.full(n_mats, base, dtype=np.int64)
    if extra:
        per[rng.choice(n_mats, size=extra, replace=False)] += 1
    parts = [
        m * rows_per_mat + rng.choice(rows_per_mat, size=int(c), replace=False)
        for m, c in enumerate(per)
        if c
    ]
    return np.sort(np.concatenate(parts)).astype(np.int64)


@dataclass(frozen=True)
class RowSample:
    """Which rows to measure and, with an imatrix, their matrices' weights."""

    rows: I64Array  # sorted row indices over all matrices
    rows_per_mat: int
    weights: F32Array | None  # (n_matrices used, ne0): the weights of the matrices the rows lie in
    weight_index: I64Array | None  # per sampled row: its matrix's row in ``weights``


@dataclass(frozen=True)
class TensorTask:
    name: str
    sample: RowSample
    types: tuple[GGMLQuantizationType, ...]


@dataclass(frozen=True)
class TensorSums:
    """Sums over the sampled rows (scaled to the whole tensor by the caller)."""

    name: str
    reference: float  # sum of w * x^2
    errors: dict[GGMLQuantizationType, float]  # sum of w * (x - x_hat)^2
    # types whose quantized rows dequantize to NaN/Inf (values beyond the type's scale range):
    # apply refuses to write them (ggml_validate_row_data), so they are no candidates
    invalid: tuple[GGMLQuantizationType, ...] = ()


def make_sample(
    name: str,
    shape: Sequence[int],
    k: int,
    seed: int,
    weights: F32Array | None,
) -> RowSample:
    """The rows to measure of a tensor of ``shape`` (ggml order) and their weights (``(n_matrices, ne0)``)."""
    n_rows = math.prod(int(d) for d in shape[1:])
    rows_per_mat = int(shape[1]) if len(shape) >= 2 else 1
    rows = sample_rows(name, n_rows, rows_per_mat, k, seed)
    if weights is None:
        return RowSample(rows, rows_per_mat, None, None)
    mats = rows // max(rows_per_mat, 1)
    used, index = np.unique(mats, return_inverse=True)
    return RowSample(rows, rows_per_mat, np.ascontiguousarray(weights[used]), index.astype(np.int64))


def _read_rows(src: SourceModel, name: str, rows: I64Array) -> F32Array:
    info = src.tensors[name]
    out = np.empty((len(rows), info.ne0), dtype=np.float32)
    i = 0
    n = len(rows)
    while i < n:  # runs of consecutive rows in one read
        j = i + 1
        while j < n and rows[j] == rows[j - 1] + 1:
            j += 1
        out[i:j] = src.read_f32_rows(info, int(rows[i]), j - i, allow_requantize=True)
        i = j
    return out


def measure_task(src: SourceModel, task: TensorTask) -> TensorSums:
    """Read the sampled rows, quantize them to every type (with the weights when given, as apply
    does: only for quantized types, each matrix with its own weights), dequantize with gguf-py, and
    sum the (weighted) squared errors in float64."""
    s = task.sample
    x = _read_rows(src, task.name, s.rows)
    _check_finite(x, task.name, s.rows)
    x64 = x.astype(np.float64)
    w64: F64Array | None = None
    groups: list[tuple[I64Array, F32Array | None]] = [(np.arange(len(s.rows), dtype=np.int64), None)]
    if s.weights is not None and s.weight_index is not None:
        w64 = s.weights.astype(np.float64)[s.weight_index]
        groups = [
            (np.flatnonzero(s.weight_index == g).astype(np.int64), s.weights[g])
            for g in range(len(s.weights))
        ]
    reference = _weighted_sum(x64 * x64, w64)
    errors: dict[GGMLQuantizationType, float] = {}
    invalid: list[GGMLQuantizationType] = []
    xhat = np.empty_like(x)
    for t in task.types:
        weighted = is_quantized(t)  # apply gives F16/BF16/F32 targets no weights
        for idx, w in groups:
            rows = x if len(groups) == 1 else x[idx]
            q = quants.quantize(rows, t, w if weighted else None, threads=1)
            deq = np.asarray(gguf_quants.dequantize(q, t), dtype=np.float32).reshape(len(idx), -1)
            if len(groups) == 1:
                xhat = deq
            else:
                xhat[idx] = deq
        d = x64 - xhat.astype(np.float64)
        err = _weighted_sum(d * d, w64)
        if math.isfinite(err):
            errors[t] = err
        else:
            invalid.append(t)
    return TensorSums(task.name, reference, errors, tuple(invalid))


def _check_finite(x: F32Array, name: str, rows: I64Array) -> None:
    """NaN/Inf in the sampled rows: the model is damaged (apply and llama-quantize refuse it)."""
    bad = ~np.isfinite(x)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise NonFiniteError(
            f"source tensor {name}: input has a non-finite value ({float(x[i, j])}) at row {int(rows[i])}, "
            f"column {j}; the model is damaged and llama-quantize refuses it too"
        )


def _weighted_sum(sq: F64Array, w: F64Array | None) -> float:
    """Sum of ``w * sq`` per row, then over rows (a fixed order: the same on every path)."""
    per_row = sq.sum(axis=1) if w is None else (sq * w).sum(axis=1)
    return float(math.fsum(per_row.tolist()))
