"""``apply_plan``: run a frozen plan against a model and write the quantized GGUF.

The run, in order:

Steps 1-3 are the pre-flight checks of :mod:`.preflight`; this module streams.

1. load the plan, open the source (header only), refuse a stale plan (model / recipe / imatrix
   fingerprints) unless ``force``, and refuse a plan that does not fit the model at all;
2. load the imatrix, resolve every planned tensor's weights up front (a bad entry fails before any
   byte is written) and work out coverage;
3. build the output metadata and every shard's header from the plan (target sizes are known);
4. stream: read one row chunk of one tensor through a memory map, convert to float32, quantize,
   hand the bytes to a writer thread that appends them while the next chunk is quantized;
5. sync and rename the temp files into place; return an :class:`ApplyResult`.

Any failure removes the partial output; Ctrl-C keeps it with a checkpoint so that
``resume=True`` continues tensor by tensor (the result is byte-identical to an uninterrupted run).
"""

from __future__ import annotations

import hashlib
import os
import resource
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .. import quants
from ..outputs import Input
from ..plan import Fallback, Plan
from .checks import validate_output
from .cluster import ClusterQuantizer
from .errors import (
    ApplyInterrupted,
    ExecutorError,
    OutputError,
)
from .gguf_format import OutTensor
from .imatrix import Imatrix
from .parallel import ChunkTask, Parallelism, Quantizer, make_quantizer
from .preflight import (
    ImatrixCoverage,
    Job,
    assign_imatrix,
    build_metadata,
    check_fresh,
    check_paths,
    check_plan_decisions,
    check_structure,
    open_imatrix,
    plan_fingerprint,
)
from .progress import ProgressReporter, format_bytes, format_duration, make_progress
from .source import FLOAT_TYPES, SourceModel
from .testhook import hold, wants
from .writer import StreamingWriter, is_disk_full, plan_layout

__all__ = [
    "DEFAULT_CHUNK_VALUES",
    "ApplyResult",
    "ImatrixCoverage",
    "RequantizeWarning",
    "apply_plan",
    "plan_fingerprint",
]

F32Array = npt.NDArray[np.float32]

# Values per read/quantize chunk: 4 Mi float32 = 16 MiB of rows; with the source slice, the
# quantized bytes and up to MAX_PENDING_WRITES chunks queued for the writer, the executor's own
# memory stays within a few times this (plus the quantizers' temporaries).
DEFAULT_CHUNK_VALUES = 1 << 22
MAX_PENDING_WRITES = 2


class RequantizeWarning(UserWarning):
    """Tensors that were already quantized were dequantized and quantized again."""


def _fallback_counts(fallbacks: Sequence[tuple[str, Fallback]]) -> str:
    """``: q4_K -> q5_0 ×166, q6_K -> q8_0 ×14``: how many tensors fell back, per pair of types."""
    counts: dict[str, int] = {}
    for _, fb in fallbacks:
        pair = f"{fb.wanted} -> {fb.got}"
        counts[pair] = counts.get(pair, 0) + 1
    return (": " + ", ".join(f"{pair} ×{n}" for pair, n in counts.items())) if counts else ""


@dataclass(frozen=True)
class ApplyResult:
    outputs: tuple[Path, ...]
    n_tensors: int  # tensors written
    n_pruned: int
    n_quantized: int
    n_copied: int
    source_bytes: int  # tensor data read (kept tensors)
    output_bytes: int  # total size of the written files
    tensor_bytes: int  # tensor data written
    n_elements: int  # elements of the source model (bpw denominator, as llama-quantize)
    seconds: float
    fallbacks: tuple[tuple[str, Fallback], ...]  # (tensor name, the type it fell back from and to)
    requantized: tuple[str, ...]
    imatrix: ImatrixCoverage | None
    resumed_tensors: int  # tensors taken from a checkpoint instead of recomputed
    peak_rss_bytes: int  # this process plus its quantizer worker processes (their peaks summed)
    plan_fingerprint: str
    warnings: tuple[str, ...] = field(default_factory=tuple)
    cluster: str | None = None  # the Dask cluster that quantized (``cluster=``), in words

    @property
    def bpw(self) -> float:
        return self.tensor_bytes * 8 / self.n_elements if self.n_elements else 0.0

    @property
    def rate_bytes_per_s(self) -> float:
        return self.source_bytes / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        out = (
            self.outputs[0]
            if len(self.outputs) == 1
            else f"{self.outputs[0]} (+{len(self.outputs) - 1} shards)"
        )
        lines = [
            f"wrote {out}",
            f"  size      {format_bytes(self.output_bytes)}: {format_bytes(self.tensor_bytes)} of tensor data "
            f"({self.bpw:.3f} bpw, the plan's total) + header and alignment; "
            f"from {format_bytes(self.source_bytes)} of tensor data",
            f"  tensors   {self.n_tensors} ({self.n_quantized} quantized, {self.n_copied} copied"
            + (f", {self.n_pruned} pruned" if self.n_pruned else "")
            + (f", {self.resumed_tensors} resumed" if self.resumed_tensors else "")
            + ")",
            f"  time      {format_duration(self.seconds)} ({format_bytes(self.rate_bytes_per_s)}/s), "
            f"peak memory {format_bytes(self.peak_rss_bytes)}",
            f"  fallbacks {len(self.fallbacks)}{_fallback_counts(self.fallbacks)}",
        ]
        if self.imatrix is not None:
            im = self.imatrix
            lines.append(
                f"  imatrix   {im.used}/{im.wanted} planned tensors covered ({im.fraction * 100:.0f}%), "
                f"{im.n_entries} entries in {im.file}"
            )
            if im.missing:
                shown = ", ".join(im.missing[:5]) + (
                    f" (+{len(im.missing) - 5} more)" if len(im.missing) > 5 else ""
                )
                lines.append(f"    no entry for: {shown}")
        if self.requantized:
            lines.append(f"  requantized {len(self.requantized)} already-quantized tensor(s)")
        if self.cluster is not None:
            lines.append(f"  cluster   {self.cluster}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        return "\n".join(lines)


def _peak_rss() -> int:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r) * 1024 if os.uname().sysname != "Darwin" else int(r)


def _chunks(job: Job, shape: Sequence[int], chunk_values: int) -> list[tuple[int, int, int]]:
    """(first_row, n_rows, matrix) chunks of whole rows that never cross a matrix (expert) boundary."""
    ne0 = int(shape[0]) if shape else 1
    n_rows = 1
    for d in shape[1:]:
        n_rows *= int(d)
    rows_per_mat = int(shape[1]) if len(shape) >= 2 else 1
    if n_rows == 0 or rows_per_mat == 0:
        return []
    step = max(1, chunk_values // max(ne0, 1))
    out = []
    for m in range(n_rows // rows_per_mat):
        base = m * rows_per_mat
        for r in range(0, rows_per_mat, step):
            out.append((base + r, min(step, rows_per_mat - r), m))
    return out


def apply_plan(
    plan: Plan | str | os.PathLike[str],
    model_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    imatrix: str | os.PathLike[str] | Imatrix | None = None,
    threads: int | None = None,
    parallel: Parallelism = "auto",
    chunk_values: int = DEFAULT_CHUNK_VALUES,
    resume: bool = False,
    force: bool = False,
    allow_requantize: bool = False,
    progress: bool | ProgressReporter | None = None,
    max_shard_bytes: int | None = None,
    max_shard_tensors: int | None = None,
    overwrite: bool = True,
    recipe_fingerprint: str | None = None,
    recipe: str | os.PathLike[str] | None = None,
    keep_partial_on_interrupt: bool = True,
    durable: bool = True,
    inputs: Sequence[Input] = (),
    cluster: str | None = None,
) -> ApplyResult:
    """Apply ``plan`` to the model at ``model_path`` and write ``out_path`` (or its shards).

    ``imatrix``: a legacy ``.dat`` or GGUF imatrix file (or a loaded :class:`Imatrix`).
    ``threads``: cores to quantize on (default: every core). ``parallel``: ``"processes"`` (one worker
    process per core), ``"threads"`` (quantizer threads in this process) or ``"auto"`` (processes when
    more than one core is used and the model is big enough to repay starting them). ``chunk_values``: values per read/quantize
    chunk, which bounds peak memory. ``resume``: continue an interrupted run from its checkpoint.
    ``force``: apply a stale plan (model/recipe/imatrix fingerprints differ). ``allow_requantize``:
    quantize tensors that are already quantized (dequantized with gguf-py; warns).
    ``progress``: ``None`` = bars when stderr is a terminal, ``True``/``False``, or a reporter.
    ``max_shard_bytes`` / ``max_shard_tensors``: split the output llama.cpp-style.
    ``recipe_fingerprint``: the current recipe's fingerprint, to refuse a plan made from an older one.
    ``recipe``: the recipe file the plan was made from. The plan's recipe (this file, or the text the plan
    carries) is compiled against the model: a plan whose decisions it does not give is refused unless
    ``force`` (then the output records ``gguf_recipe.plan_edited``); one that cannot be checked (its recipe
    extends files not at hand) is applied with ``gguf_recipe.plan_unverified`` recorded.
    ``inputs``: the caller's other input files as ``(what, path)`` (e.g. the recipe): no file the run
    writes or deletes may be one of them (nor the model, the imatrix or the plan file).
    ``cluster``: quantize on the Dask cluster whose scheduler is at this address (``tcp://host:8786``),
    or on a local one of N worker processes (``local`` / ``local:N``), instead of here (``threads`` and
    ``parallel`` do not apply). The workers read ``model_path`` themselves (a shared filesystem); this
    process writes the output. See :mod:`gguf_recipe.executor.cluster`.
    """
    t0 = time.monotonic()
    if chunk_values < 1:
        raise ValueError("chunk_values must be positive")
    if threads is not None and threads < 1:
        raise ValueError("threads must be at least 1")
    if cluster is not None and (threads is not None or parallel != "auto"):
        raise ValueError("threads and parallel are for local runs; a cluster's workers bring their own")
    inputs = list(inputs)
    if not isinstance(plan, Plan):
        inputs.append(("the plan", plan))
        plan = Plan.load(Path(plan))
    out = Path(out_path)
    warn: list[str] = []
    reporter = make_progress(progress)
    plan_fp = plan_fingerprint(plan)

    with SourceModel(model_path) as src:
        im, im_name = open_imatrix(imatrix)
        check_fresh(plan, src, im, recipe_fingerprint, force, warn)
        jobs, requant = check_structure(plan, src, allow_requantize)
        check = check_plan_decisions(plan, model_path, recipe, force, warn)
        if requant:
            msg = f"requantizing {len(requant)} already-quantized tensor(s) (quality loss): {', '.join(requant[:5])}"
            warnings.warn(msg, RequantizeWarning, stacklevel=2)
            warn.append(msg)
        coverage = assign_imatrix(jobs, im, warn)
        kv_blobs = build_metadata(plan, src, jobs, im, im_name, plan_fp, warn, check)
        out_tensors = [
            OutTensor(j.planned.name, tuple(j.planned.shape), j.target, j.planned.target_bytes) for j in jobs
        ]
        layout = plan_layout(
            out,
            kv_blobs,
            out_tensors,
            alignment=src.headers[0].alignment,
            max_shard_bytes=max_shard_bytes,
            max_shard_tensors=max_shard_tensors,
        )
        check_paths(src, layout, inputs, im)
        run_key = hashlib.sha256(
            "\0".join(
                [
                    plan_fp,
                    src.fingerprint,
                    im.fingerprint if im else "",
                    layout.fingerprint,
                    str(allow_requantize),
                ]
            ).encode()
        ).hexdigest()
        writer = StreamingWriter(layout, run_key=run_key, durable=durable)
        writer.preflight(overwrite=overwrite)
        if resume and not writer.checkpoint.exists():
            warn.append("resume: no checkpoint found; started from the beginning")
        total_in = sum(src.tensors[j.planned.source_name].nbytes for j in jobs)
        to_quantize = sum(src.tensors[j.planned.source_name].n_elements for j in jobs if j.mode == "quantize")
        # before the writer thread exists: worker processes are forked from this one
        quantizer = _open_quantizer(src, threads, parallel, to_quantize, cluster)
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gguf-recipe-writer")
        pending: deque[Future[None]] = deque()
        holding: deque[Future[None]] = deque()  # the queued writes that hold a chunk's bytes

        def submit(fn: Callable[..., None], *args: Any) -> None:
            # Only writes holding bytes are bounded (memory): a tensor's end (a sync to disk) may lag
            # without stalling the quantizers while chunks are written in place.
            f = pool.submit(fn, *args)
            pending.append(f)
            if fn == writer.write:
                holding.append(f)
                while len(holding) > MAX_PENDING_WRITES:
                    holding.popleft().result()
            while pending and pending[0].done():
                pending.popleft().result()

        def tensor_written() -> None:  # the test hook's point: a tensor is on disk and checkpointed
            if wants("tensor-written"):
                while pending:
                    pending.popleft().result()
                hold("tensor-written")

        ok = False
        start = 0
        try:
            start = writer.start(resume=resume)
            done_in = sum(src.tensors[j.planned.source_name].nbytes for j in jobs[:start])
            reporter.start(len(jobs), total_in, done_in)
            _stream(
                jobs[start:],
                src,
                writer,
                submit,
                reporter,
                quantizer,
                chunk_values,
                allow_requantize,
                tensor_written,
                layout.in_place_target if quantizer.writes_in_place else None,
            )
            quantizer.close()
            while pending:
                pending.popleft().result()
            src.check_unchanged()
            outputs = writer.finalize()
            ok = True
        except KeyboardInterrupt as exc:
            quantizer.close(cancel=True)
            _drain(pool, pending, finish=True)
            keep = keep_partial_on_interrupt and writer.completed > 0
            writer.abort(keep_partial=keep)
            where = ", ".join(str(s.temp) for s in layout.shards if s.temp.exists())
            raise ApplyInterrupted(
                f"interrupted after {writer.completed} of {len(jobs)} tensors; nothing was written at {out}. "
                + (
                    f"The partial output is kept in {where}; run again with resume to continue, or delete it."
                    if keep
                    else "The partial output was removed."
                )
            ) from exc
        except BaseException as exc:
            quantizer.close(cancel=True)
            _drain(pool, pending)
            writer.abort(keep_partial=False)
            if is_disk_full(exc):
                raise OutputError(
                    f"disk full while writing {out} (it needs {format_bytes(layout.total_size)}); "
                    "the partial output was removed and nothing was written"
                ) from exc
            if isinstance(exc, ExecutorError):
                raise
            if isinstance(exc, OSError):
                raise OutputError(
                    f"cannot write {out}: {exc.strerror or exc}; the partial output was removed"
                ) from exc
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            quantizer.close(cancel=True)
            reporter.finish(ok)

    fallbacks = tuple((j.planned.name, j.planned.fallback) for j in jobs if j.planned.fallback is not None)
    return ApplyResult(
        outputs=tuple(outputs),
        n_tensors=len(jobs),
        n_pruned=sum(1 for t in plan.tensors if t.action == "prune"),
        n_quantized=sum(1 for j in jobs if j.mode == "quantize"),
        n_copied=sum(1 for j in jobs if j.mode == "copy"),
        source_bytes=total_in,
        output_bytes=sum(p.stat().st_size for p in outputs),
        tensor_bytes=sum(t.nbytes for t in out_tensors),
        n_elements=src.n_elements,
        seconds=time.monotonic() - t0,
        fallbacks=fallbacks,
        requantized=tuple(requant),
        imatrix=coverage,
        resumed_tensors=start,
        peak_rss_bytes=_peak_rss() + quantizer.peak_rss_bytes(),
        plan_fingerprint=plan_fp,
        warnings=tuple(warn),
        cluster=quantizer.describe() if isinstance(quantizer, ClusterQuantizer) else None,
    )


def _open_quantizer(
    src: SourceModel, threads: int | None, parallel: Parallelism, to_quantize: int, cluster: str | None
) -> Quantizer:
    if cluster is None:
        return make_quantizer(src, threads, parallel, to_quantize)
    return ClusterQuantizer(cluster, src)


def _drain(pool: ThreadPoolExecutor, pending: deque[Future[None]], *, finish: bool = False) -> None:
    """Wait for the writer, ignoring its errors (we are failing anyway). ``finish``: let the queued
    writes complete (an interrupt keeps the work already done); else cancel them."""
    if not finish:
        for f in pending:
            f.cancel()
    else:
        for f in pending:
            try:
                f.result()
            except BaseException:  # the first error stops the rest
                break
    pool.shutdown(wait=True, cancel_futures=True)
    pending.clear()


@dataclass
class _Piece:
    """One chunk of one written tensor, in output order; ``data`` is ready or still being quantized."""

    job: Job
    n_bytes: int  # source bytes it covers (progress)
    first: bool  # the tensor's first piece
    last: bool  # ... and its last
    # None: a tensor with no rows; an int: that many bytes the quantizer wrote in place
    data: Future[npt.NDArray[np.uint8] | int] | npt.NDArray[np.uint8] | None


def _pieces(
    jobs: Sequence[Job],
    src: SourceModel,
    quantizer: Quantizer,
    chunk_values: int,
    allow_requantize: bool,
    in_place: Callable[[int], tuple[Path, int] | None] | None = None,
) -> Iterator[_Piece]:
    """Submit every chunk of every job, in order (copies are read here; quantizing goes to ``quantizer``).

    ``in_place``: where a written tensor's data lies in the output, when the quantizer may write it
    there itself (see :meth:`.writer.OutputLayout.in_place_target`)."""
    for job in jobs:
        pt = job.planned
        info = src.tensors[pt.source_name]
        chunks = _chunks(job, info.shape, chunk_values)
        if not chunks:
            yield _Piece(job, 0, True, True, None)
        place = in_place(job.index) if in_place is not None and job.mode == "quantize" else None
        for k, (first, n, mat) in enumerate(chunks):
            data: Future[npt.NDArray[np.uint8] | int] | npt.NDArray[np.uint8]
            if job.mode == "copy":
                data = src.read_raw_rows(info, first, n)
                if info.qtype in FLOAT_TYPES:
                    validate_output(data, info.qtype, pt.name, first)
            else:
                w = job.weights[mat] if job.weights is not None else None
                out = None
                if place is not None:
                    row_bytes = quants.spec_for(job.target).row_bytes(info.ne0)
                    out = (str(place[0]), place[1] + first * row_bytes)
                task = ChunkTask(pt.source_name, pt.name, first, n, job.target, w, allow_requantize, out)
                data = quantizer.submit(task)
            yield _Piece(job, n * info.row_bytes, k == 0, k == len(chunks) - 1, data)


def _stream(
    jobs: Sequence[Job],
    src: SourceModel,
    writer: StreamingWriter,
    submit: Callable[..., None],
    reporter: ProgressReporter,
    quantizer: Quantizer,
    chunk_values: int,
    allow_requantize: bool,
    tensor_written: Callable[[], None],
    in_place: Callable[[int], tuple[Path, int] | None] | None = None,
) -> None:
    """Quantize and write ``jobs``: up to ``quantizer.window`` chunks are in flight ahead of the one
    being written; results are consumed strictly in output order (a chunk the quantizer wrote in place
    comes back as its byte count: the writer moves past it)."""
    in_flight: deque[_Piece] = deque()

    def consume(piece: _Piece) -> None:
        job = piece.job
        pt = job.planned
        if piece.first:
            info = src.tensors[pt.source_name]
            what = (
                f"{info.qtype.name} -> {job.target.name}"
                if job.mode == "quantize"
                else f"copy {info.qtype.name}"
            )
            reporter.tensor_start(job.index, pt.name, info.nbytes, what)
            submit(writer.begin_tensor, job.index)
        if piece.data is not None:
            data = piece.data.result() if isinstance(piece.data, Future) else piece.data
            piece.data = None
            if isinstance(data, int):
                submit(writer.skip, data)
            else:
                submit(writer.write, data)
            reporter.advance(piece.n_bytes)
        if piece.last:
            submit(writer.end_tensor)
            reporter.tensor_done(job.index, pt.name)
            tensor_written()

    for piece in _pieces(jobs, src, quantizer, chunk_values, allow_requantize, in_place):
        in_flight.append(piece)
        while len(in_flight) > quantizer.window:
            consume(in_flight.popleft())
    while in_flight:
        consume(in_flight.popleft())
