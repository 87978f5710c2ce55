"""Quantize row chunks on a Dask cluster (``recipe apply --cluster ADDRESS``; the ``[cluster]`` extra).

The cluster is one more :class:`~.parallel.Quantizer`: the executor submits the same
:class:`~.parallel.ChunkTask` it gives local worker processes, each task runs the same
:func:`~.parallel.quantize_chunk` on a Dask worker, and the executor consumes the results in output
order within its bounded window and writes the file itself. So the output, its atomicity, the
checkpoint and ``resume`` are the local run's, byte for byte.

What travels: a task carries the chunk's coordinates (and its importance weights when there are any);
each worker opens the source by the client's absolute path, once per worker process (so the model must
be on a filesystem every worker shares), and sends back only the quantized bytes. The client writes
them (about a quarter of the source for Q4_K_M from BF16) to one place: the output's folder.

Dask reschedules the tasks of a worker that dies; one whose workers keep dying fails the run
(``distributed.scheduler.allowed-failures``, 3 by default) and nothing is written.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
import logging
import os
import resource
import signal
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import ClusterError, ExecutorError
from .parallel import ChunkTask, Quantizer, quantize_chunk
from .source import SourceModel
from .testhook import hold

__all__ = [
    "CONNECT_TIMEOUT_S",
    "WORKERS_TIMEOUT_S",
    "ClusterQuantizer",
    "parse_cluster_address",
    "run_chunk",
    "start_local_cluster",
]

U8Array = npt.NDArray[np.uint8]

CONNECT_TIMEOUT_S = 10.0
# a scheduler started just before its workers: how long to wait for the first one to join
WORKERS_TIMEOUT_S = 30.0
# several models quantized one after another on a long-lived cluster: each worker keeps this many open
_MAX_CACHED_SOURCES = 4
_INSTALL_HINT = "install the cluster extra: pip install 'gguf-recipe[cluster]'"


def parse_cluster_address(address: str) -> tuple[str, int]:
    """``("local", n_workers)`` for ``local`` / ``local:N``, else ``(scheduler_address, 0)``."""
    text = address.strip()
    if text == "local":
        return "local", os.cpu_count() or 1
    if text.startswith("local:"):
        n = text[len("local:") :]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--cluster {address!r}: local:N needs a number of workers N of at least 1")
        return "local", int(n)
    if not text:
        raise ValueError("--cluster needs a scheduler address (tcp://host:8786) or local / local:N")
    return text, 0


# ------------------------------------------------------------------------------ on each worker

_SOURCES: dict[tuple[str, str], SourceModel] = {}
_SOURCES_LOCK = threading.Lock()
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc mallopt parameters
_MALLOC_TUNED = False


def _reuse_freed_memory() -> None:
    """Let glibc keep freed chunk-sized arrays for the next task (a worker process, once).

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also pins the mmap
    threshold at 128 KiB: every temporary of a quantizer (megabytes each) is then a fresh mmap, touched
    page by page and unmapped again. Measured: 23,000 page faults per 4 Mi-value Q4_K chunk instead of
    240, and the worker about 1.4x slower than the same step in a local worker process. These are
    glibc's own dynamic limits, capped: up to 32 MiB arrays come from the heap, up to 64 MiB of free
    heap is kept."""
    global _MALLOC_TUNED
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED = True
    if not sys.platform.startswith("linux"):
        return
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - not glibc (musl has no mallopt)
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, 64 << 20)


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):  # not in a Dask task (tests call run_chunk directly)
        return f"pid {os.getpid()}"


def cluster_source(path: str, fingerprint: str) -> SourceModel:
    """This worker process's open copy of the source model at ``path`` (opened by its first task)."""
    key = (path, fingerprint)
    with _SOURCES_LOCK:
        src = _SOURCES.get(key)
        if src is not None:
            return src
        _reuse_freed_memory()
        try:
            src = SourceModel(path)
        except (OSError, ExecutorError) as exc:
            raise ClusterError(
                f"the Dask worker {_worker_address()} cannot open the source model {path}: {exc}. "
                "Every worker reads the model by the client's path: put it on a filesystem they all share"
            ) from None
        if src.fingerprint != fingerprint:
            src.close()
            raise ClusterError(
                f"the Dask worker {_worker_address()} sees another file at {path} than the client "
                "(their headers differ): the workers must read the very same model (a shared filesystem)"
            )
        if len(_SOURCES) >= _MAX_CACHED_SOURCES:
            # dropped, not closed: a task on another thread may still be reading it
            del _SOURCES[next(iter(_SOURCES))]
        _SOURCES[key] = src
        return src


def run_chunk(path: str, fingerprint: str, task: ChunkTask) -> tuple[U8Array, str, int]:
    """The task a Dask worker runs: the quantized chunk, the worker's address and its peak memory."""
    hold("cluster-task")
    q = quantize_chunk(cluster_source(path, fingerprint), task, 1)
    return q, _worker_address(), _own_peak_rss()


def _own_peak_rss() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) if sys.platform == "darwin" else int(r) * 1024


# ------------------------------------------------------------------------------ on the client


def _import_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ClusterError(f"--cluster needs Dask distributed ({exc}); {_INSTALL_HINT}") from None
    return distributed


class ClusterQuantizer(Quantizer):
    """Runs chunk tasks on the Dask cluster at ``address`` (a scheduler, or ``local`` / ``local:N``:
    a :class:`distributed.LocalCluster` of N one-thread worker processes, closed with this object)."""

    def __init__(
        self,
        address: str,
        src: SourceModel,
        *,
        connect_timeout_s: float | None = None,
        workers_timeout_s: float | None = None,
    ) -> None:
        connect_timeout_s = CONNECT_TIMEOUT_S if connect_timeout_s is None else connect_timeout_s
        workers_timeout_s = WORKERS_TIMEOUT_S if workers_timeout_s is None else workers_timeout_s
        distributed = _import_distributed()
        scheduler, n_local = parse_cluster_address(address)
        # Any: distributed's annotations leave Client.close, cancel and Future callbacks untyped
        self._cluster: Any = None
        self._client: Any = None
        self._pending: dict[str, Any] = {}  # key -> the dask future, until its result is taken
        self._lock = threading.Lock()
        self._peaks: dict[str, int] = {}
        # the workers' cwd is not ours: they get the absolute path (symlinks left as the user gave them)
        self._path = str(Path(src.path).absolute())
        self._fingerprint = src.fingerprint
        self._run = uuid.uuid4().hex[:12]
        self._seq = itertools.count()
        try:
            if scheduler == "local":
                self._cluster = start_local_cluster(distributed, n_local)
                scheduler = self._cluster.scheduler_address
            try:
                self._client = distributed.Client(scheduler, timeout=connect_timeout_s, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                raise ClusterError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
            try:
                self._client.wait_for_workers(1, timeout=workers_timeout_s)
            except (TimeoutError, OSError) as exc:
                raise ClusterError(
                    f"the Dask scheduler at {address} has no workers (none joined within "
                    f"{workers_timeout_s:.0f} s): start some with `dask worker {scheduler}`"
                ) from exc
            nthreads = self._client.nthreads()
            self.n_workers = len(nthreads)
            self.n_threads = sum(nthreads.values())
            self.scheduler_address = str(scheduler)
            self._where = (
                f"a local Dask cluster at {scheduler}" if n_local else f"the Dask cluster at {address}"
            )
        except BaseException:
            self.close(cancel=True)
            raise
        # two chunks per worker thread in flight: one running, one queued behind it (its input read
        # while the other quantizes); the client holds at most this many quantized chunks
        self.window = max(2, 2 * self.n_threads)

    def describe(self) -> str:
        return f"{self._where}: {self.n_workers} worker(s), {self.n_threads} thread(s) at the start"

    def submit(self, task: ChunkTask) -> Future[U8Array | int]:
        client = self._client
        if client is None:
            raise ClusterError("the Dask client is closed")
        key = f"gguf-recipe-{self._run}-{next(self._seq)}-{task.out_name}"
        inner = client.submit(run_chunk, self._path, self._fingerprint, task, key=key)
        with self._lock:
            self._pending[key] = inner
        outer: Future[U8Array | int] = Future()  # a cluster chunk always comes back as bytes
        outer.set_running_or_notify_cancel()

        def done(f: Any) -> None:
            try:
                if f.status == "finished":
                    q, worker, peak = f.result()
                    with self._lock:
                        self._peaks[worker] = max(peak, self._peaks.get(worker, 0))
                    outer.set_result(q)
                elif f.status == "cancelled":
                    outer.set_exception(
                        ClusterError(
                            f"the Dask cluster dropped the work on {task.out_name}: the connection to "
                            f"its scheduler ({self.scheduler_address}) was lost, or it cancelled the work"
                        )
                    )
                else:
                    outer.set_exception(_explain(f.exception(), task))
            except BaseException as exc:  # fetching the result failed (connection lost...)
                with contextlib.suppress(Exception):
                    outer.set_exception(_explain(exc, task))
            finally:
                with self._lock:  # the worker frees the result once no client holds its future
                    self._pending.pop(key, None)

        inner.add_done_callback(done)
        return outer

    def peak_rss_bytes(self) -> int:
        with self._lock:
            return sum(self._peaks.values())

    def close(self, *, cancel: bool = False) -> None:
        client, cluster = self._client, self._cluster
        self._client = self._cluster = None
        if client is not None:
            with self._lock:
                pending = list(self._pending.values())
                self._pending.clear()
            with contextlib.suppress(Exception), _quiet_client_logs(cancel):
                if cancel and pending:
                    client.cancel(pending)
                client.close()
        if cluster is not None:
            with contextlib.suppress(Exception):
                cluster.close()


@contextlib.contextmanager
def _quiet_client_logs(quiet: bool) -> Iterator[None]:
    """Closing a client whose scheduler is gone logs its cancelled reconnection as an ERROR with a
    traceback; the run reports the failure itself, in one line."""
    logger = logging.getLogger("distributed.client")
    level = logger.level
    if quiet:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def start_local_cluster(distributed: Any, n_workers: int) -> Any:
    """A LocalCluster of ``n_workers`` one-thread worker processes that leave Ctrl-C to this one.

    A terminal's Ctrl-C reaches the whole process group: the workers would die printing tracebacks while
    this process keeps the checkpoint. They are started with SIGINT ignored, which a child process (and
    its Python) keeps."""
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if in_main else None
    try:
        return distributed.LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,  # one core each, as local worker processes
            processes=True,
            dashboard_address=None,
            # its HTTP routes on a free local port (the default, 8787, warns when taken)
            scheduler_kwargs={"dashboard": False, "dashboard_address": "127.0.0.1:0"},
            silence_logs=logging.ERROR,
        )
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)


def _explain(exc: BaseException | None, task: ChunkTask) -> BaseException:
    """The worker's own error when it is one of ours (NaN found, source unreadable...); else one that
    says what the cluster did."""
    if exc is None:  # pragma: no cover - an erred future has an exception
        return ClusterError(f"the cluster failed on {task.out_name} without saying why")
    if isinstance(exc, ExecutorError):
        return exc
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        err: BaseException = ClusterError(
            f"Dask workers kept dying while quantizing {task.out_name} rows {task.first}.."
            f"{task.first + task.n - 1} (out of memory, or killed): {exc}"
        )
    else:
        err = ClusterError(
            f"quantizing {task.out_name} rows {task.first}..{task.first + task.n - 1} failed on the "
            f"cluster: {type(exc).__name__}: {exc}"
        )
    err.__cause__ = exc
    return err
