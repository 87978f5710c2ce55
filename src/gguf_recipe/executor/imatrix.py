"""Importance matrices: llama.cpp's legacy ``.dat`` format and the GGUF imatrix format.

Values are normalised exactly as ``llama-quantize`` does (tools/quantize/quantize.cpp, ``load_imatrix``):

* GGUF: ``in_sum2 / counts`` per expert (``counts`` rounded with ``lround``), in float32; an expert
  with a zero count gets weights of 1.
* legacy: the stored values divided by ``ncall`` (when positive), in float32.

Entries with NaN or infinite values are refused (llama-quantize's ``imatrix contains non-finite value``),
so are entries with negative values (a corrupt file: they can quantize a tensor to all zeros), and an
entry whose size is not ``ne0 * n_experts`` of the tensor it is used for is refused when the tensor is
quantized (except ``token_embd``, which llama-quantize quantizes without the imatrix).
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, GGUFValueType

from .errors import ImatrixError, SourceFormatError
from .gguf_format import parse_header

__all__ = [
    "Imatrix",
    "is_token_embedding",
    "load_imatrix",
]

F32Array = npt.NDArray[np.float32]

KEY_DATASETS = "imatrix.datasets"
KEY_CHUNK_COUNT = "imatrix.chunk_count"
KEY_CHUNK_SIZE = "imatrix.chunk_size"


def is_token_embedding(name: str) -> bool:
    """llama-quant.cpp's ``tensor_name_match_token_embd``."""
    return name in ("token_embd.weight", "per_layer_token_embd.weight")


@dataclass(frozen=True)
class Imatrix:
    path: Path
    format: Literal["legacy", "gguf"]
    entries: dict[str, F32Array]
    datasets: tuple[str, ...]
    chunk_count: int
    chunk_size: int
    fingerprint: str  # sha256 of the file's bytes

    def __len__(self) -> int:
        return len(self.entries)

    def weights_for(self, name: str, shape: tuple[int, ...] | list[int]) -> F32Array | None:
        """The normalised entry for tensor ``name`` as ``(n_matrices, ne0)``, or ``None`` when absent.

        ``n_matrices`` is the number of 2-D matrices (experts) in the tensor. Raises
        :class:`ImatrixError` when the entry's size does not fit, unless the tensor is the token
        embedding (llama-quantize ignores the imatrix there); returns ``None`` in that case too.
        """
        e = self.entries.get(name)
        if e is None:
            return None
        ne0 = int(shape[0]) if len(shape) else 1
        n_mats = 1
        for d in shape[2:]:
            n_mats *= int(d)
        if e.size != ne0 * n_mats:
            if is_token_embedding(name):
                return None
            raise ImatrixError(
                f"imatrix entry for {name!r} has {e.size} values but the tensor needs {ne0 * n_mats} "
                f"(ne0 {ne0} x {n_mats} matrices); the imatrix was made for a different model"
            )
        return e.reshape(n_mats, ne0)


def _check_values(path: Path, entries: dict[str, F32Array]) -> None:
    """Refuse non-finite and negative values: importance weights are mean squares, and a negative
    weight makes a quantizer's error minimisation degenerate (a whole tensor can come out as zeros)."""
    for name, e in entries.items():
        bad = ~np.isfinite(e)
        if bad.any():
            i = int(np.argmax(bad))
            raise ImatrixError(
                f"{path}: imatrix entry {name!r} contains a non-finite value ({float(e[i])} at index {i})"
            )
        neg = e < 0
        if neg.any():
            i = int(np.argmax(neg))
            raise ImatrixError(
                f"{path}: imatrix entry {name!r} contains a negative value ({float(e[i])} at index {i}); "
                "importance weights are sums of squares and cannot be negative"
            )


def load_imatrix(path: str | os.PathLike[str]) -> Imatrix:
    """Read an imatrix file (GGUF or legacy ``.dat``, told apart by the GGUF magic)."""
    from ..inputs import InputFileError, open_input

    p = Path(path)
    try:
        f = open_input(p, "the imatrix")
    except InputFileError as exc:
        raise ImatrixError(str(exc)) from None
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise ImatrixError(f"{p}: not an imatrix file (empty)")
        # mapped, not read: a wrong file (a whole model given as the imatrix) costs no memory
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            data = memoryview(mm)
            try:
                im = _load_gguf(p, data) if bytes(data[:4]) == b"GGUF" else _load_legacy(p, data)
            finally:
                with contextlib.suppress(BufferError):  # views kept alive by an error's traceback
                    data.release()
        finally:
            with contextlib.suppress(BufferError):
                mm.close()
    _check_values(p, im.entries)
    return im


def _load_legacy(path: Path, data: memoryview) -> Imatrix:
    size = len(data)
    pos = 0

    def take(fmt: str, what: str) -> int:
        nonlocal pos
        n = struct.calcsize(fmt)
        if pos + n > size:
            raise ImatrixError(f"{path}: not an imatrix file, or truncated (while reading {what})")
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += n
        return int(v)

    n_entries = take("<i", "the entry count")
    if n_entries < 1:
        raise ImatrixError(f"{path}: no data in the imatrix file (entry count {n_entries})")
    if n_entries > size // 12:
        raise ImatrixError(f"{path}: not an imatrix file (entry count {n_entries} is impossible)")
    entries: dict[str, F32Array] = {}
    for i in range(n_entries):
        n = take("<i", f"the name length of entry {i + 1}")
        if n < 0 or pos + n > size:
            raise ImatrixError(f"{path}: truncated or corrupt imatrix (name of entry {i + 1})")
        raw_name = bytes(data[pos : pos + n])
        pos += n
        # llama.cpp reads the name as a C string
        name = raw_name.split(b"\0", 1)[0].decode("utf-8", errors="replace")
        ncall = take("<i", f"the call count of {name!r}")
        nval = take("<i", f"the value count of {name!r}")
        if nval < 1:
            raise ImatrixError(f"{path}: entry {name!r} has {nval} values")
        if pos + 4 * nval > size:
            raise ImatrixError(f"{path}: truncated imatrix (values of {name!r})")
        sums = np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32)
        pos += 4 * nval
        if ncall > 0:
            with np.errstate(invalid="ignore", over="ignore"):  # non-finite values are refused below
                entries[name] = (sums / np.float32(ncall)).astype(np.float32)
        else:
            entries[name] = sums
    chunk_count = 0
    datasets: list[str] = []
    if pos + 4 <= size:
        chunk_count = take("<i", "the chunk count")
        if pos + 4 <= size:
            n = take("<i", "the dataset name length")
            if n > 0 and pos + n <= size:
                datasets.append(
                    bytes(data[pos : pos + n]).split(b"\0", 1)[0].decode("utf-8", errors="replace")
                )
    return Imatrix(path, "legacy", entries, tuple(datasets), chunk_count, 0, hashlib.sha256(data).hexdigest())


def _lround(x: F32Array) -> npt.NDArray[np.int64]:
    """C's ``lround``: round half away from zero."""
    a = np.asarray(x, dtype=np.float64)
    return (np.sign(a) * np.floor(np.abs(a) + 0.5)).astype(np.int64)


def _load_gguf(path: Path, data: memoryview) -> Imatrix:
    try:
        header = parse_header(memoryview(data), path)
    except SourceFormatError as exc:
        raise ImatrixError(f"not a readable GGUF imatrix: {exc}") from exc
    if not header.tensors:
        raise ImatrixError(f"{path}: no data in the imatrix file")
    keys = {kv.key: kv for kv in header.kvs}
    missing = [k for k in (KEY_DATASETS, KEY_CHUNK_COUNT, KEY_CHUNK_SIZE) if k not in keys]
    if missing:
        raise ImatrixError(
            f"{path}: missing imatrix metadata ({', '.join(missing)}); is this a GGUF imatrix from llama-imatrix?"
        )
    datasets: list[str] = []
    ds = keys[KEY_DATASETS]
    if ds.vtype == GGUFValueType.ARRAY and ds.array_type == GGUFValueType.STRING:
        datasets = [str(v) for v in ds.value]  # type: ignore[union-attr]
    chunk_count = _u32(keys[KEY_CHUNK_COUNT].value, path, KEY_CHUNK_COUNT)
    chunk_size = _u32(keys[KEY_CHUNK_SIZE].value, path, KEY_CHUNK_SIZE)

    groups: dict[str, dict[str, tuple[int, int, GGMLQuantizationType]]] = {}
    for t in header.tensors:
        for suffix in (".in_sum2", ".in_sum", ".counts"):
            if t.name.endswith(suffix) and len(t.name) > len(suffix):
                groups.setdefault(t.name[: -len(suffix)], {})[suffix] = (
                    header.data_offset + t.offset,
                    t.n_elements,
                    t.qtype,
                )
                break

    def values(offset: int, n: int) -> F32Array:
        return np.frombuffer(data, dtype="<f4", count=n, offset=offset).astype(np.float32)

    entries: dict[str, F32Array] = {}
    for name in sorted(groups):
        g = groups[name]
        sum2 = g.get(".in_sum2")
        counts = g.get(".counts")
        in_sum = g.get(".in_sum")
        if sum2 is None or counts is None or (in_sum is not None and in_sum[1] != sum2[1]):
            raise ImatrixError(f"{path}: mismatched sums and counts for {name!r}")
        if sum2[2] != GGMLQuantizationType.F32 or counts[2] != GGMLQuantizationType.F32:
            raise ImatrixError(f"{path}: sums and counts for {name!r} must be F32")
        nval, ncounts = sum2[1], counts[1]
        if ncounts < 1 or nval % ncounts:
            raise ImatrixError(f"{path}: {name!r} has {nval} sums for {ncounts} counts")
        ne0 = nval // ncounts
        sums = values(sum2[0], nval).reshape(ncounts, ne0)
        raw_counts = values(counts[0], ncounts)
        if not (np.abs(raw_counts) < 2.0**62).all():  # NaN fails this too
            raise ImatrixError(f"{path}: imatrix entry {name!r} has a non-finite or impossible count")
        cnt = _lround(raw_counts).astype(np.float32)  # (float) counts[j]
        with np.errstate(divide="ignore", invalid="ignore"):
            norm = sums / cnt[:, None]
        norm = np.where((cnt > 0)[:, None], norm, np.float32(1)).astype(np.float32)
        entries[name] = norm.reshape(-1)
    return Imatrix(
        path, "gguf", entries, tuple(datasets), chunk_count, chunk_size, hashlib.sha256(data).hexdigest()
    )


def _u32(v: object, path: Path, key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ImatrixError(f"{path}: {key} must be an integer, got {v!r}")
    return v


def entry_names(path: str | os.PathLike[str]) -> list[str]:
    """Names of the tensors an imatrix file has entries for (for the compiler's coverage report)."""
    return sorted(load_imatrix(path).entries)
