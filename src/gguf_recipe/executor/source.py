"""Reading the source model: header parsing, memory-mapped tensor reads, conversion to float32 rows.

Tensor data is read through a short-lived memory map of just the byte range asked for (a row chunk of
one tensor), so at most one chunk of the source is resident at a time no matter how large the model.
Split models (``name-00001-of-0000N.gguf``) are opened as one.
"""

from __future__ import annotations

import contextlib
import mmap
import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType

from ..model.header import header_fingerprint
from ..model.reader import SPLIT_NAME_RE
from . import checks
from .errors import RequantizeError, SourceFormatError
from .gguf_format import GGUFHeader, KeyValue, TensorInfo, read_header

__all__ = [
    "FLOAT_TYPES",
    "SourceModel",
    "model_fingerprint",
    "split_paths",
]

F32Array = npt.NDArray[np.float32]
U8Array = npt.NDArray[np.uint8]

T = GGMLQuantizationType
FLOAT_TYPES = frozenset({T.F32, T.F16, T.BF16})
_GRANULARITY = mmap.ALLOCATIONGRANULARITY
_POPULATE: int = getattr(mmap, "MAP_POPULATE", 0)


def split_paths(path: Path, count: int) -> list[Path]:
    """All shard paths of a split model given any one of them (llama.cpp's ``llama_split_prefix``)."""
    m = SPLIT_NAME_RE.match(path.name)
    if not m or int(m["n"]) != count:
        raise SourceFormatError(
            f"{path}: has split.count = {count} but its name does not end in -NNNNN-of-{count:05d}.gguf"
        )
    return [path.with_name(f"{m['prefix']}-{i + 1:05d}-of-{count:05d}.gguf") for i in range(count)]


def _split_count(header: GGUFHeader) -> int:
    v = header.get("split.count", 0)
    return int(v) if isinstance(v, (int, float)) else 0


def _open(path: Path) -> Any:
    from ..inputs import InputFileError, open_input

    try:
        return open_input(path)
    except InputFileError as exc:
        raise SourceFormatError(str(exc)) from None


def model_fingerprint(path: str | os.PathLike[str]) -> str:
    """sha256 of the model header bytes (magic, key/values and tensor infos; no tensor data).

    For a split model: sha256 of the shards' hex digests joined (as ``gguf_recipe.model``).
    """
    with SourceModel(path) as src:
        return src.fingerprint


class SourceModel:
    """An open source model. Use as a context manager; reads are thread-safe (``os`` level mmaps)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        first = Path(path)
        header, raw = read_header(first)
        count = _split_count(header)
        if count > 1:
            self.paths = split_paths(first, count)
            headers: list[tuple[GGUFHeader, bytes]] = []
            for i, p in enumerate(self.paths):
                h, r = (header, raw) if p == first else read_header(p)
                no = h.get("split.no")
                if no != i:
                    raise SourceFormatError(f"{p}: expected split.no = {i}, found {no!r}")
                headers.append((h, r))
        else:
            self.paths = [first]
            headers = [(header, raw)]
        self.headers = [h for h, _ in headers]
        # the same definition as gguf_recipe.model.read_model's header_sha256
        self.fingerprint = header_fingerprint([r for _, r in headers])
        self.kvs: tuple[KeyValue, ...] = self.headers[0].kvs
        self.tensors: dict[str, TensorInfo] = {}
        for i, h in enumerate(self.headers):
            for t in h.tensors:
                if t.name in self.tensors:
                    raise SourceFormatError(f"{self.paths[i]}: tensor {t.name!r} appears in two shards")
                self.tensors[t.name] = replace(t, file_index=i)
        self._files = [_open(p) for p in self.paths]
        self._stats = [os.fstat(f.fileno()) for f in self._files]

    # -- lifecycle -------------------------------------------------------------------------------

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def __enter__(self) -> SourceModel:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self.paths[0]

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    @property
    def n_elements(self) -> int:
        return sum(t.n_elements for t in self.tensors.values())

    def kv(self, key: str) -> KeyValue | None:
        return self.headers[0].kv(key)

    def get(self, key: str) -> object:
        return self.headers[0].get(key)

    def check_unchanged(self) -> None:
        """Raise when a source file was replaced or modified since it was opened."""
        for p, f, st in zip(self.paths, self._files, self._stats, strict=True):
            now = os.fstat(f.fileno())
            if (now.st_size, now.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
                raise SourceFormatError(f"{p}: the source file changed while it was being read")

    def same_file(self, other: Path) -> bool:
        """Whether ``other`` is (a hard link to or the same path as) one of the source files."""
        try:
            ost = os.stat(other)
        except OSError:
            return False
        return any((ost.st_dev, ost.st_ino) == (st.st_dev, st.st_ino) for st in self._stats)

    # -- reading ---------------------------------------------------------------------------------

    def _read(
        self, info: TensorInfo, start: int, size: int, convert: Callable[[U8Array], npt.NDArray[Any]]
    ) -> npt.NDArray[Any]:
        """Map bytes ``[start, start+size)`` of ``info``'s data, hand them to ``convert``, unmap."""
        if size == 0:
            return convert(np.empty(0, dtype=np.uint8))
        if start < 0 or start + size > info.nbytes:
            raise ValueError(f"read of bytes {start}..{start + size} outside tensor {info.name!r}")
        header = self.headers[info.file_index]
        absolute = header.data_offset + info.offset + start
        base = absolute - absolute % _GRANULARITY
        delta = absolute - base
        fd = self._files[info.file_index].fileno()
        try:
            if _POPULATE:
                # pre-fault the whole range in one go: much cheaper than a page fault per 4 KiB
                mm = mmap.mmap(
                    fd, delta + size, flags=mmap.MAP_SHARED | _POPULATE, prot=mmap.PROT_READ, offset=base
                )
            else:  # pragma: no cover - not Linux
                mm = mmap.mmap(fd, delta + size, offset=base, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise SourceFormatError(
                f"{self.paths[info.file_index]}: cannot map tensor {info.name!r}: {exc}"
            ) from exc
        try:
            raw = np.frombuffer(mm, dtype=np.uint8, count=size, offset=delta)
            try:
                out = convert(raw)
            finally:
                del raw
        finally:
            # an exception raised inside convert (a Ctrl-C, say) keeps views of the map alive in its
            # traceback: the map is released with them. Closing it here would replace that exception
            # with a BufferError (an interrupt would no longer be an interrupt).
            with contextlib.suppress(BufferError):
                mm.close()
        return out

    def read_raw_rows(self, info: TensorInfo, start_row: int, n_rows: int) -> U8Array:
        """Rows ``[start_row, start_row + n_rows)`` as stored, shape ``(n_rows, row_bytes)`` (a copy)."""
        rb = info.row_bytes
        out: U8Array = self._read(info, start_row * rb, n_rows * rb, lambda r: r.reshape(n_rows, rb).copy())
        return out

    def read_f32_rows(
        self,
        info: TensorInfo,
        start_row: int,
        n_rows: int,
        *,
        allow_requantize: bool = False,
        check_finite: bool = False,
    ) -> F32Array:
        """Rows as float32, shape ``(n_rows, ne0)``: F32/F16/BF16 converted exactly; quantized types
        dequantized with gguf-py when ``allow_requantize``. ``check_finite``: raise
        :class:`~.errors.NonFiniteError` for NaN/Inf rows (:func:`.checks.check_finite`; float16 rows
        the conversion has seen to be finite are not scanned again)."""
        ne0 = info.ne0
        rb = info.row_bytes
        qtype = info.qtype

        if qtype not in FLOAT_TYPES and not allow_requantize:
            raise RequantizeError(
                f"tensor {info.name!r} is already quantized ({qtype.name}); requantizing loses quality and "
                "needs allow_requantize (--allow-requantize)"
            )

        finite = False

        def convert(raw: U8Array) -> F32Array:
            nonlocal finite
            if qtype == T.F32:
                return raw.view(np.float32).reshape(n_rows, ne0).copy()
            if qtype == T.F16:
                fast = _f16_finite_to_f32(raw)
                if fast is None:
                    return raw.view(np.float16).astype(np.float32).reshape(n_rows, ne0)
                finite = True
                return fast.reshape(n_rows, ne0)
            if qtype == T.BF16:
                u = raw.view(np.uint16).astype(np.uint32) << np.uint32(16)
                return u.view(np.float32).reshape(n_rows, ne0)
            return _dequantize(raw.reshape(n_rows, rb), qtype, info.name).reshape(n_rows, ne0)

        out: F32Array = self._read(info, start_row * rb, n_rows * rb, convert)
        if check_finite and not finite:
            checks.check_finite(out, info.name, start_row)
        return out

    def iter_raw_chunks(self, info: TensorInfo, max_bytes: int) -> Iterator[U8Array]:
        """The tensor's bytes in chunks of whole rows, each at most ``max_bytes`` (at least one row)."""
        rb = info.row_bytes
        if info.n_rows == 0:
            return
        step = max(1, max_bytes // max(rb, 1))
        for r in range(0, info.n_rows, step):
            n = min(step, info.n_rows - r)
            yield self.read_raw_rows(info, r, n)


_F16_SCALE = np.float32(2.0**112)  # 2^(127 - 15): float32 exponent bias minus float16's
_F16_MASK = np.int32(-0x70002000)  # 0x8FFFE000: the sign bit, and the 15 bits a float16 has below it
_F16_FAST_MIN = 1 << 12


def f16_to_f32(raw: U8Array) -> F32Array:
    """Little-endian float16 bytes as float32 values, exactly as numpy's cast (see
    :func:`_f16_finite_to_f32`)."""
    out = _f16_finite_to_f32(raw)
    return raw.view(np.float16).astype(np.float32) if out is None else out


def _f16_finite_to_f32(raw: U8Array) -> F32Array | None:
    """float16 bytes as float32 when every value is finite (None when one is not, or the input is short).

    numpy converts float16 element by element (~2 ns a value); four vector passes do it here. A float16
    ``h`` sign-extended to int32 and shifted left 13 holds its exponent and mantissa in a float32's
    exponent and mantissa fields, with its sign copied into bits 28-31; keeping bit 31 and the low 28
    bits gives a float32 equal to ``h * 2^-112``, subnormals included, and multiplying by ``2^112`` is
    exact. Infinities and NaNs (float16 exponent 31) would come out finite: those are left to numpy.
    """
    h = raw.view(np.int16)
    if h.size < _F16_FAST_MIN or int(np.bitwise_and(h, np.int16(0x7FFF)).max()) >= 0x7C00:
        return None
    bits = np.empty(h.shape, dtype=np.int32)
    np.copyto(bits, h)
    bits <<= np.int32(13)
    bits &= _F16_MASK
    out: F32Array = bits.view(np.float32)
    out *= _F16_SCALE
    return out


def _dequantize(raw: U8Array, qtype: GGMLQuantizationType, name: str) -> F32Array:
    from gguf import quants as gguf_quants

    try:
        out = gguf_quants.dequantize(raw, qtype)
    except NotImplementedError:
        raise RequantizeError(f"tensor {name!r}: gguf-py cannot dequantize {qtype.name}") from None
    return np.ascontiguousarray(out, dtype=np.float32)
