"""Header-only model reader for the compiler: metadata, tensor infos and a header fingerprint, never
tensor data.

Works on single files and on ``-0000k-of-0000n`` splits. The header is parsed (leniently) by
:mod:`gguf_recipe.model.header` from an mmap of the file, so a 700 GB model costs only the pages its
header lives in.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gguf import GGUFValueType

from .header import GGUF_MAGIC, GGUFReadError, TensorInfo, header_fingerprint, read_header

__all__ = [
    "GGUF_MAGIC",
    "MAX_ARRAY_VALUES",
    "SPLIT_NAME_RE",
    "GGUFReadError",
    "ModelInfo",
    "TensorInfo",
    "model_size_class",
    "read_model",
    "split_paths",
]

# Arrays longer than this keep only their length (tokenizer vocabularies, merges).
MAX_ARRAY_VALUES = 64

# llama.cpp's split file names (llama_split_path): <prefix>-<k>-of-<n>.gguf, k counting from 1
SPLIT_NAME_RE = re.compile(r"^(?P<prefix>.*)-(?P<k>\d{5})-of-(?P<n>\d{5})\.gguf$")


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

    def _int(self, key: str, value: Any) -> int:
        """An integer hyperparameter (the first of an array: per-layer values), or GGUFReadError naming
        the key when the header holds something else."""
        v = value[0] if isinstance(value, list) and value else (0 if isinstance(value, list) else value)
        if (
            isinstance(v, bool)
            or not isinstance(v, (int, float))
            or (isinstance(v, float) and not v.is_integer())
        ):
            raise GGUFReadError(f"{self.path}: metadata {key} must be an integer, found {v!r}")
        return int(v)

    def _hp(self, key: str, default: Any = 0) -> int:
        return self._int(f"{self.arch}.{key}", self.hparam(key, default))

    @property
    def n_layer(self) -> int:
        return self._hp("block_count")

    @property
    def n_head(self) -> int:
        return self._hp("attention.head_count")

    @property
    def n_head_kv(self) -> int:
        v = self.hparam("attention.head_count_kv")
        return self.n_head if v is None else self._hp("attention.head_count_kv")

    @property
    def n_gqa(self) -> int:
        """llama_hparams::n_gqa(0)."""
        return self.n_head // self.n_head_kv if self.n_head_kv else 0

    @property
    def n_expert(self) -> int:
        return self._int(f"{self.arch}.expert_count", self.hparam("expert_count", 0) or 0)

    @property
    def n_embd(self) -> int:
        return self._hp("embedding_length")

    @property
    def n_vocab(self) -> int:
        v = self.hparam("vocab_size")
        if v is not None:
            return self._hp("vocab_size")
        return self._int("tokenizer.ggml.tokens", self.metadata.get("tokenizer.ggml.tokens.length", 0))

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
        table = {
            16: "1B",
            22: "1B",
            26: "3B",
            28: "3B",
            30: "256M",
            36: "8B",
            40: "13B",
            48: "34B",
            60: "30B",
        }
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


def _parse_one(
    path: Path, split: int
) -> tuple[dict[str, Any], dict[str, str], list[TensorInfo], bytes, int, int, int]:
    if path.stat().st_size < 24:
        raise GGUFReadError(f"{path}: too small to be a GGUF file")
    header, raw = read_header(path, strict=False)
    metadata: dict[str, Any] = {}
    types: dict[str, str] = {}
    for kv in header.kvs:
        if kv.vtype == GGUFValueType.ARRAY:
            metadata[f"{kv.key}.length"] = kv.array_len
            metadata[kv.key] = kv.value if kv.array_len <= MAX_ARRAY_VALUES else None
        else:
            metadata[kv.key] = kv.value
        types[kv.key] = kv.vtype.name.lower()
    tensors = [replace(t, file_index=split) for t in header.tensors] if split else list(header.tensors)
    return metadata, types, tensors, raw, header.version, header.alignment, header.data_offset


def split_paths(path: str | Path) -> list[Path]:
    """All files of a split model given any one of them (or just the file itself)."""
    p = Path(path)
    m = SPLIT_NAME_RE.match(p.name)
    if not m:
        return [p]
    n = int(m.group("n"))
    width = len(m.group("k"))
    return [p.with_name(f"{m.group('prefix')}-{k:0{width}d}-of-{m.group('n')}.gguf") for k in range(1, n + 1)]


def read_model(path: str | Path) -> ModelInfo:
    """Read the header(s) of a GGUF model: one file or all ``-0000k-of-0000n`` splits."""
    from ..inputs import InputFileError, check_input_file

    files = split_paths(path)
    for f in files:
        try:
            check_input_file(f)
        except InputFileError as exc:
            raise GGUFReadError(f"{exc} (part of a split model)" if len(files) > 1 else str(exc)) from None
    metadata: dict[str, Any] = {}
    types: dict[str, str] = {}
    tensors: list[TensorInfo] = []
    raws: list[bytes] = []
    version, alignment = 3, 32
    offsets: list[int] = []
    for i, f in enumerate(files):
        md, ty, ts, raw, ver, al, off = _parse_one(f, i)
        if i == 0:
            metadata, types, version, alignment = md, ty, ver, al
        tensors.extend(ts)
        raws.append(raw)
        offsets.append(off)
    return ModelInfo(
        path=str(path),
        files=[str(f) for f in files],
        metadata=metadata,
        metadata_types=types,
        tensors=tensors,
        header_sha256=header_fingerprint(raws),
        version=version,
        alignment=alignment,
        data_offsets=offsets,
    )
