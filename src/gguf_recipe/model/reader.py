"""Header-only GGUF reader: metadata, tensor infos and a header fingerprint, never tensor data.

Works on single files and on ``-0000k-of-0000n`` splits. The header is parsed from an mmap of the file,
so a 700 GB model costs only the pages its header lives in.
"""

from __future__ import annotations

import hashlib
import mmap
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

GGUF_MAGIC = b"GGUF"
# Arrays longer than this keep only their length (tokenizer vocabularies, merges).
MAX_ARRAY_VALUES = 64

_SCALAR = {
    0: ("uint8", "<B", 1),
    1: ("int8", "<b", 1),
    2: ("uint16", "<H", 2),
    3: ("int16", "<h", 2),
    4: ("uint32", "<I", 4),
    5: ("int32", "<i", 4),
    6: ("float32", "<f", 4),
    7: ("bool", "<?", 1),
    10: ("uint64", "<Q", 8),
    11: ("int64", "<q", 8),
    12: ("float64", "<d", 8),
}
_STRING = 8
_ARRAY = 9

_SPLIT_RE = re.compile(r"^(?P<prefix>.*)-(?P<k>\d{5})-of-(?P<n>\d{5})\.gguf$")


class GGUFReadError(ValueError):
    """The file is not a GGUF file this reader understands (or is truncated)."""


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]  # ggml order: ne0 (row length) first
    type: GGMLQuantizationType
    offset: int
    split: int = 0

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def n_dims(self) -> int:
        """ggml_n_dims: trailing 1s do not count; at least 1."""
        dims = len(self.shape)
        while dims > 1 and self.shape[dims - 1] == 1:
            dims -= 1
        return max(dims, 1)

    @property
    def n_rows(self) -> int:
        return self.n_elements // self.shape[0] if self.shape and self.shape[0] else 0

    @property
    def nbytes(self) -> int:
        return self.n_rows * row_size(self.type, self.shape[0])


def row_size(qtype: GGMLQuantizationType, ne0: int) -> int:
    """ggml_row_size: type_size * ne0 / blck_size, with C integer division (truncates)."""
    blck, tsize = GGML_QUANT_SIZES[qtype]
    return tsize * ne0 // blck


@dataclass
class ModelInfo:
    """What the compiler needs to know about a model, from its header alone."""

    path: str
    files: list[str]
    metadata: dict[str, Any]
    metadata_types: dict[str, str]
    tensors: list[TensorInfo]
    header_sha256: str
    version: int = 3
    alignment: int = 32
    data_offsets: list[int] = field(default_factory=list)

    @property
    def arch(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def hparam(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.arch}.{key}", default)

    @staticmethod
    def _first(value: Any) -> int:
        if isinstance(value, list):
            return int(value[0]) if value else 0
        return int(value)

    @property
    def n_layer(self) -> int:
        return int(self.hparam("block_count", 0))

    @property
    def n_head(self) -> int:
        return self._first(self.hparam("attention.head_count", 0))

    @property
    def n_head_kv(self) -> int:
        v = self.hparam("attention.head_count_kv")
        return self.n_head if v is None else self._first(v)

    @property
    def n_gqa(self) -> int:
        """llama_hparams::n_gqa(0)."""
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def n_expert(self) -> int:
        return int(self.hparam("expert_count", 0) or 0)

    @property
    def n_embd(self) -> int:
        return int(self.hparam("embedding_length", 0))

    @property
    def n_vocab(self) -> int:
        v = self.hparam("vocab_size")
        if v is not None:
            return int(v)
        return int(self.metadata.get("tokenizer.ggml.tokens.length", 0))

    @property
    def tied_embeddings(self) -> bool:
        """llama-quantize's has_tied_embeddings: no tensor named output.weight."""
        return not any(t.name == "output.weight" for t in self.tensors)

    @property
    def size_class(self) -> str:
        return model_size_class(self)

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def n_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors)


def model_size_class(m: ModelInfo) -> str:
    """llama.cpp's llm_type name for the architectures whose size class changes quantization (70B), and
    the llama family's table; 'unknown' elsewhere."""
    arch, n_layer = m.arch, m.n_layer
    if arch == "llama":
        if m.n_expert == 8:
            return {32: "8x7B", 56: "8x22B"}.get(n_layer, "unknown")
        table = {16: "1B", 22: "1B", 26: "3B", 28: "3B", 30: "256M", 36: "8B", 40: "13B", 48: "34B", 60: "30B"}
        if n_layer == 32:
            nv = m.n_vocab
            return "3B" if nv == 49152 else ("7B" if nv < 40000 else "8B")
        if n_layer == 80:
            return "65B" if m.n_head == m.n_head_kv else "70B"
        return table.get(n_layer, "unknown")
    if arch in ("qwen2", "deci", "olmo") and n_layer == 80:
        return "70B"
    if arch == "jais2" and n_layer == 68:
        return "70B"
    return "unknown"


class _Cursor:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: Any) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: str, size: int) -> Any:
        if self.pos + size > len(self.buf):
            raise GGUFReadError("unexpected end of file inside the GGUF header")
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def u32(self) -> int:
        return int(self.unpack("<I", 4))

    def u64(self) -> int:
        return int(self.unpack("<Q", 8))

    def string(self) -> str:
        n = self.u64()
        if self.pos + n > len(self.buf):
            raise GGUFReadError("unexpected end of file inside a GGUF string")
        s = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def skip_strings(self, count: int) -> None:
        buf, pos = self.buf, self.pos
        unpack = struct.unpack_from
        end = len(buf)
        for _ in range(count):
            if pos + 8 > end:
                raise GGUFReadError("unexpected end of file inside a GGUF string array")
            (n,) = unpack("<Q", buf, pos)
            pos += 8 + n
        if pos > end:
            raise GGUFReadError("unexpected end of file inside a GGUF string array")
        self.pos = pos


def _read_value(cur: _Cursor, vtype: int) -> tuple[Any, str]:
    if vtype in _SCALAR:
        name, fmt, size = _SCALAR[vtype]
        return cur.unpack(fmt, size), name
    if vtype == _STRING:
        return cur.string(), "string"
    if vtype == _ARRAY:
        etype = cur.u32()
        count = cur.u64()
        if etype == _STRING:
            if count > MAX_ARRAY_VALUES:
                cur.skip_strings(count)
                return _ArrayLen("string", count), "array"
            return [cur.string() for _ in range(count)], "array"
        if etype in _SCALAR:
            _, fmt, size = _SCALAR[etype]
            if count > MAX_ARRAY_VALUES:
                cur.pos += size * count
                if cur.pos > len(cur.buf):
                    raise GGUFReadError("unexpected end of file inside a GGUF array")
                return _ArrayLen(_SCALAR[etype][0], count), "array"
            return [cur.unpack(fmt, size) for _ in range(count)], "array"
        raise GGUFReadError(f"unsupported GGUF array element type {etype}")
    raise GGUFReadError(f"unsupported GGUF value type {vtype}")


@dataclass(frozen=True)
class _ArrayLen:
    element_type: str
    length: int


def _parse_one(path: Path, split: int) -> tuple[dict[str, Any], dict[str, str], list[TensorInfo], str, int, int, int]:
    with path.open("rb") as f:
        size = path.stat().st_size
        if size < 24:
            raise GGUFReadError(f"{path}: too small to be a GGUF file")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            cur = _Cursor(mm)
            if bytes(mm[:4]) != GGUF_MAGIC:
                raise GGUFReadError(f"{path}: not a GGUF file (bad magic {bytes(mm[:4])!r})")
            cur.pos = 4
            version = cur.u32()
            if version not in (2, 3):
                raise GGUFReadError(f"{path}: unsupported GGUF version {version}")
            n_tensors = cur.u64()
            n_kv = cur.u64()
            metadata: dict[str, Any] = {}
            types: dict[str, str] = {}
            for _ in range(n_kv):
                key = cur.string()
                vtype = cur.u32()
                value, tname = _read_value(cur, vtype)
                if isinstance(value, _ArrayLen):
                    metadata[f"{key}.length"] = value.length
                    metadata[key] = None
                elif isinstance(value, list):
                    metadata[f"{key}.length"] = len(value)
                    metadata[key] = value
                else:
                    metadata[key] = value
                types[key] = tname
            tensors: list[TensorInfo] = []
            for _ in range(n_tensors):
                name = cur.string()
                n_dims = cur.u32()
                shape = tuple(cur.u64() for _ in range(n_dims))
                ttype = cur.u32()
                offset = cur.u64()
                try:
                    qt = GGMLQuantizationType(ttype)
                except ValueError:
                    raise GGUFReadError(f"{path}: tensor {name!r} has unknown ggml type {ttype}") from None
                tensors.append(TensorInfo(name, shape, qt, offset, split))
            alignment = int(metadata.get("general.alignment", 32) or 32)
            header_end = cur.pos
            data_offset = (header_end + alignment - 1) // alignment * alignment
            digest = hashlib.sha256(mm[:header_end]).hexdigest()
        finally:
            mm.close()
    return metadata, types, tensors, digest, version, alignment, data_offset


def split_paths(path: str | Path) -> list[Path]:
    """All files of a split model given any one of them (or just the file itself)."""
    p = Path(path)
    m = _SPLIT_RE.match(p.name)
    if not m:
        return [p]
    n = int(m.group("n"))
    width = len(m.group("k"))
    return [p.with_name(f"{m.group('prefix')}-{k:0{width}d}-of-{m.group('n')}.gguf") for k in range(1, n + 1)]


def read_model(path: str | Path) -> ModelInfo:
    """Read the header(s) of a GGUF model: one file or all ``-0000k-of-0000n`` splits."""
    files = split_paths(path)
    for f in files:
        if not f.is_file():
            raise GGUFReadError(f"{f}: no such file (part of a split model)" if len(files) > 1 else f"{f}: no such file")
    metadata: dict[str, Any] = {}
    types: dict[str, str] = {}
    tensors: list[TensorInfo] = []
    digests: list[str] = []
    version, alignment = 3, 32
    offsets: list[int] = []
    for i, f in enumerate(files):
        md, ty, ts, dg, ver, al, off = _parse_one(f, i)
        if i == 0:
            metadata, types, version, alignment = md, ty, ver, al
        tensors.extend(ts)
        digests.append(dg)
        offsets.append(off)
    header_sha = digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()
    return ModelInfo(
        path=str(path),
        files=[str(f) for f in files],
        metadata=metadata,
        metadata_types=types,
        tensors=tensors,
        header_sha256=header_sha,
        version=version,
        alignment=alignment,
        data_offsets=offsets,
    )
