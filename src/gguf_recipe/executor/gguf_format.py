"""Low-level GGUF header reading and writing, with byte-exact copies of key/value pairs.

The reader parses a GGUF header (magic, version, key/values, tensor infos) from a memory map without
touching tensor data, checks every length against the file size and keeps the raw bytes of each
key/value pair so the executor can copy metadata byte for byte. The writer side serialises new
key/value pairs and tensor infos in the layout ggml's ``gguf.cpp`` expects.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from .errors import SourceFormatError

GGUF_MAGIC = b"GGUF"
GGUF_VERSION = 3
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS

_SCALAR_FORMATS: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<B",
    GGUFValueType.INT8: "<b",
    GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I",
    GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f",
    GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q",
    GGUFValueType.FLOAT64: "<d",
}
_SCALAR_DTYPES: dict[GGUFValueType, str] = {
    GGUFValueType.UINT8: "<u1",
    GGUFValueType.INT8: "<i1",
    GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2",
    GGUFValueType.UINT32: "<u4",
    GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4",
    GGUFValueType.BOOL: "<u1",
    GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8",
    GGUFValueType.FLOAT64: "<f8",
}
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

Scalar = int | float | bool | str | bytes
Value = Scalar | list[Scalar]


def align_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def tensor_nbytes(shape: Sequence[int], qtype: GGMLQuantizationType) -> int:
    """ggml_nbytes for a contiguous tensor of ``shape`` (ggml order, ne0 first)."""
    block, size = GGML_QUANT_SIZES[qtype]
    n = 1
    for d in shape:
        n *= int(d)
    return n // block * size


def row_nbytes(ne0: int, qtype: GGMLQuantizationType) -> int:
    block, size = GGML_QUANT_SIZES[qtype]
    return ne0 // block * size


# --------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class KeyValue:
    """One key/value pair as stored: ``raw`` is its exact serialised bytes (key included)."""

    key: str
    vtype: GGUFValueType
    raw: bytes
    value_offset: int  # offset of the value inside ``raw``
    array_type: GGUFValueType | None = None
    array_len: int = 0

    @property
    def value(self) -> Value:
        """The decoded value (strings as ``str``; arrays as lists)."""
        v, _ = _decode_value(memoryview(self.raw), self.value_offset, self.vtype, len(self.raw), self.key)
        return v


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order, ne0 first
    qtype: GGMLQuantizationType
    offset: int  # relative to the start of the data section
    nbytes: int
    file_index: int = 0  # which file of a split model holds it

    @property
    def ne0(self) -> int:
        return self.shape[0] if self.shape else 1

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.ne0 if self.ne0 else 0

    @property
    def row_bytes(self) -> int:
        return row_nbytes(self.ne0, self.qtype)


@dataclass(frozen=True)
class GGUFHeader:
    path: Path
    version: int
    kvs: tuple[KeyValue, ...]
    tensors: tuple[TensorInfo, ...]
    alignment: int
    header_bytes: int  # bytes up to the end of the tensor infos (before padding)
    data_offset: int  # absolute offset of the data section
    file_size: int
    _index: dict[str, KeyValue] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._index.update({kv.key: kv for kv in self.kvs})

    def kv(self, key: str) -> KeyValue | None:
        return self._index.get(key)

    def get(self, key: str, default: Value | None = None) -> Value | None:
        kv = self._index.get(key)
        return default if kv is None else kv.value


class _Cursor:
    def __init__(self, buf: memoryview, path: Path) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path
        self.size = len(buf)

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise SourceFormatError(
                f"{self.path}: truncated or corrupt GGUF header: reading {what} needs bytes "
                f"{self.pos}..{self.pos + n} but the file has {self.size} bytes"
            )

    def unpack(self, fmt: str, what: str) -> int | float | bool:
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        out: int | float | bool = v
        return out

    def u32(self, what: str) -> int:
        return int(self.unpack("<I", what))

    def u64(self, what: str) -> int:
        return int(self.unpack("<Q", what))

    def string_bytes(self, what: str) -> bytes:
        n = self.u64(f"length of {what}")
        self.need(n, what)
        out = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return out

    def string(self, what: str) -> str:
        raw = self.string_bytes(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SourceFormatError(f"{self.path}: {what} is not valid UTF-8") from None


def _value_type(code: int, path: Path, key: str) -> GGUFValueType:
    try:
        return GGUFValueType(code)
    except ValueError:
        raise SourceFormatError(
            f"{path}: key {key!r} has unknown value type {code} (corrupt header?)"
        ) from None


def _decode_value(buf: memoryview, pos: int, vtype: GGUFValueType, end: int, key: str) -> tuple[Value, int]:
    if vtype == GGUFValueType.STRING:
        (n,) = struct.unpack_from("<Q", buf, pos)
        pos += 8
        return bytes(buf[pos : pos + n]).decode("utf-8", errors="replace"), pos + n
    if vtype == GGUFValueType.ARRAY:
        atype_code, n = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        atype = GGUFValueType(atype_code)
        if atype == GGUFValueType.STRING:
            items: list[Scalar] = []
            for _ in range(n):
                s, pos = _decode_value(buf, pos, atype, end, key)
                assert isinstance(s, str)
                items.append(s)
            return items, pos
        dt = np.dtype(_SCALAR_DTYPES[atype])
        arr = np.frombuffer(buf, dtype=dt, count=n, offset=pos)
        pos += n * dt.itemsize
        if atype == GGUFValueType.BOOL:
            return [bool(b) for b in arr.tolist()], pos
        values: list[Scalar] = arr.tolist()
        return values, pos
    fmt = _SCALAR_FORMATS[vtype]
    (v,) = struct.unpack_from(fmt, buf, pos)
    return v, pos + struct.calcsize(fmt)


def _skip_value(
    cur: _Cursor, vtype: GGUFValueType, key: str, depth: int = 0
) -> tuple[GGUFValueType | None, int]:
    if vtype == GGUFValueType.STRING:
        n = cur.u64(f"length of the value of {key!r}")
        cur.need(n, f"value of {key!r}")
        cur.pos += n
        return None, 0
    if vtype == GGUFValueType.ARRAY:
        if depth > 0:
            raise SourceFormatError(
                f"{cur.path}: key {key!r} holds nested arrays, which ggml does not support"
            )
        atype = _value_type(cur.u32(f"array type of {key!r}"), cur.path, key)
        n = cur.u64(f"array length of {key!r}")
        if atype in (GGUFValueType.STRING, GGUFValueType.ARRAY):
            if atype == GGUFValueType.ARRAY:
                raise SourceFormatError(f"{cur.path}: key {key!r} holds nested arrays")
            if n > cur.size:
                cur.need(n * 8, f"array {key!r}")
            for _ in range(n):
                _skip_value(cur, atype, key, depth + 1)
        else:
            width = struct.calcsize(_SCALAR_FORMATS[atype])
            cur.need(n * width, f"array {key!r}")
            cur.pos += n * width
        return atype, n
    cur.need(struct.calcsize(_SCALAR_FORMATS[vtype]), f"value of {key!r}")
    cur.pos += struct.calcsize(_SCALAR_FORMATS[vtype])
    return None, 0


def parse_header(buf: memoryview, path: Path, file_size: int | None = None) -> GGUFHeader:
    """Parse a GGUF header from ``buf`` (the whole file, typically a memory map)."""
    cur = _Cursor(buf, path)
    size = len(buf) if file_size is None else file_size
    if cur.size < 4:
        raise SourceFormatError(f"{path}: not a GGUF file (only {cur.size} bytes)")
    magic = bytes(buf[:4])
    if magic != GGUF_MAGIC:
        hint = ""
        if magic in (b"ggml", b"ggmf", b"ggjt", b"lmgg", b"fmgg", b"tjgg"):
            hint = " (a pre-GGUF ggml file; convert it with llama.cpp's convert_llama_ggml_to_gguf.py)"
        elif magic[:2] == b"PK" or bytes(buf[:8]).startswith(b"\x80"):
            hint = " (looks like a PyTorch/zip checkpoint; convert it with convert_hf_to_gguf.py)"
        raise SourceFormatError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF'){hint}")
    cur.pos = 4
    version = cur.u32("version")
    if version & 0xFFFF == 0 and version != 0:
        raise SourceFormatError(f"{path}: big-endian GGUF files are not supported")
    if version not in (2, 3):
        raise SourceFormatError(f"{path}: unsupported GGUF version {version} (2 and 3 are supported)")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("key/value count")
    # every KV needs >= 12 bytes and every tensor info >= 24, so huge counts mean a corrupt header
    if n_kv * 12 > cur.size or n_tensors * 24 > cur.size:
        raise SourceFormatError(
            f"{path}: corrupt or truncated GGUF header ({n_kv} key/values and {n_tensors} tensors "
            f"cannot fit in {cur.size} bytes)"
        )
    kvs: list[KeyValue] = []
    seen: set[str] = set()
    for i in range(n_kv):
        start = cur.pos
        key = cur.string(f"key #{i}")
        if key in seen:
            raise SourceFormatError(f"{path}: duplicate key {key!r}")
        seen.add(key)
        vtype = _value_type(cur.u32(f"type of {key!r}"), path, key)
        value_offset = cur.pos - start
        atype, n = _skip_value(cur, vtype, key)
        kvs.append(KeyValue(key, vtype, bytes(buf[start : cur.pos]), value_offset, atype, n))
    alignment = DEFAULT_ALIGNMENT
    for kv in kvs:
        if kv.key == "general.alignment":
            if kv.vtype != GGUFValueType.UINT32:
                raise SourceFormatError(f"{path}: general.alignment must be a uint32")
            alignment = int(kv.value)  # type: ignore[arg-type]
            if alignment <= 0 or alignment & (alignment - 1):
                raise SourceFormatError(f"{path}: general.alignment {alignment} is not a power of two")
    infos: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]] = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = cur.string(f"name of tensor #{i}")
        if name in names:
            raise SourceFormatError(f"{path}: duplicate tensor name {name!r}")
        names.add(name)
        n_dims = cur.u32(f"dimension count of {name!r}")
        if n_dims > MAX_DIMS:
            raise SourceFormatError(f"{path}: tensor {name!r} has {n_dims} dimensions (max {MAX_DIMS})")
        shape = tuple(cur.u64(f"shape of {name!r}") for _ in range(n_dims))
        code = cur.u32(f"type of {name!r}")
        try:
            qtype = GGMLQuantizationType(code)
        except ValueError:
            raise SourceFormatError(f"{path}: tensor {name!r} has unknown ggml type {code}") from None
        if qtype not in GGML_QUANT_SIZES:
            raise SourceFormatError(f"{path}: tensor {name!r} has unsupported ggml type {qtype.name}")
        block = GGML_QUANT_SIZES[qtype][0]
        if shape and shape[0] % block:
            raise SourceFormatError(
                f"{path}: tensor {name!r} row length {shape[0]} is not a multiple of {qtype.name}'s block size {block}"
            )
        offset = cur.u64(f"offset of {name!r}")
        infos.append((name, shape, qtype, offset))
    header_bytes = cur.pos
    data_offset = align_up(header_bytes, alignment)
    data_size = size - data_offset
    tensors: list[TensorInfo] = []
    expected = 0
    for name, shape, qtype, offset in infos:
        nbytes = tensor_nbytes(shape, qtype)
        if offset % alignment:
            raise SourceFormatError(f"{path}: tensor {name!r} offset {offset} is not aligned to {alignment}")
        if offset != expected:
            raise SourceFormatError(
                f"{path}: tensor {name!r} has data offset {offset}, expected {expected} (corrupt header?)"
            )
        if offset + nbytes > data_size:
            raise SourceFormatError(
                f"{path}: file is truncated: tensor {name!r} needs bytes up to {data_offset + offset + nbytes} "
                f"but the file has {size} bytes"
            )
        tensors.append(TensorInfo(name, shape, qtype, offset, nbytes))
        expected = align_up(offset + nbytes, alignment)
    return GGUFHeader(path, version, tuple(kvs), tuple(tensors), alignment, header_bytes, data_offset, size)


def read_header(path: str | os.PathLike[str]) -> tuple[GGUFHeader, bytes]:
    """Read and parse the header of the GGUF file at ``path``; also return its raw header bytes."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise SourceFormatError(f"{p}: not a GGUF file (empty)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                try:
                    header = parse_header(view, p, size)
                    raw = bytes(view[: header.header_bytes])
                finally:
                    view.release()
    except FileNotFoundError:
        raise SourceFormatError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise SourceFormatError(f"{p}: is a directory, not a GGUF file") from None
    return header, raw


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
        return struct.pack(_SCALAR_FORMATS[t], float(v))
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"{key!r}: expected an integer, got {v!r}")
    _check_int(v, t, key)
    return struct.pack(_SCALAR_FORMATS[t], v)


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
