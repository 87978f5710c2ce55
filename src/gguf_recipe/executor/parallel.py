"""Quantize row chunks in this process or on worker processes.

numpy releases the GIL inside each operation, but a quantizer makes many short operations per work
item, so two threads spend much of their time waiting for each other (measured: Q4_K with 2 threads
was barely faster than 1). Worker processes have no such limit. Each worker opens the source model
itself and reads its rows through its own memory map, so only the chunk's coordinates travel to it
and only the quantized bytes (a fraction of the input) travel back.

Both paths run the same :func:`quantize_chunk`, so they write the same bytes. The executor keeps a
window of chunks in flight and consumes the results in order. A task may name the place of its bytes in
the output file (``ChunkTask.out``): a worker process then writes them there itself and hands back only
their count, so the bytes are neither pickled through a pipe nor copied again by the parent.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import resource
import signal
import sys
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType

from .. import quants
from . import writer  # writer._write_bytes: the single place data reaches the disk (tests patch it)
from .checks import validate_output
from .errors import ExecutorError, SourceFormatError
from .source import SourceModel

__all__ = [
    "PROCESS_MIN_VALUES",
    "ChunkTask",
    "InProcessQuantizer",
    "Parallelism",
    "ProcessQuantizer",
    "Quantizer",
    "quantize_chunk",
]

U8Array = npt.NDArray[np.uint8]
F32Array = npt.NDArray[np.float32]
Parallelism = Literal["auto", "processes", "threads"]

# "auto" starts worker processes only when there is enough to quantize to repay their start-up
# (a fork and a source header parse each, tens of milliseconds): about a second of work for one core.
PROCESS_MIN_VALUES = 1 << 24


@dataclass(frozen=True)
class ChunkTask:
    """Rows ``[first, first + n)`` of source tensor ``source_name``, to quantize to ``target``."""

    source_name: str
    out_name: str
    first: int
    n: int
    target: GGMLQuantizationType
    weights: F32Array | None
    allow_requantize: bool
    out: tuple[str, int] | None = None  # (file, offset): a worker writes the bytes there itself


def quantize_chunk(src: SourceModel, task: ChunkTask, threads: int | None) -> U8Array:
    """Read, check, quantize and validate one chunk (the same steps on every path)."""
    info = src.tensors[task.source_name]
    rows = src.read_f32_rows(
        info, task.first, task.n, allow_requantize=task.allow_requantize, check_finite=True
    )
    q = quants.quantize(rows, task.target, task.weights, threads=threads)
    del rows
    validate_output(q, task.target, task.out_name, task.first)
    return q


class Quantizer:
    """Runs chunk tasks; ``window`` is how many may be in flight before the oldest is consumed.

    ``writes_in_place``: a task's ``out`` is honoured, and its result is then the number of bytes the
    quantizer wrote there (an ``int``) instead of the bytes; other quantizers ignore ``out``.
    """

    window = 0
    writes_in_place = False

    def submit(self, task: ChunkTask) -> Future[U8Array | int] | U8Array:
        raise NotImplementedError

    def peak_rss_bytes(self) -> int:
        """Peak resident memory of the worker processes (summed), 0 when there are none."""
        return 0

    def close(self, *, cancel: bool = False) -> None:
        """Release the workers; ``cancel``: drop the queued tasks (a failing or interrupted run)."""


class InProcessQuantizer(Quantizer):
    """Quantizes each chunk when it is submitted, in this process (``threads`` quantizer threads)."""

    def __init__(self, src: SourceModel, threads: int | None) -> None:
        self._src = src
        self._threads = threads

    def submit(self, task: ChunkTask) -> U8Array:
        return quantize_chunk(self._src, task, self._threads)


# ---------------------------------------------------------------------------------- the workers

_WORKER_SOURCE: SourceModel | None = None
_WORKER_ARGS: tuple[str, str] = ("", "")


def worker_init(model_path: str, fingerprint: str, parent: int) -> None:
    """Initializer of a worker process reading ``model_path`` (apply's and measure's pools): it dies
    with ``parent`` and leaves Ctrl-C to it."""
    global _WORKER_ARGS
    die_with_parent(parent)
    # Ctrl-C reaches the whole process group; the parent decides what happens (keep a checkpoint).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _WORKER_ARGS = (model_path, fingerprint)


_PR_SET_PDEATHSIG = 1
WATCH_INTERVAL_S = 0.5


def die_with_parent(parent: int, *, kernel: bool = True) -> None:
    """End this process when ``parent`` ends, however it ends (a SIGKILL included): an idle worker
    would otherwise wait for work forever. On Linux the kernel sends SIGKILL when the parent dies
    (``prctl(PR_SET_PDEATHSIG)``); everywhere a watchdog thread ends the process when its parent pid
    changes (the fallback; ``kernel=False`` uses it alone)."""
    if kernel and sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(
                ctypes.c_int(_PR_SET_PDEATHSIG),
                ctypes.c_ulong(signal.SIGKILL),
                ctypes.c_ulong(0),
                ctypes.c_ulong(0),
                ctypes.c_ulong(0),
            )
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the watchdog remains
            pass
    if os.getppid() != parent:  # it died before the death signal was armed
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(WATCH_INTERVAL_S)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="gguf-recipe-parent-watch", daemon=True).start()


def worker_source() -> SourceModel:
    """The worker's open source model (checked against the fingerprint it was started with)."""
    # opened by the first task rather than the initializer, so that a failure reaches the parent as
    # this error instead of a broken pool
    global _WORKER_SOURCE
    if _WORKER_SOURCE is None:
        path, fingerprint = _WORKER_ARGS
        src = SourceModel(path)
        if src.fingerprint != fingerprint:
            src.close()
            raise SourceFormatError(f"{path}: the source file changed while it was being read")
        _WORKER_SOURCE = src
    return _WORKER_SOURCE


_WORKER_FILES: dict[str, int] = {}


def write_at(path: str, offset: int, data: U8Array) -> None:
    """Write ``data`` at ``offset`` of the existing file ``path`` (kept open for the next chunk)."""
    fd = _WORKER_FILES.get(path)
    if fd is None:
        fd = _WORKER_FILES[path] = os.open(path, os.O_WRONLY)
    os.lseek(fd, offset, os.SEEK_SET)
    writer._write_bytes(fd, np.ascontiguousarray(data).reshape(-1).data)


def _worker_run(task: ChunkTask) -> tuple[U8Array | int, int, int]:
    q = quantize_chunk(worker_source(), task, 1)
    if task.out is None:
        return q, os.getpid(), _own_peak_rss()
    write_at(*task.out, q)
    return q.nbytes, os.getpid(), _own_peak_rss()


def _own_peak_rss() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


def _context() -> multiprocessing.context.BaseContext:
    # fork: the children start in milliseconds with everything imported and do not re-import the
    # caller's __main__ (spawn would, which breaks unguarded scripts). The pool is started before the
    # executor starts its own writer thread. Elsewhere fork is unsafe (macOS) or missing (Windows).
    if sys.platform.startswith("linux"):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")  # pragma: no cover - not Linux


class ProcessQuantizer(Quantizer):
    """``workers`` processes, each quantizing one chunk at a time on one core."""

    writes_in_place = True

    def __init__(self, src: SourceModel, workers: int) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self.window = 2 * workers
        self._peaks: dict[int, int] = {}
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=_context(),
            initializer=worker_init,
            initargs=(str(Path(src.path)), src.fingerprint, os.getpid()),
        )
        # start the processes now (the first submit forks them all), before any thread of ours runs
        self._pool.submit(os.getpid).result()

    def submit(self, task: ChunkTask) -> Future[U8Array | int]:
        try:
            inner = self._pool.submit(_worker_run, task)
        except BrokenProcessPool as exc:  # a worker died since the last submit
            raise _explain(exc) from exc
        outer: Future[U8Array | int] = Future()

        def done(f: Future[tuple[U8Array | int, int, int]]) -> None:
            if f.cancelled():
                outer.cancel()
                outer.set_running_or_notify_cancel()
                return
            exc = f.exception()
            if exc is not None:
                outer.set_exception(_explain(exc))
                return
            q, pid, peak = f.result()
            self._peaks[pid] = max(peak, self._peaks.get(pid, 0))
            outer.set_result(q)

        inner.add_done_callback(done)
        return outer

    def peak_rss_bytes(self) -> int:
        return sum(self._peaks.values())

    def worker_peaks(self) -> dict[int, int]:
        """Peak resident bytes of each worker process that has finished a task, by pid."""
        return dict(self._peaks)

    def close(self, *, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)


def _explain(exc: BaseException) -> BaseException:
    if isinstance(exc, BrokenProcessPool):
        err = ExecutorError(
            "a quantizer worker process died unexpectedly (out of memory, or killed); nothing was written. "
            "Run again with fewer threads or a smaller chunk size"
        )
        err.__cause__ = exc
        return err
    return exc


def make_quantizer(
    src: SourceModel, threads: int | None, parallel: Parallelism, values_to_quantize: int
) -> Quantizer:
    """The quantizer for a run: processes when more than one core is wanted and there is enough work
    (``parallel="auto"``), or as asked."""
    if parallel not in ("auto", "processes", "threads"):
        raise ValueError(f"parallel must be 'auto', 'processes' or 'threads', not {parallel!r}")
    workers = threads if threads is not None else (os.cpu_count() or 1)
    use_processes = parallel == "processes" or (
        parallel == "auto" and workers > 1 and values_to_quantize >= PROCESS_MIN_VALUES
    )
    if use_processes:
        return ProcessQuantizer(src, workers)
    return InProcessQuantizer(src, threads)
