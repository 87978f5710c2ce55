"""Low-level GGUF header reading and writing, with byte-exact copies of key/value pairs.

Reading is :mod:`gguf_recipe.model.header`'s parser in strict mode (every length checked against the
file size, the raw bytes of each key/value pair kept so the executor can copy metadata byte for
byte), with its errors raised as :class:`SourceFormatError`. The writer side serialises new key/value
pairs and tensor infos in the layout ggml's ``gguf.cpp`` expects.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from gguf import GGMLQuantizationType, GGUFValueType

from ..model import header as _header
from ..model.header import (
    DEFAULT_ALIGNMENT,
    GGUF_MAGIC,
    SCALAR_FORMATS,
    GGUFHeader,
    GGUFReadError,
    KeyValue,
    Scalar,
    TensorInfo,
    Value,
    align_up,
    row_nbytes,
    tensor_nbytes,
)
from .errors import SourceFormatError

__all__ = [
    "DEFAULT_ALIGNMENT",
    "GGUF_VERSION",
    "INT_RANGES",
    "GGUFHeader",
    "KeyValue",
    "OutTensor",
    "Scalar",
    "TensorInfo",
    "Value",
    "align_up",
    "pack_header",
    "pack_kv",
    "parse_header",
    "read_header",
    "row_nbytes",
    "tensor_nbytes",
]

GGUF_VERSION = 3
INT_RANGES: dict[GGUFValueType, tuple[int, int]] = {
    GGUFValueType.UINT8: (0, 2**8 - 1),
    GGUFValueType.INT8: (-(2**7), 2**7 - 1),
    GGUFValueType.UINT16: (0, 2**16 - 1),
    GGUFValueType.INT16: (-(2**15), 2**15 - 1),
    GGUFValueType.UINT32: (0, 2**32 - 1),
    GGUFValueType.INT32: (-(2**31), 2**31 - 1),
    GGUFValueType.UINT64: (0, 2**64 - 1),
    GGUFValueType.INT64: (-(2**63), 2**63 - 1),
}


# --------------------------------------------------------------------------------------------- reading


def parse_header(buf: memoryview, path: Path, file_size: int | None = None) -> GGUFHeader:
    """Parse a GGUF header from ``buf`` (the whole file, typically a memory map), strictly."""
    try:
        return _header.parse_header(buf, path, file_size, strict=True)
    except GGUFReadError as exc:
        raise SourceFormatError(str(exc)) from None


def read_header(path: str | os.PathLike[str]) -> tuple[GGUFHeader, bytes]:
    """Read and parse the header of the GGUF file at ``path``, strictly; also return its raw header bytes."""
    try:
        return _header.read_header(path, strict=True)
    except GGUFReadError as exc:
        raise SourceFormatError(str(exc)) from None


# --------------------------------------------------------------------------------------------- writing


def _pack_string(s: str | bytes) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return struct.pack("<Q", len(b)) + b


def _check_int(v: int, t: GGUFValueType, key: str) -> None:
    lo, hi = INT_RANGES[t]
    if not lo <= v <= hi:
        raise ValueError(f"value {v} of {key!r} does not fit {t.name}")


def _pack_scalar(v: Scalar, t: GGUFValueType, key: str) -> bytes:
    if t == GGUFValueType.STRING:
        if not isinstance(v, (str, bytes)):
            raise ValueError(f"{key!r}: expected a string, got {v!r}")
        return _pack_string(v)
    if t == GGUFValueType.BOOL:
        if not isinstance(v, bool):
            raise ValueError(f"{key!r}: expected a bool, got {v!r}")
        return struct.pack("<?", v)
    if t in (GGUFValueType.FLOAT32, GGUFValueType.FLOAT64):
        if isinstance(v, (str, bytes)) or not isinstance(v, (int, float)):
            raise ValueError(f"{key!r}: expected a number, got {v!r}")
        return struct.pack(SCALAR_FORMATS[t], float(v))
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{key!r}: expected an integer, got {v!r}")
    _check_int(v, t, key)
    return struct.pack(SCALAR_FORMATS[t], v)


def pack_kv(key: str, vtype: GGUFValueType, value: Value, array_type: GGUFValueType | None = None) -> bytes:
    """Serialise one key/value pair exactly as gguf.cpp writes it."""
    out = _pack_string(key) + struct.pack("<I", int(vtype))
    if vtype == GGUFValueType.ARRAY:
        if array_type is None or array_type == GGUFValueType.ARRAY:
            raise ValueError(f"{key!r}: arrays need a scalar element type")
        if not isinstance(value, list):
            raise ValueError(f"{key!r}: expected a list, got {value!r}")
        out += struct.pack("<IQ", int(array_type), len(value))
        return out + b"".join(_pack_scalar(v, array_type, key) for v in value)
    if isinstance(value, list):
        raise ValueError(f"{key!r}: a list needs the ARRAY type")
    return out + _pack_scalar(value, vtype, key)


@dataclass(frozen=True)
class OutTensor:
    name: str
    shape: tuple[int, ...]
    qtype: GGMLQuantizationType
    nbytes: int


HEADER_FIXED_NBYTES = 4 + 4 + 8 + 8  # magic, version, tensor count, key/value count


def tensor_info_nbytes(t: OutTensor) -> int:
    """The bytes ``pack_header`` writes for one tensor's info: name, dims, type, offset."""
    return 8 + len(t.name.encode("utf-8")) + 4 + 8 * len(t.shape) + 4 + 8


def pack_header(
    kv_blobs: Iterable[bytes], tensors: Sequence[OutTensor], alignment: int
) -> tuple[bytes, list[int]]:
    """Header bytes (padded to ``alignment``) and each tensor's offset in the data section."""
    blobs = list(kv_blobs)
    parts = [GGUF_MAGIC, struct.pack("<IQQ", GGUF_VERSION, len(tensors), len(blobs)), *blobs]
    offsets: list[int] = []
    offset = 0
    for t in tensors:
        name = t.name.encode("utf-8")
        if len(name) >= 64:  # GGML_MAX_NAME
            raise ValueError(f"tensor name {t.name!r} is longer than ggml's limit of 63 bytes")
        parts.append(_pack_string(name))
        parts.append(struct.pack("<I", len(t.shape)))
        parts.append(struct.pack(f"<{len(t.shape)}Q", *t.shape))
        parts.append(struct.pack("<IQ", int(t.qtype), offset))
        offsets.append(offset)
        offset = align_up(offset + t.nbytes, alignment)
    header = b"".join(parts)
    return header + bytes(align_up(len(header), alignment) - len(header)), offsets
