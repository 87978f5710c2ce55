"""llama.cpp through llama-cpp-python: load a model, tokenize, decode chunks from an empty KV cache.

Only the scored positions ask llama.cpp for logits (as llama-perplexity does with its batch flags),
and the logits are read as a numpy view of llama.cpp's own output buffer: no copy into
``Llama.scores``, and the output projection runs on half the rows.

The context is set up as ``llama-perplexity -c N_CTX`` sets it up on a CPU: F16 KV cache, flash
attention on (llama.cpp's default ``auto`` enables it wherever the backend supports it; it changes the
last digits of the logits, so it matters for comparing numbers with llama-perplexity's), all layers on
the CPU, ``n_threads`` threads.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import EvalDependencyError, EvalError

__all__ = ["LoadedModel", "default_threads", "llama_cpp_module", "llama_cpp_version"]


def llama_cpp_module() -> ModuleType:
    """``llama_cpp``, or a clear error saying how to install it."""
    try:
        import llama_cpp
    except ImportError as exc:
        raise EvalDependencyError(
            "evaluation needs llama-cpp-python, which is not installed: pip install 'gguf-recipe[eval]'"
        ) from exc
    return llama_cpp


def llama_cpp_version() -> str:
    return str(getattr(llama_cpp_module(), "__version__", "unknown"))


def default_threads() -> int:
    return os.cpu_count() or 1


class LoadedModel:
    """A GGUF model loaded by llama.cpp with a context of ``n_ctx`` tokens (one batch of ``n_ctx``).

    Use as a context manager (``close()`` frees the context, the batch and the model)."""

    def __init__(self, path: str | os.PathLike[str], *, n_ctx: int, threads: int | None = None) -> None:
        lc = llama_cpp_module()
        self._lc = lc
        self.path = Path(path)
        if not self.path.is_file():
            raise EvalError(f"model not found: {self.path}")
        with self.path.open("rb") as f:
            magic = f.read(4)
        if magic != b"GGUF":
            raise EvalError(f"{self.path} is not a GGUF file")
        self.n_ctx = n_ctx
        threads = threads or default_threads()
        try:
            self.llm: Any = lc.Llama(
                model_path=str(self.path),
                n_ctx=n_ctx,
                n_batch=n_ctx,
                n_ubatch=n_ctx,
                n_threads=threads,
                n_threads_batch=threads,
                logits_all=False,
                flash_attn=True,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise EvalError(f"llama.cpp cannot load {self.path}: {exc}") from None
        self.ctx = self.llm.ctx
        vocab = lc.llama_model_get_vocab(self.llm.model)
        self.n_vocab = int(lc.llama_vocab_n_tokens(vocab))
        self.add_bos = bool(lc.llama_vocab_get_add_bos(vocab))
        self.bos = int(lc.llama_vocab_bos(vocab))
        self._batch: Any = None
        self._batch_first = -1

    # ------------------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        if self._batch is not None:
            self._lc.llama_batch_free(self._batch)
            self._batch = None
        llm, self.llm = self.llm, None
        if llm is not None:
            llm.close()

    def __enter__(self) -> LoadedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------ tokens

    def tokenize(self, text: bytes) -> npt.NDArray[np.int32]:
        """The text's tokens as ``llama-perplexity`` makes them (``common_tokenize(ctx, text, true)``:
        BOS first when the model adds one, special tokens not parsed)."""
        return np.asarray(self.llm.tokenize(text, add_bos=True, special=False), dtype=np.int32)

    # ------------------------------------------------------------------------------ decoding

    def _prepare_batch(self, first: int) -> None:
        """One batch of ``n_ctx`` tokens of sequence 0 at positions 0..n_ctx-1, asking for the logits
        of positions ``first .. n_ctx - 2`` (the last position predicts nothing that is scored)."""
        if self._batch is not None and self._batch_first == first:
            return
        lc, n = self._lc, self.n_ctx
        if self._batch is None:
            self._batch = lc.llama_batch_init(n, 0, 1)
        b = self._batch
        b.n_tokens = n
        np.ctypeslib.as_array(b.pos, shape=(n,))[:] = np.arange(n, dtype=np.int32)
        np.ctypeslib.as_array(b.n_seq_id, shape=(n,))[:] = 1
        flags = np.zeros(n, dtype=np.int8)
        flags[first : n - 1] = 1
        np.ctypeslib.as_array(ctypes.cast(b.logits, ctypes.POINTER(ctypes.c_int8)), shape=(n,))[:] = flags
        for i in range(n):
            b.seq_id[i][0] = 0
        self._batch_first = first

    def decode_chunk(
        self, tokens: Sequence[int] | npt.NDArray[np.int32], first: int
    ) -> npt.NDArray[np.float32]:
        """Evaluate ``n_ctx`` tokens from an empty KV cache (the first replaced by BOS when the model adds
        one) and return the logits of positions ``first .. n_ctx - 2``: a read-only view of llama.cpp's
        buffer, valid until the next call."""
        n = self.n_ctx
        if len(tokens) != n:
            raise ValueError(f"a chunk is {n} tokens, got {len(tokens)}")
        self._prepare_batch(first)
        b = self._batch
        toks = np.ctypeslib.as_array(b.token, shape=(n,))
        toks[:] = tokens
        if self.add_bos:
            toks[0] = self.bos
        lc = self._lc
        lc.llama_memory_clear(lc.llama_get_memory(self.ctx), True)
        rc = lc.llama_decode(self.ctx, b)
        if rc != 0:
            raise EvalError(f"llama_decode failed ({rc}) on {self.path}")
        rows = n - 1 - first
        ptr = lc.llama_get_logits(self.ctx)
        out: npt.NDArray[np.float32] = np.ctypeslib.as_array(ptr, shape=(rows, self.n_vocab))
        out.flags.writeable = False
        return out
