"""The reference model's log-probabilities over the scored positions, computed once and kept on disk.

A :class:`ReferenceLogits` is two files: ``NAME`` (a ``.npy`` of float16, ``n_scored x n_vocab``,
opened as a memory map: evaluating against it reads one chunk at a time) and ``NAME.json`` (metadata,
the chunks' tokens, the reference's top token and NLL at every scored position in full precision).
Both are written to temporary names and renamed, the ``.json`` last: a reference is complete when its
``.json`` exists.

By default they live in ``$XDG_CACHE_HOME/gguf-recipe/eval/`` (``~/.cache/...``), named by a digest of
what makes them: the reference model's header fingerprint, the text's sha256, the context size, the
number of chunks asked for and the llama-cpp-python version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import EvalError, MismatchError
from .metrics import Workspace, log_softmax
from .runner import LoadedModel, llama_cpp_version

__all__ = [
    "FORMAT",
    "ReferenceLogits",
    "cache_dir",
    "compute_reference",
    "read_text",
    "reference_key",
    "text_bytes",
]

FORMAT = "gguf-recipe-reference-logits/1"
PROBE_CHARS = 2000  # a prefix of the text, tokenized by the reference: a cheap check of another vocabulary

Progress = Callable[[int, int], None]


def text_bytes(text: str | bytes) -> bytes:
    """The text as the bytes llama.cpp tokenizes: ``str`` is encoded as UTF-8, ``bytes`` kept as is."""
    return text if isinstance(text, bytes) else text.encode("utf-8")


def read_text(path: str | os.PathLike[str]) -> bytes:
    """A text file as ``llama-perplexity -f FILE`` reads it: its bytes, less one trailing newline."""
    p = Path(path)
    if not p.is_file():
        raise EvalError(f"text file not found: {p}")
    data = p.read_bytes()
    return data[:-1] if data.endswith(b"\n") else data


def cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gguf-recipe/eval`` (``~/.cache/gguf-recipe/eval`` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gguf-recipe" / "eval"


def scored_range(n_ctx: int) -> tuple[int, int]:
    """llama-perplexity's scored positions of a chunk: logits of ``first .. n_ctx - 2`` predict tokens
    ``first + 1 .. n_ctx - 1``; returns ``(first, count)``."""
    first = n_ctx // 2
    return first, n_ctx - 1 - first


def reference_key(
    header_sha256: str, text_sha256: str, n_ctx: int, n_chunks: int | None, version: str
) -> str:
    """The digest that names a cached reference."""
    key = json.dumps(
        {
            "format": FORMAT,
            "header_sha256": header_sha256,
            "text_sha256": text_sha256,
            "n_ctx": n_ctx,
            "n_chunks": n_chunks,
            "llama_cpp_python": version,
        },
        sort_keys=True,
    )
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def _meta_path(path: Path) -> Path:
    return path.with_name(path.name + ".json")


@dataclass
class ReferenceLogits:
    """The reference model's log-softmax at every scored position (float16, ``n_tokens x n_vocab``,
    usually a read-only memory map) with what is needed to evaluate other models against it:

    * ``tokens``: the chunks as tokenized (``n_chunks x n_ctx``, int32; the first token of each chunk is
      replaced by BOS at evaluation when the model adds one);
    * ``top``: the reference's most likely token at each scored position (from its float32 logits);
    * ``nll``: the reference's negative log-likelihood of the next token (float64).
    """

    logprobs: npt.NDArray[np.float16]
    tokens: npt.NDArray[np.int32]
    top: npt.NDArray[np.int32]
    nll: npt.NDArray[np.float64]
    reference: str  # the reference model's path as given
    header_sha256: str
    text_sha256: str
    n_ctx: int
    n_chunks_requested: int | None
    n_vocab: int
    add_bos: bool
    bos: int
    llama_cpp_version: str
    probe_text: str = ""
    probe_tokens: list[int] = field(default_factory=list)
    path: Path | None = None

    # ------------------------------------------------------------------------------ shape

    @property
    def n_chunks(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def first(self) -> int:
        return scored_range(self.n_ctx)[0]

    @property
    def per_chunk(self) -> int:
        """Scored tokens per chunk: ``n_ctx - 1 - n_ctx // 2``."""
        return scored_range(self.n_ctx)[1]

    @property
    def n_tokens(self) -> int:
        return self.n_chunks * self.per_chunk

    @property
    def key(self) -> str:
        return reference_key(
            self.header_sha256, self.text_sha256, self.n_ctx, self.n_chunks_requested, self.llama_cpp_version
        )

    def targets(self, chunk: int) -> npt.NDArray[np.int32]:
        """The tokens predicted at the scored positions of ``chunk``."""
        return self.tokens[chunk, self.first + 1 :]

    def rows(self, chunk: int) -> slice:
        return slice(chunk * self.per_chunk, (chunk + 1) * self.per_chunk)

    @property
    def ppl(self) -> float:
        return float(np.exp(self.nll.mean())) if len(self.nll) else float("nan")

    # ------------------------------------------------------------------------------ files

    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "key": self.key,
            "reference": self.reference,
            "header_sha256": self.header_sha256,
            "text_sha256": self.text_sha256,
            "n_ctx": self.n_ctx,
            "n_chunks": self.n_chunks,
            "n_chunks_requested": self.n_chunks_requested,
            "n_vocab": self.n_vocab,
            "add_bos": self.add_bos,
            "bos": self.bos,
            "llama_cpp_version": self.llama_cpp_version,
            "probe_text": self.probe_text,
            "probe_tokens": self.probe_tokens,
            "tokens": self.tokens.ravel().tolist(),
            "top": self.top.tolist(),
            "nll": self.nll.tolist(),  # repr of a float64 round-trips exactly
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path`` (the float16 ``.npy``) and ``path.json``, each atomically (temporary file +
        rename; the ``.json`` last). Returns ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.path is None or not self.path.exists() or not os.path.samefile(self.path, path):
            _atomic(path, lambda f: np.save(f, np.asarray(self.logprobs), allow_pickle=False))
        _atomic(_meta_path(path), lambda f: f.write(json.dumps(self._meta()).encode()))
        self.path = path
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, mmap: bool = True) -> ReferenceLogits:
        """Read a reference written by :meth:`save` (the ``.npy`` memory-mapped unless ``mmap=False``)."""
        path = Path(path)
        mp = _meta_path(path)
        if not path.is_file() or not mp.is_file():
            raise EvalError(f"no reference logits at {path} (expected {path.name} and {mp.name})")
        try:
            meta = json.loads(mp.read_text(encoding="utf-8"))
            if meta.get("format") != FORMAT:
                raise EvalError(f"{mp}: not a {FORMAT} file (format {meta.get('format')!r})")
            n_ctx = int(meta["n_ctx"])
            n_chunks = int(meta["n_chunks"])
            logprobs = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
            ref = cls(
                logprobs=logprobs,
                tokens=np.asarray(meta["tokens"], dtype=np.int32).reshape(n_chunks, n_ctx),
                top=np.asarray(meta["top"], dtype=np.int32),
                nll=np.asarray(meta["nll"], dtype=np.float64),
                reference=str(meta["reference"]),
                header_sha256=str(meta["header_sha256"]),
                text_sha256=str(meta["text_sha256"]),
                n_ctx=n_ctx,
                n_chunks_requested=meta["n_chunks_requested"],
                n_vocab=int(meta["n_vocab"]),
                add_bos=bool(meta["add_bos"]),
                bos=int(meta["bos"]),
                llama_cpp_version=str(meta["llama_cpp_version"]),
                probe_text=str(meta.get("probe_text", "")),
                probe_tokens=[int(t) for t in meta.get("probe_tokens", [])],
                path=path,
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EvalError(f"cannot read the reference logits {path}: {exc}") from None
        want = (ref.n_tokens, ref.n_vocab)
        if ref.logprobs.dtype != np.float16 or ref.logprobs.shape != want or len(ref.top) != ref.n_tokens:
            raise EvalError(
                f"{path}: inconsistent reference logits ({ref.logprobs.dtype} {ref.logprobs.shape}, "
                f"expected float16 {want}); delete it to recompute"
            )
        return ref

    # ------------------------------------------------------------------------------ checks

    def check_text(self, text: str | bytes) -> None:
        """Refuse a text other than the one the reference was computed on."""
        if hashlib.sha256(text_bytes(text)).hexdigest() != self.text_sha256:
            raise MismatchError(
                "the text differs from the one the reference logits were computed on "
                f"({self.path or self.reference})"
            )

    def check_model(self, model: LoadedModel) -> None:
        """Refuse a model whose vocabulary differs from the reference's (size, BOS, a probe of the text)."""
        if model.n_ctx != self.n_ctx:
            raise MismatchError(f"context {model.n_ctx} differs from the reference's {self.n_ctx}")
        if model.n_vocab != self.n_vocab:
            raise MismatchError(
                f"{model.path.name}: vocabulary of {model.n_vocab} tokens, the reference has {self.n_vocab}"
            )
        if (model.add_bos, model.bos) != (self.add_bos, self.bos):
            raise MismatchError(
                f"{model.path.name}: BOS handling differs from the reference's "
                f"(add_bos={model.add_bos}, bos={model.bos} vs add_bos={self.add_bos}, bos={self.bos})"
            )
        if self.probe_text and model.tokenize(self.probe_text.encode("utf-8")).tolist() != self.probe_tokens:
            raise MismatchError(f"{model.path.name}: tokenizes the text differently from the reference")


def _atomic(path: Path, write: Callable[[Any], object]) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def chunk_tokens(model: LoadedModel, data: bytes, n_ctx: int, n_chunks: int | None) -> npt.NDArray[np.int32]:
    """The text's tokens cut into chunks of ``n_ctx`` (``n_chunks`` at most; all by default)."""
    tokens = model.tokenize(data)
    available = len(tokens) // n_ctx
    if available < 1:
        raise EvalError(f"the text is {len(tokens)} tokens: too short for one chunk of {n_ctx}")
    n = available if n_chunks is None else min(n_chunks, available)
    return tokens[: n * n_ctx].reshape(n, n_ctx)


def _probe(data: bytes) -> str:
    return data[: PROBE_CHARS * 4].decode("utf-8", "ignore")[:PROBE_CHARS]


def compute_reference(
    reference_path: str | os.PathLike[str],
    text: str | bytes,
    *,
    n_ctx: int = 512,
    n_chunks: int | None = None,
    threads: int | None = None,
    cache: bool | str | os.PathLike[str] = True,
    progress: Progress | None = None,
) -> ReferenceLogits:
    """Evaluate the reference model on the text (``llama-perplexity --kl-divergence-base``) and keep its
    log-probabilities, or load them when already computed for the same model, text, context and chunks.

    ``cache``: True keeps them in :func:`cache_dir` under their key's digest; a path keeps them there
    (recomputed when what is there was made from something else); False keeps them in memory only.
    ``progress(done, total)`` is called after each chunk."""
    from ..model import GGUFReadError, read_model

    if n_ctx < 4:
        raise EvalError(f"context {n_ctx} is too small (at least 4 tokens)")
    if n_chunks is not None and n_chunks < 1:
        raise EvalError(f"chunks must be at least 1, got {n_chunks}")
    src = Path(reference_path)
    if not src.is_file():
        raise EvalError(f"reference model not found: {src}")
    try:
        header = read_model(src).header_sha256
    except (GGUFReadError, ValueError, OSError) as exc:
        msg = str(exc)
        raise EvalError(msg if str(src) in msg else f"{src}: {msg}") from None
    data = text_bytes(text)
    text_sha = hashlib.sha256(data).hexdigest()
    version = llama_cpp_version()
    key = reference_key(header, text_sha, n_ctx, n_chunks, version)

    target: Path | None = None
    if cache is True:
        target = cache_dir() / f"{key}.npy"
    elif cache is not False:
        target = Path(cache)
    if target is not None and _meta_path(target).is_file():
        try:
            ref = ReferenceLogits.load(target)
        except EvalError:
            ref = None
        if ref is not None and ref.key == key:
            ref.reference = str(reference_path)  # the same file, wherever it is now
            return ref

    with LoadedModel(src, n_ctx=n_ctx, threads=threads) as model:
        chunks = chunk_tokens(model, data, n_ctx, n_chunks)
        first, per_chunk = scored_range(n_ctx)
        n_rows = len(chunks) * per_chunk
        shape = (n_rows, model.n_vocab)
        tmp: Path | None = None
        if target is not None:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
            os.close(fd)
            tmp = Path(name)
            logprobs: npt.NDArray[np.float16] = np.lib.format.open_memmap(
                tmp, mode="w+", dtype=np.float16, shape=shape
            )
        else:
            logprobs = np.empty(shape, dtype=np.float16)
        try:
            top = np.empty(n_rows, dtype=np.int32)
            nll = np.empty(n_rows, dtype=np.float64)
            ws = Workspace(per_chunk, model.n_vocab)
            for c in range(len(chunks)):
                logits = model.decode_chunk(chunks[c], first)
                ls = log_softmax(logits, chunks[c, first + 1 :], ws)
                rows = slice(c * per_chunk, (c + 1) * per_chunk)
                # log p = w - lse, rounded once to float16
                np.subtract(ls.w, ls.lse.astype(np.float32)[:, None], out=ws.e)
                logprobs[rows] = ws.e
                top[rows] = ls.top
                nll[rows] = ls.nll
                if progress is not None:
                    progress(c + 1, len(chunks))
            ref = ReferenceLogits(
                logprobs=logprobs,
                tokens=chunks,
                top=top,
                nll=nll,
                reference=str(reference_path),
                header_sha256=header,
                text_sha256=text_sha,
                n_ctx=n_ctx,
                n_chunks_requested=n_chunks,
                n_vocab=model.n_vocab,
                add_bos=model.add_bos,
                bos=model.bos,
                llama_cpp_version=version,
                probe_text=_probe(data),
            )
            ref.probe_tokens = model.tokenize(ref.probe_text.encode("utf-8")).tolist()
            if target is not None and tmp is not None:
                assert isinstance(logprobs, np.memmap)
                logprobs.flush()
                os.replace(tmp, target)
                tmp = None
                ref.logprobs = np.load(target, mmap_mode="r", allow_pickle=False)
                ref.path = target
                ref.save(target)  # the .json, atomically, last
        finally:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    return ref
