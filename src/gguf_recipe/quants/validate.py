"""Row validation around quantization.

* ``check_finite_rows``: refuse NaN/Inf input before quantizing (ggml would quietly write garbage).
* ``validate_quantized_rows``: ggml's ``ggml_validate_row_data`` (ggml/src/ggml-quants.c), the check
  llama-quantize runs on every quantized tensor ("quantized data validation failed"): an fp16 scale or
  min that is inf/NaN (e.g. overflowed for |x| ~ 1e5), an MXFP4 exponent of 0xFF, or an inf/NaN value
  of an F32/F16/BF16 tensor.

Both are vectorized and raise ``RowValidationError`` naming the tensor and the first bad row and
block (column for float types).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from ..errors import GGUFRecipeError

__all__ = ["RowValidationError", "check_finite_rows", "validate_quantized_rows"]

T = GGMLQuantizationType

# Rows per step of the finiteness scan: bounds the temporary boolean mask for huge tensors.
_SCAN_VALUES = 1 << 22


class RowValidationError(GGUFRecipeError, ValueError):
    """Rows that must not be written: non-finite input, or output that ggml's validator rejects."""


# Byte offsets of the fp16 fields that ggml_validate_row_data checks, per block, in check order.
_FP16_FIELDS: dict[GGMLQuantizationType, tuple[tuple[str, int], ...]] = {
    T.Q4_0: (("d", 0),),
    T.Q4_1: (("d", 0), ("m", 2)),
    T.Q5_0: (("d", 0),),
    T.Q5_1: (("d", 0), ("m", 2)),
    T.Q8_0: (("d", 0),),
    T.Q2_K: (("d", 80), ("dmin", 82)),
    T.Q3_K: (("d", 108),),
    T.Q4_K: (("d", 0), ("dmin", 2)),
    T.Q5_K: (("d", 0), ("dmin", 2)),
    T.Q6_K: (("d", 208),),
    T.TQ1_0: (("d", 52),),
    T.TQ2_0: (("d", 64),),
    T.IQ1_S: (("d", 0),),
    T.IQ2_XXS: (("d", 0),),
    T.IQ2_XS: (("d", 0),),
    T.IQ2_S: (("d", 0),),
    T.IQ3_XXS: (("d", 0),),
    T.IQ3_S: (("d", 0),),
    T.IQ4_NL: (("d", 0),),
    T.IQ4_XS: (("d", 0),),
}
_IQ1_M_SCALES = 48  # block_iq1_m: qs[32], qh[16], scales[8] (the fp16 scale is spread over their top nibbles)


@dataclass(frozen=True)
class _Finding:
    row: int
    block: int
    what: str


def _first(mask: npt.NDArray[np.bool_]) -> tuple[int, int] | None:
    """(row, col) of the first True of a 2-D mask in C order, or None."""
    flat = np.flatnonzero(mask.reshape(-1))
    if flat.size == 0:
        return None
    row, col = divmod(int(flat[0]), mask.shape[1])
    return row, col


def _fp16_problem(bits: npt.NDArray[np.uint16]) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """(is_inf, is_nan) as ggml's isinf_fp16 / isnan_fp16."""
    exp_all = (bits & np.uint16(0x7C00)) == np.uint16(0x7C00)
    mant = (bits & np.uint16(0x03FF)) != 0
    return exp_all & ~mant, exp_all & mant


def _u16(blocks: npt.NDArray[np.uint8], offset: int) -> npt.NDArray[np.uint16]:
    lo = blocks[..., offset].astype(np.uint16)
    return lo | (blocks[..., offset + 1].astype(np.uint16) << np.uint16(8))


def _scan_fp16_fields(fields: tuple[tuple[str, npt.NDArray[np.uint16]], ...]) -> _Finding | None:
    """First block (C order) where a field is inf/NaN; within a block, fields in order, inf before NaN."""
    bad_any = np.zeros(fields[0][1].shape, dtype=bool)
    checks = []
    for name, bits in fields:
        is_inf, is_nan = _fp16_problem(bits)
        checks.append((name, is_inf, is_nan))
        bad_any |= is_inf | is_nan
    hit = _first(bad_any)
    if hit is None:
        return None
    r, b = hit
    for name, is_inf, is_nan in checks:
        if is_inf[r, b]:
            return _Finding(r, b, f"inf fp16 {name}")
        if is_nan[r, b]:
            return _Finding(r, b, f"nan fp16 {name}")
    raise AssertionError("unreachable")  # pragma: no cover


def _find_invalid(q: npt.NDArray[np.uint8], qtype: GGMLQuantizationType) -> _Finding | None:
    n_rows, row_bytes = q.shape
    if qtype == T.F32:
        bits32 = np.ascontiguousarray(q).view("<u4")
        exp_all = (bits32 & np.uint32(0x7F800000)) == np.uint32(0x7F800000)
        hit = _first(exp_all)
        if hit is None:
            return None
        is_nan = bool(bits32[hit] & np.uint32(0x007FFFFF))
        return _Finding(hit[0], hit[1], "nan value" if is_nan else "inf value")
    if qtype == T.F16:
        bits16 = np.ascontiguousarray(q).view("<u2")
        return _scan_fp16_fields((("value", bits16),))
    if qtype == T.BF16:
        # ggml counts NaNs and infs of the whole buffer and reports NaNs first.
        mag = np.ascontiguousarray(q).view("<u2") & np.uint16(0x7FFF)
        hit = _first(mag > np.uint16(0x7F80))
        if hit is not None:
            return _Finding(hit[0], hit[1], "nan value")
        hit = _first(mag == np.uint16(0x7F80))
        return None if hit is None else _Finding(hit[0], hit[1], "inf value")
    type_size = GGML_QUANT_SIZES[qtype][1]
    blocks = q.reshape(n_rows, row_bytes // type_size, type_size)
    if qtype == T.MXFP4:
        hit = _first(blocks[:, :, 0] == 0xFF)
        return None if hit is None else _Finding(hit[0], hit[1], "invalid e8m0 exponent 255")
    if qtype == T.IQ1_M:
        sc = [_u16(blocks, _IQ1_M_SCALES + 2 * k) for k in range(4)]
        scale = (
            (sc[0] >> np.uint16(12))
            | ((sc[1] >> np.uint16(8)) & np.uint16(0x00F0))
            | ((sc[2] >> np.uint16(4)) & np.uint16(0x0F00))
            | (sc[3] & np.uint16(0xF000))
        )
        return _scan_fp16_fields((("scale", scale),))
    fields = _FP16_FIELDS.get(qtype)
    if fields is None:
        raise RowValidationError(f"ggml_validate_row_data does not know type {qtype.name}")
    return _scan_fp16_fields(tuple((name, _u16(blocks, off)) for name, off in fields))


def _parse(qtype: str | int | GGMLQuantizationType) -> GGMLQuantizationType:
    if isinstance(qtype, GGMLQuantizationType):
        return qtype
    if isinstance(qtype, int):
        return GGMLQuantizationType(qtype)
    return GGMLQuantizationType[qtype.strip().upper()]


def validate_quantized_rows(
    q: npt.ArrayLike, qtype: str | int | GGMLQuantizationType, tensor_name: str
) -> None:
    """ggml_validate_row_data on quantized rows ``q`` (uint8 ``(n_rows, row_bytes)``; 1-D = one row).

    Raises ``RowValidationError`` naming the tensor, the first bad row and block (element for
    F32/F16/BF16) and what is wrong; returns None when ggml would accept the data.
    """
    t = _parse(qtype)
    arr = np.asarray(q)
    if arr.dtype != np.uint8:
        raise RowValidationError(f"{tensor_name}: quantized rows must be uint8 bytes, got {arr.dtype}")
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise RowValidationError(f"{tensor_name}: quantized rows must be 2-D, got shape {arr.shape}")
    type_size = GGML_QUANT_SIZES[t][1]
    if arr.shape[1] % type_size:
        raise RowValidationError(
            f"{tensor_name}: invalid row size {arr.shape[1]} for {t.name} (type size = {type_size})"
        )
    if arr.size == 0:
        return
    found = _find_invalid(arr, t)
    if found is not None:
        unit = "element" if t in (T.F32, T.F16, T.BF16) else "block"
        raise RowValidationError(
            f"{tensor_name}: quantized data validation failed ({t.name}): {found.what} "
            f"at row {found.row}, {unit} {found.block}"
        )


def check_finite_rows(rows: npt.ArrayLike, tensor_name: str) -> None:
    """Raise ``RowValidationError`` naming the tensor, row and column of the first NaN/Inf in ``rows``.

    ``rows`` is ``(n_rows, n_per_row)`` (1-D = one row). Scans in slices of rows so the temporary mask
    stays small for big tensors.
    """
    arr = np.asarray(rows)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise RowValidationError(f"{tensor_name}: rows must be 2-D, got shape {arr.shape}")
    if arr.size == 0 or not np.issubdtype(arr.dtype, np.floating):
        return
    step = max(1, _SCAN_VALUES // max(arr.shape[1], 1))
    for start in range(0, arr.shape[0], step):
        part = arr[start : start + step]
        finite = np.isfinite(part)
        if finite.all():
            continue
        hit = _first(~finite)
        assert hit is not None
        r, c = hit
        value = part[r, c]
        kind = "NaN" if np.isnan(value) else ("+inf" if value > 0 else "-inf")
        raise RowValidationError(
            f"{tensor_name}: input has a non-finite value ({kind}) at row {start + r}, column {c}"
        )
