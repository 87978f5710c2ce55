"""The one GGUF header parser: magic, version, key/values and tensor infos, never tensor data.

It parses a header from a buffer (typically a memory map of the whole file), checks every length
against the file size and keeps the raw bytes of each key/value pair, so the executor can copy
metadata byte for byte and the compiler can decode what it needs. Every reader refuses what makes a
header invalid for ggml (duplicate keys and tensor names, more than 4 dimensions, element counts past
63 bits, unknown types, rows that are not whole blocks), so ``recipe plan`` and ``recipe apply`` accept
the same headers; ``strict`` adds the checks the executor needs before it trusts the file's data
layout (alignment, contiguous and in-bounds tensor data, UTF-8 strings); the compiler, which only
reads the header, does without those.

The model fingerprint (:func:`header_fingerprint`) is defined here too, so the compiler's and the
executor's are the same by construction.
"""

from __future__ import annotations

import hashlib
import math
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from ..errors import GGUFRecipeError

GGUF_MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4  # GGML_MAX_DIMS
# keys a metadata override may not touch: they describe the file layout or gguf-recipe's provenance
RESERVED_PREFIXES = ("split.", "gguf_recipe.")
RESERVED_KEYS = frozenset({"general.alignment"})

SCALAR_FORMATS: dict[GGUFValueType, str] = {
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

Scalar = int | float | bool | str | bytes
Value = Scalar | list[Scalar]


class GGUFReadError(GGUFRecipeError, ValueError):
    """The file is not a GGUF file this reader understands (or is truncated or corrupt)."""


def align_up(n: int, alignment: int) -> int:
    return (n + alignment - 1) // alignment * alignment


def tensor_nbytes(shape: Sequence[int], qtype: GGMLQuantizationType) -> int:
    """ggml_nbytes for a contiguous tensor of ``shape`` (ggml order, ne0 first)."""
    block, size = GGML_QUANT_SIZES[qtype]
    return math.prod(int(d) for d in shape) // block * size


def row_nbytes(ne0: int, qtype: GGMLQuantizationType) -> int:
    """ggml_row_size: type_size * ne0 / blck_size, with C integer division (truncates)."""
    block, size = GGML_QUANT_SIZES[qtype]
    return size * ne0 // block


def header_fingerprint(raw_headers: Sequence[bytes]) -> str:
    """The model fingerprint: sha256 of the header bytes (magic, key/values and tensor infos; no
    tensor data); for a split model, sha256 of the shards' hex digests joined."""
    digests = [hashlib.sha256(r).hexdigest() for r in raw_headers]
    return digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()


def ggml_n_dims(shape: Sequence[int]) -> int:
    """ggml_n_dims: trailing 1s do not count; at least 1."""
    dims = len(shape)
    while dims > 1 and shape[dims - 1] == 1:
        dims -= 1
    return max(dims, 1)


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
        v, _ = _decode_value(memoryview(self.raw), self.value_offset, self.vtype)
        return v


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as a GGUF header describes it (``file_index``: which file of a split model holds it)."""

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
        return math.prod(self.shape)

    @property
    def n_dims(self) -> int:
        return ggml_n_dims(self.shape)

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


MAX_STRING_BYTES = 1 << 28
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")


class _Cursor:
    def __init__(self, buf: memoryview, path: Path, strict: bool) -> None:
        self.buf = buf
        self.pos = 0
        self.path = path
        self.size = len(buf)
        self.strict = strict

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise GGUFReadError(
                f"{self.path}: truncated or corrupt GGUF header (unexpected end of file): reading {what} "
                f"needs bytes {self.pos}..{self.pos + n} but the file has {self.size} bytes"
            )

    def u32(self, what: str) -> int:
        pos = self.pos
        if pos + 4 > self.size:
            self.need(4, what)
        self.pos = pos + 4
        return int(_U32.unpack_from(self.buf, pos)[0])

    def u64(self, what: str) -> int:
        pos = self.pos
        if pos + 8 > self.size:
            self.need(8, what)
        self.pos = pos + 8
        return int(_U64.unpack_from(self.buf, pos)[0])

    def string(self, what: str) -> str:
        n = self.u64(f"length of {what}")
        if n > MAX_STRING_BYTES:
            # A length that still fits inside a huge (possibly sparse) file would otherwise copy gigabytes.
            raise GGUFReadError(
                f"{self.path}: corrupt GGUF header: {what} claims {n} bytes "
                f"(more than the {MAX_STRING_BYTES} a header string can plausibly hold)"
            )
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        if not self.strict:
            return raw.decode("utf-8", errors="replace")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFReadError(f"{self.path}: {what} is not valid UTF-8") from None

    def skip_strings(self, count: int, what: str) -> None:
        """Skip ``count`` length-prefixed strings (vocabularies hold 100k+ of them): the walk, and
        the error where it leaves the file, are those of reading them one by one."""
        if count > self.size:
            self.need(count * 8, what)
        pos, left = _skip_short_strings(self.buf, self.pos, count)
        pos, complete = _walk_strings(self.buf, pos, left)
        if complete and pos <= self.size:
            self.pos = pos
            return
        self.need(count * 8 + pos - self.pos, what)  # raises: report the whole array


_WINDOW = 1 << 20  # bytes of a string array looked at at once
_SHORT = 256  # strings shorter than this are found by their length field (7 zero bytes)


def _walk_strings(buf: memoryview, pos: int, count: int) -> tuple[int, bool]:
    """Step over ``count`` strings at ``pos`` one by one: (the end, True), or (the position of the
    first length field that is not inside ``buf``, False)."""
    unpack = _U64.unpack_from
    try:
        for _ in range(count):
            pos += 8 + unpack(buf, pos)[0]
    except (struct.error, OverflowError):  # OverflowError: a position past 2**63
        return pos, False
    return pos, True


def _skip_short_strings(buf: memoryview, pos: int, count: int) -> tuple[int, int]:
    """Walk the strings at ``pos`` a window at a time, with numpy: every position whose 8-byte length
    field reads below 256 is a candidate string start, and a run of candidates where each string ends
    at the next candidate is a run of consecutive strings (the walk reaches each in turn), stepped over
    at once; other strings (256 bytes or more) one by one. Returns (position, strings left) for
    :func:`_walk_strings`, which also takes over where stray candidates (zero bytes inside strings)
    break most runs."""
    end = len(buf)
    unpack = _U64.unpack_from
    while count >= 64 and end - pos >= 64:
        size = min(end - pos, _WINDOW, max(1 << 12, count * 32))
        chunk = bytes(buf[pos : pos + size])  # a copy: no numpy view keeps the caller's buffer exported
        rows = (size - 7) // 8
        short = np.empty((rows, 8), dtype=bool)  # short[r, k]: a length < 256 at 8 * r + k
        for k in range(8):
            np.less(np.frombuffer(chunk, dtype="<u8", count=rows, offset=k), _SHORT, out=short[:, k])
        starts = np.flatnonzero(short)
        ends = starts + 8 + np.frombuffer(chunk, dtype=np.uint8)[starts]
        breaks = np.flatnonzero(ends[:-1] != starts[1:])  # i: string i does not end at candidate i + 1
        n_starts, n_breaks = len(starts), len(breaks)
        if n_breaks * 4 > n_starts:
            break
        is_start = short.tobytes()
        rel, limit = 0, rows * 8
        while count and rel < limit:
            if is_start[rel]:
                i = int(np.searchsorted(starts, rel))
                b = int(np.searchsorted(breaks, i))
                last = int(breaks[b]) if b < n_breaks else n_starts - 1
                steps = min(last - i + 1, count)
                rel = int(ends[i + steps - 1])
                count -= steps
            else:
                rel += 8 + unpack(chunk, rel)[0]
                count -= 1
        pos += rel
    return pos, count


def _value_type(code: int, path: Path, key: str) -> GGUFValueType:
    try:
        return GGUFValueType(code)
    except ValueError:
        raise GGUFReadError(f"{path}: key {key!r} has unknown value type {code} (corrupt header?)") from None


def _decode_value(buf: memoryview, pos: int, vtype: GGUFValueType) -> tuple[Value, int]:
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
            unpack = _U64.unpack_from
            for _ in range(n):
                (size,) = unpack(buf, pos)
                pos += 8 + size
                items.append(str(buf[pos - size : pos], "utf-8", "replace"))
            return items, pos
        dt = np.dtype(_SCALAR_DTYPES[atype])
        arr = np.frombuffer(buf, dtype=dt, count=n, offset=pos)
        pos += n * dt.itemsize
        if atype == GGUFValueType.BOOL:
            return [bool(b) for b in arr.tolist()], pos
        values: list[Scalar] = arr.tolist()
        return values, pos
    fmt = SCALAR_FORMATS[vtype]
    (v,) = struct.unpack_from(fmt, buf, pos)
    return v, pos + struct.calcsize(fmt)


def _skip_value(cur: _Cursor, vtype: GGUFValueType, key: str) -> tuple[GGUFValueType | None, int]:
    if vtype == GGUFValueType.STRING:
        n = cur.u64(f"length of the value of {key!r}")
        cur.need(n, f"value of {key!r}")
        cur.pos += n
        return None, 0
    if vtype == GGUFValueType.ARRAY:
        atype = _value_type(cur.u32(f"array type of {key!r}"), cur.path, key)
        n = cur.u64(f"array length of {key!r}")
        if atype == GGUFValueType.ARRAY:
            raise GGUFReadError(f"{cur.path}: key {key!r} holds nested arrays, which ggml does not support")
        if atype == GGUFValueType.STRING:
            cur.skip_strings(n, f"array {key!r}")
        else:
            width = struct.calcsize(SCALAR_FORMATS[atype])
            cur.need(n * width, f"array {key!r}")
            cur.pos += n * width
        return atype, n
    width = struct.calcsize(SCALAR_FORMATS[vtype])
    cur.need(width, f"value of {key!r}")
    cur.pos += width
    return None, 0


def _alignment(kvs: Sequence[KeyValue], path: Path, strict: bool) -> int:
    alignment = DEFAULT_ALIGNMENT
    for kv in kvs:
        if kv.key != "general.alignment":
            continue
        if not strict:  # as llama.cpp's readers that do not check: the last one, 0 meaning the default
            v = kv.value
            alignment = int(v or DEFAULT_ALIGNMENT) if isinstance(v, (int, float)) else DEFAULT_ALIGNMENT
            continue
        if kv.vtype != GGUFValueType.UINT32:
            raise GGUFReadError(f"{path}: general.alignment must be a uint32")
        alignment = int(kv.value)  # type: ignore[arg-type]
        if alignment <= 0 or alignment & (alignment - 1):
            raise GGUFReadError(f"{path}: general.alignment {alignment} is not a power of two")
    return alignment


def parse_header(
    buf: memoryview, path: Path, file_size: int | None = None, *, strict: bool = True
) -> GGUFHeader:
    """Parse a GGUF header from ``buf`` (the whole file, typically a memory map).

    ``strict``: also refuse what the header allows but a reader of the tensor data must not trust
    (see the module docstring). Raises :class:`GGUFReadError`.
    """
    cur = _Cursor(buf, path, strict)
    size = len(buf) if file_size is None else file_size
    if cur.size < 4:
        raise GGUFReadError(f"{path}: not a GGUF file (only {cur.size} bytes)")
    magic = bytes(buf[:4])
    if magic != GGUF_MAGIC:
        hint = ""
        if magic in (b"ggml", b"ggmf", b"ggjt", b"lmgg", b"fmgg", b"tjgg"):
            hint = " (a pre-GGUF ggml file; convert it with llama.cpp's convert_llama_ggml_to_gguf.py)"
        elif magic[:2] == b"PK" or bytes(buf[:8]).startswith(b"\x80"):
            hint = " (looks like a PyTorch/zip checkpoint; convert it with convert_hf_to_gguf.py)"
        raise GGUFReadError(f"{path}: not a GGUF file (magic {magic!r}, expected b'GGUF'){hint}")
    cur.pos = 4
    version = cur.u32("version")
    if version & 0xFFFF == 0 and version != 0:
        raise GGUFReadError(f"{path}: big-endian GGUF files are not supported")
    if version not in (2, 3):
        raise GGUFReadError(f"{path}: unsupported GGUF version {version} (2 and 3 are supported)")
    n_tensors = cur.u64("tensor count")
    n_kv = cur.u64("key/value count")
    # every KV needs >= 12 bytes and every tensor info >= 24, so huge counts mean a corrupt header
    if strict and (n_kv * 12 > cur.size or n_tensors * 24 > cur.size):
        raise GGUFReadError(
            f"{path}: corrupt or truncated GGUF header ({n_kv} key/values and {n_tensors} tensors "
            f"cannot fit in {cur.size} bytes)"
        )
    kvs: list[KeyValue] = []
    seen: set[str] = set()
    for i in range(n_kv):
        start = cur.pos
        key = cur.string(f"key #{i}")
        if key in seen:
            raise GGUFReadError(f"{path}: duplicate key {key!r}")
        seen.add(key)
        vtype = _value_type(cur.u32(f"type of {key!r}"), path, key)
        value_offset = cur.pos - start
        atype, n = _skip_value(cur, vtype, key)
        kvs.append(KeyValue(key, vtype, bytes(buf[start : cur.pos]), value_offset, atype, n))
    alignment = _alignment(kvs, path, strict)
    infos: list[tuple[str, tuple[int, ...], GGMLQuantizationType, int]] = []
    names: set[str] = set()
    for i in range(n_tensors):
        # what makes a header invalid for every reader (gguf.cpp's gguf_init checks), lenient or not
        name = cur.string(f"name of tensor #{i}")
        if name in names:
            raise GGUFReadError(f"{path}: duplicate tensor name {name!r}")
        names.add(name)
        n_dims = cur.u32(f"dimension count of {name!r}")
        if n_dims > MAX_DIMS:
            raise GGUFReadError(f"{path}: tensor {name!r} has {n_dims} dimensions (max {MAX_DIMS})")
        shape = tuple(cur.u64(f"shape of {name!r}") for _ in range(n_dims))
        if any(d >= 1 << 63 for d in shape) or math.prod(shape) >= 1 << 63:
            raise GGUFReadError(
                f"{path}: tensor {name!r} has shape {list(shape)}: its element count does not fit in 63 bits"
            )
        code = cur.u32(f"type of {name!r}")
        try:
            qtype = GGMLQuantizationType(code)
        except ValueError:
            raise GGUFReadError(f"{path}: tensor {name!r} has unknown ggml type {code}") from None
        if qtype not in GGML_QUANT_SIZES:
            raise GGUFReadError(f"{path}: tensor {name!r} has unsupported ggml type {qtype.name}")
        block = GGML_QUANT_SIZES[qtype][0]
        if shape and shape[0] % block:
            raise GGUFReadError(
                f"{path}: tensor {name!r} row length {shape[0]} is not a multiple of {qtype.name}'s "
                f"block size {block}"
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
        if strict:
            if offset % alignment:
                raise GGUFReadError(f"{path}: tensor {name!r} offset {offset} is not aligned to {alignment}")
            if offset != expected:
                raise GGUFReadError(
                    f"{path}: tensor {name!r} has data offset {offset}, expected {expected} (corrupt header?)"
                )
            if offset + nbytes > data_size:
                raise GGUFReadError(
                    f"{path}: file is truncated: tensor {name!r} needs bytes up to "
                    f"{data_offset + offset + nbytes} but the file has {size} bytes"
                )
            expected = align_up(offset + nbytes, alignment)
        tensors.append(TensorInfo(name, shape, qtype, offset, nbytes))
    return GGUFHeader(path, version, tuple(kvs), tuple(tensors), alignment, header_bytes, data_offset, size)


def read_header(path: str | os.PathLike[str], *, strict: bool = True) -> tuple[GGUFHeader, bytes]:
    """Read and parse the header of the GGUF file at ``path``; also return its raw header bytes (what
    :func:`header_fingerprint` hashes). Only the pages the header lives in are read."""
    from ..inputs import InputFileError, open_input

    p = Path(path)
    try:
        with open_input(p) as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise GGUFReadError(f"{p}: not a GGUF file (empty)")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                view = memoryview(mm)
                try:
                    header = parse_header(view, p, size, strict=strict)
                    raw = bytes(view[: header.header_bytes])
                finally:
                    view.release()
    except InputFileError as exc:
        raise GGUFReadError(str(exc)) from None
    except OSError as exc:
        from ..inputs import describe_os_error

        raise GGUFReadError(f"{p}: cannot read: {describe_os_error(exc)}") from None
    return header, raw
