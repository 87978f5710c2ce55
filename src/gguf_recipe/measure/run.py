"""``measure_model``: the quantization error of every quantizable tensor in every candidate type.

The run, in order:

1. read the model header and compile a trivial plan (``base: q8_0``) to learn which tensors a recipe
   can quantize (norms, 1-D tensors... are skipped and counted);
2. per tensor, the candidate types: the requested types whose block size divides the row length and,
   for the types llama.cpp refuses without importance weights, only with an imatrix entry; plus the
   source type itself (what ``keep`` gives, error 0). The rest are recorded as impossible, with why;
3. sample rows (:func:`~gguf_recipe.measure.core.n_sample_rows`), then quantize and dequantize them in
   every candidate type on worker processes (each opens the model through its own memory map; only row
   numbers and weights go out, a few floats come back);
4. save the results every few seconds with ``"complete": false`` (atomically), so that an interrupted
   run continues where it stopped; a finished run is reused as is.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import sys
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

from gguf import GGMLQuantizationType
from pydantic import ValidationError

from .. import quants
from ..compiler import compile_model
from ..diagnostics import RecipeError
from ..errors import GGUFRecipeError
from ..executor.errors import ExecutorError, SourceFormatError
from ..executor.gguf_format import tensor_nbytes
from ..executor.imatrix import Imatrix, load_imatrix
from ..executor.parallel import worker_init, worker_source
from ..executor.progress import ProgressReporter, make_progress
from ..executor.source import FLOAT_TYPES, SourceModel
from ..llamacpp import NoFallbackError, fallback_type, is_quantized, requires_imatrix
from ..model import read_model
from ..recipe.typenames import ggml_name
from .core import TensorSums, TensorTask, make_sample, measure_task, n_sample_rows
from .result import (
    METRIC_IMATRIX,
    METRIC_PLAIN,
    Candidate,
    Measurement,
    Sampling,
    TensorMeasurement,
    default_measure_path,
)

__all__ = [
    "DEFAULT_MAX_ROWS",
    "DEFAULT_MAX_VALUES",
    "DEFAULT_TYPES",
    "IMATRIX_TYPES",
    "MeasureError",
    "MeasureInterrupted",
    "default_types",
    "find_measurement",
    "imatrix_fingerprint",
    "measure_model",
]

T = GGMLQuantizationType

DEFAULT_TYPES = (
    "q8_0",
    "q6_K",
    "q5_K",
    "q4_K",
    "q3_K",
    "q2_K",
    "q5_1",
    "q5_0",
    "q4_1",
    "q4_0",
    "iq4_nl",
    "iq4_xs",
)
# added when an imatrix is given (llama.cpp refuses most of them without one)
IMATRIX_TYPES = ("iq3_s", "iq3_xxs", "iq2_s", "iq2_xs", "iq2_xxs", "iq1_m")
DEFAULT_MAX_ROWS = 256
# Values measured per tensor at most (rows x ne0, but at least MIN_ROWS rows): 128 rows of 4096.
# Models up to 2048 wide are sampled at max_rows (256); a 7B's 4096-wide tensors at 128 rows; a
# 70B's 8192-wide ones at 64 and its 28672-wide ffn_down at 18. The work is then about
# n_tensors * max_values per type, whatever the model's size: a 70B-class model (562 tensors) takes
# ~3 minutes on 2 cores without an imatrix and ~30 with one (18 types; the IQ2/IQ3 quantizers cost
# ~2 s per million values), where 256 rows of every tensor would take hours
# (benchmarks/measure.py; README "Measuring"). On SmolLM2, 64 rows instead of all of them move a
# tensor's error by ~3% (median) and the ratio of two types' errors by ~1%.
DEFAULT_MAX_VALUES = 128 * 4096

_PROBE_RECIPE = "recipe: 1\nname: measure-probe\nbase: q8_0\n"
_SAVE_EVERY_S = 5.0
_PROCESS_MIN_TASKS = 2


class MeasureError(GGUFRecipeError):
    """A measurement that cannot be made (bad types, unreadable model or imatrix...)."""


class MeasureInterrupted(MeasureError):
    """Ctrl-C during a measurement; what was measured is saved and a rerun continues from it."""


def default_types(imatrix: bool) -> list[str]:
    """The candidate types measured unless ``types`` is given."""
    return list(DEFAULT_TYPES) + (list(IMATRIX_TYPES) if imatrix else [])


def _parse_types(types: Sequence[str] | str | None, imatrix: bool) -> list[GGMLQuantizationType]:
    if types is None:
        names: list[str] = default_types(imatrix)
    elif isinstance(types, str):
        names = [t for t in (p.strip() for p in types.split(",")) if t]
    else:
        names = list(types)
    if not names:
        raise MeasureError("no candidate types given")
    out: list[GGMLQuantizationType] = []
    implemented = set(quants.implemented_types())
    for n in names:
        try:
            t = quants.parse_qtype(n)
        except (quants.QuantizationError, ValueError):
            mix = str(n).strip().upper().endswith(("_M", "_S", "_L", "_XL"))
            raise MeasureError(
                f"unknown type {str(n).strip()!r} in the candidate types"
                + (" (a llama.cpp mix such as Q4_K_M is not a type)" if mix else "")
                + f"; expected ggml types such as {', '.join(DEFAULT_TYPES[:4])} (`recipe types` lists them)"
            ) from None
        if t not in implemented:
            raise MeasureError(f"gguf-recipe cannot produce {ggml_name(t)}")
        if t not in out:
            out.append(t)
    return out


def _needs_weights(name: str, t: GGMLQuantizationType) -> bool:
    """Whether apply refuses ``t`` for tensor ``name`` without importance weights (as llama-quantize)."""
    return quants.spec_for(t).requires_imatrix or requires_imatrix(name, t, None)


@dataclass
class _Job:
    name: str
    shape: tuple[int, ...]
    source_type: GGMLQuantizationType
    n_rows: int
    k: int  # rows sampled
    weights_used: bool
    computed: tuple[GGMLQuantizationType, ...]  # candidates that need quantizing
    impossible: dict[str, str]
    task: TensorTask | None  # None when nothing needs quantizing

    @property
    def work(self) -> int:
        """Float32 bytes quantized (progress units): sampled values x computed types x 4."""
        ne0 = self.shape[0] if self.shape else 1
        return self.k * ne0 * len(self.computed) * 4


def imatrix_fingerprint(path: str | os.PathLike[str]) -> str:
    """The fingerprint a measurement keys an imatrix by: the sha256 of the file's bytes, the same
    value as :attr:`~gguf_recipe.executor.imatrix.Imatrix.fingerprint` (and a plan's imatrix
    fingerprint), computed without parsing the file."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _quantizable(model_path: Path) -> tuple[str, list[str], list[tuple[str, list[int]]]]:
    """The model fingerprint and, from a compiled trivial plan, the tensors a recipe can quantize."""
    try:
        info = read_model(model_path)
    except Exception as exc:
        raise MeasureError(f"{model_path}: cannot read the model: {exc}") from None
    try:
        plan = compile_model(_PROBE_RECIPE, info, lint=False).plan
    except RecipeError as exc:
        text = "; ".join(d.message for d in exc.diagnostics)
        raise MeasureError(f"{model_path}: cannot plan this model: {text}") from None
    measured = [
        (pt.source_name, list(pt.shape))
        for pt in plan.tensors
        if pt.action != "prune" and not pt.rule.startswith("not quantizable")
    ]
    names = {n for n, _ in measured}
    return info.header_sha256, [t.name for t in info.tensors if t.name not in names], measured


def measure_model(
    model_path: str | os.PathLike[str],
    *,
    imatrix: str | os.PathLike[str] | None = None,
    types: Sequence[str] | str | None = None,
    max_rows: int = DEFAULT_MAX_ROWS,
    seed: int = 0,
    threads: int | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool | ProgressReporter | None = None,
    max_values: int = DEFAULT_MAX_VALUES,
) -> Measurement:
    """Measure the quantization error of every quantizable tensor of ``model_path`` in every candidate type.

    ``imatrix``: weight the error (and quantize) with importance weights, as apply does; without one
    the metric is the plain squared error. ``types``: candidate types (names or a comma-separated
    string; default :func:`default_types`). ``max_rows`` / ``max_values``: rows sampled per tensor
    (see :func:`~gguf_recipe.measure.core.n_sample_rows`); ``seed`` picks them. ``threads``: worker
    processes (default: every core; 1 = in this process). ``out``: the JSON file (default: the cache,
    :func:`default_measure_path`). ``resume``: continue a saved partial measurement with the same
    model, imatrix, types and sampling, or reuse a complete one (also one that measured more types);
    otherwise start over. ``progress``: as ``apply_plan``.

    What the run did (resumed, reused, started over, coverage...) is in the result's ``notes``.
    Raises :class:`MeasureInterrupted` on Ctrl-C (the work done is saved) and :class:`MeasureError`.
    """
    t0 = time.monotonic()
    if max_rows < 1:
        raise ValueError("max_rows must be at least 1")
    if max_values < 1:
        raise ValueError("max_values must be at least 1")
    if threads is not None and threads < 1:
        raise ValueError("threads must be at least 1")
    path = Path(model_path)
    if not path.is_file():
        raise MeasureError(f"model not found: {path}")
    im: Imatrix | None = None
    if imatrix is not None:
        if not Path(imatrix).is_file():
            raise MeasureError(f"imatrix not found: {imatrix}")
        try:
            im = load_imatrix(imatrix)
        except ExecutorError as exc:
            raise MeasureError(str(exc)) from None
    qtypes = _parse_types(types, im is not None)
    model_fp, skipped, measured = _quantizable(path)

    fresh = Measurement(
        model=os.fspath(model_path),
        model_fingerprint=model_fp,
        imatrix=os.fspath(imatrix) if imatrix is not None else None,
        imatrix_fingerprint=im.fingerprint if im is not None else None,
        metric=METRIC_IMATRIX if im is not None else METRIC_PLAIN,
        sampling=Sampling(max_rows=max_rows, seed=seed, max_values=max_values),
        types=[ggml_name(t) for t in qtypes],
        n_elements=0,
        skipped=len(skipped),
    )
    target = Path(out) if out is not None else default_measure_path(model_fp, fresh.imatrix_fingerprint)
    notes: list[str] = []
    prior = _load_prior(target, fresh, resume, notes)
    if prior is not None and prior.complete:
        more = sorted(set(prior.types) - set(fresh.types))
        prior._notes[:] = [
            *notes,
            f"reused the complete measurement in {target}"
            + (f" (it also has {', '.join(more)})" if more else ""),
        ]
        return prior
    if prior is not None:
        fresh.types = list(prior.types)  # the same set; keep the saved order
        qtypes = [quants.parse_qtype(t) for t in prior.types]

    try:
        src = SourceModel(path)
    except (SourceFormatError, OSError) as exc:
        raise MeasureError(str(exc)) from None
    with src:
        if src.fingerprint != model_fp:
            raise MeasureError(f"{path}: the model changed while it was being read")
        fresh.n_elements = src.n_elements
        jobs = [_plan_tensor(src, name, im, qtypes, max_rows, max_values, seed) for name, _ in measured]
        notes += _input_notes(src, jobs, im)
        done: dict[str, TensorMeasurement] = dict(prior.tensors) if prior is not None else {}
        base_seconds = prior.seconds if prior is not None else 0.0
        todo = [j for j in jobs if j.name not in done]
        if prior is not None:
            notes.append(
                f"continued the measurement in {target}: {len(done)} of {len(jobs)} tensors were already done"
            )

        def snapshot(complete: bool) -> Measurement:
            m = fresh.model_copy()
            m.tensors = {j.name: done[j.name] for j in jobs if j.name in done}
            m.complete = complete
            m.seconds = round(base_seconds + time.monotonic() - t0, 3)
            return m

        reporter = make_progress(progress)
        workers = threads if threads is not None else (os.cpu_count() or 1)
        n_tasks = sum(1 for j in todo if j.task is not None)
        pool: _Pool | None = None
        ok = False
        last_save = -math.inf  # the first result is saved at once, then every _SAVE_EVERY_S
        try:
            if workers > 1 and n_tasks >= _PROCESS_MIN_TASKS:
                pool = _Pool(src, workers)
            reporter.start(len(jobs), sum(j.work for j in jobs), sum(j.work for j in jobs if j.name in done))
            index = {j.name: i for i, j in enumerate(jobs)}
            for job, sums in _results(todo, src, pool):
                reporter.tensor_start(index[job.name], job.name, job.work, _what(job))
                done[job.name] = _record(job, sums)
                reporter.advance(job.work)
                reporter.tensor_done(index[job.name], job.name)
                if time.monotonic() - last_save >= _SAVE_EVERY_S:
                    snapshot(False).save(target)
                    last_save = time.monotonic()
            src.check_unchanged()
            ok = True
        except KeyboardInterrupt as exc:
            if pool is not None:
                pool.close(cancel=True)
            snapshot(False).save(target)
            raise MeasureInterrupted(
                f"interrupted after {len(done)} of {len(jobs)} tensors; the measurement so far is saved in "
                f"{target}. Run the same command again to continue"
            ) from exc
        except BaseException as exc:
            if pool is not None:
                pool.close(cancel=True)
            if done:
                snapshot(False).save(target)
            if isinstance(exc, ExecutorError):
                raise MeasureError(str(exc)) from exc
            raise
        finally:
            if pool is not None:
                pool.close()
            reporter.finish(ok)
    result = snapshot(True)
    result.save(target)
    result._notes[:] = notes
    return result


def _load_prior(target: Path, fresh: Measurement, resume: bool, notes: list[str]) -> Measurement | None:
    """The saved measurement at ``target`` to continue (same key) or reuse (complete, same key or a
    superset of the types), else None (with a note saying why it is replaced)."""
    if not target.exists():
        return None
    if not resume:
        notes.append(f"started over (resume off); {target} is replaced")
        return None
    try:
        prior = Measurement.load(target)
    except (OSError, ValueError, ValidationError):
        notes.append(f"started over: {target} is not a readable measurement; it is replaced")
        return None
    if prior.key() == fresh.key():
        return prior
    if (
        prior.complete
        and prior.key()[:3] == fresh.key()[:3]
        and prior.sampling == fresh.sampling
        and set(fresh.types) <= set(prior.types)
    ):
        return prior
    what = []
    if prior.model_fingerprint != fresh.model_fingerprint:
        what.append("another model")
    if prior.imatrix_fingerprint != fresh.imatrix_fingerprint:
        what.append("another imatrix")
    if set(prior.types) != set(fresh.types):
        what.append("other types")
    if prior.sampling != fresh.sampling:
        what.append("other sampling")
    if prior.measure_version != fresh.measure_version:
        what.append("another format version")
    notes.append(
        f"started over: {target} holds a measurement of {', '.join(what) or 'something else'}; it is replaced"
    )
    return None


def _input_notes(src: SourceModel, jobs: Sequence[_Job], im: Imatrix | None) -> list[str]:
    """What the user should know about the inputs: imatrix coverage, requantized tensors, types that
    no tensor can take. Raises :class:`MeasureError` for an imatrix that fits no tensor at all."""
    notes: list[str] = []
    if im is not None:
        unweighted = [j.name for j in jobs if not j.weights_used]
        if jobs and len(unweighted) == len(jobs):
            raise MeasureError(
                f"the imatrix {im.path} has no entry for any of the {len(jobs)} tensors measured "
                f"(e.g. {jobs[0].name!r}); it was made for another model"
            )
        if unweighted:
            shown = ", ".join(unweighted[:3]) + (
                f" (+{len(unweighted) - 3} more)" if len(unweighted) > 3 else ""
            )
            notes.append(
                f"the imatrix has no entry for {len(unweighted)} of {len(jobs)} tensors ({shown}): "
                "their error is unweighted and apply quantizes them without weights too"
            )
    requant = sorted({ggml_name(j.source_type) for j in jobs if j.source_type not in FLOAT_TYPES})
    if requant:
        n = sum(1 for j in jobs if j.source_type not in FLOAT_TYPES)
        notes.append(
            f"{n} tensor(s) are already quantized ({', '.join(requant)}): their errors are measured against "
            "the dequantized values (apply needs --allow-requantize for them)"
        )
    if jobs:
        for t in dict.fromkeys(t for j in jobs for t in j.impossible):
            if all(t in j.impossible for j in jobs):
                notes.append(f"{t} fits no tensor: {jobs[0].impossible[t]}")
    return notes


def _plan_tensor(
    src: SourceModel,
    name: str,
    im: Imatrix | None,
    qtypes: Sequence[GGMLQuantizationType],
    max_rows: int,
    max_values: int,
    seed: int,
) -> _Job:
    info = src.tensors[name]
    shape = tuple(int(d) for d in info.shape)
    ne0 = info.ne0
    # as apply's _assign_imatrix: the weights are used whenever the imatrix has a fitting entry
    # (the token embedding's is ignored when it does not fit, as llama-quantize does)
    try:
        weights = im.weights_for(name, shape) if im is not None else None
    except ExecutorError as exc:
        raise MeasureError(str(exc)) from None
    computed: list[GGMLQuantizationType] = []
    impossible: dict[str, str] = {}
    for t in qtypes:
        block = quants.spec_for(t).block_size
        if ne0 % block:
            impossible[ggml_name(t)] = _no_fit_reason(t, ne0, block)
        elif t == info.qtype:
            continue  # keep: error 0, nothing to quantize
        elif weights is None and _needs_weights(name, t):
            impossible[ggml_name(t)] = (
                "needs importance weights (no imatrix given)"
                if im is None
                else "needs importance weights (the imatrix has no entry for this tensor)"
            )
        else:
            computed.append(t)
    n_rows = info.n_rows
    k = n_sample_rows(n_rows, ne0, max_rows, max_values) if computed else 0
    task = None
    if computed and k:
        task = TensorTask(name, make_sample(name, shape, k, seed, weights), tuple(computed))
    return _Job(name, shape, info.qtype, n_rows, k, weights is not None, tuple(computed), impossible, task)


def _no_fit_reason(t: GGMLQuantizationType, ne0: int, block: int) -> str:
    """Why ``t`` cannot hold rows of ``ne0`` values, and what a recipe asking for it gets instead."""
    why = f"row length {ne0} is not a multiple of {block}"
    try:
        got = fallback_type(t, ne0) if is_quantized(t) else None
    except NoFallbackError:
        got = None
    return f"{why} (a recipe asking for {ggml_name(t)} gets {ggml_name(got)})" if got is not None else why


def _what(job: _Job) -> str:
    return f"{job.k}/{job.n_rows} rows x {len(job.computed)} types"


def _record(job: _Job, sums: TensorSums | None) -> TensorMeasurement:
    """The tensor's entry: errors scaled from the sampled rows to the whole tensor (``n_rows / k``),
    bytes of the whole tensor in each type (exactly what apply writes: ``tensor_nbytes``)."""
    scale = job.n_rows / job.k if job.k else 0.0
    candidates: dict[str, Candidate] = {}
    impossible = dict(job.impossible)
    invalid = set(sums.invalid) if sums is not None else set()
    for t in job.computed:
        if t in invalid:
            impossible[ggml_name(t)] = (
                "its quantized values are not finite (values beyond the type's range); apply refuses it"
            )
            continue
        err = sums.errors[t] * scale if sums is not None else 0.0
        candidates[ggml_name(t)] = Candidate(bytes=tensor_nbytes(job.shape, t), error=err)
    # the source type itself: what `keep` writes, error 0
    candidates.setdefault(
        ggml_name(job.source_type), Candidate(bytes=tensor_nbytes(job.shape, job.source_type), error=0.0)
    )
    return TensorMeasurement(
        shape=list(job.shape),
        source_type=ggml_name(job.source_type),
        n_rows=job.n_rows,
        sampled_rows=job.k,
        imatrix=job.weights_used,
        reference=sums.reference * scale if sums is not None else 0.0,
        candidates=candidates,
        impossible=impossible,
    )


# ----------------------------------------------------------------------------------- running


def _results(
    jobs: Sequence[_Job], src: SourceModel, pool: _Pool | None
) -> Iterator[tuple[_Job, TensorSums | None]]:
    """Each job's sums, in job order; with a pool, up to ``pool.window`` tasks are in flight."""
    if pool is None:
        for job in jobs:
            yield job, measure_task(src, job.task) if job.task is not None else None
        return
    in_flight: deque[tuple[_Job, Future[TensorSums] | None]] = deque()

    def take() -> tuple[_Job, TensorSums | None]:
        job, fut = in_flight.popleft()
        return job, (pool.result(fut) if fut is not None else None)

    for job in jobs:
        in_flight.append((job, pool.submit(job.task) if job.task is not None else None))
        while len(in_flight) > pool.window:
            yield take()
    while in_flight:
        yield take()


def _worker_run(task: TensorTask) -> TensorSums:
    return measure_task(worker_source(), task)


class _Pool:
    """Worker processes (forked on Linux: they start in milliseconds with everything imported), each
    opening the model itself."""

    def __init__(self, src: SourceModel, workers: int) -> None:
        ctx = (
            multiprocessing.get_context("fork")
            if sys.platform.startswith("linux")
            else multiprocessing.get_context("spawn")
        )
        self.window = 2 * workers
        self._pool = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=worker_init,
            initargs=(str(src.path), src.fingerprint, os.getpid()),
        )

    def submit(self, task: TensorTask) -> Future[TensorSums]:
        try:
            return self._pool.submit(_worker_run, task)
        except BrokenProcessPool as exc:
            raise _died(exc) from exc

    def result(self, fut: Future[TensorSums]) -> TensorSums:
        try:
            return fut.result()
        except BrokenProcessPool as exc:
            raise _died(exc) from exc

    def close(self, *, cancel: bool = False) -> None:
        self._pool.shutdown(wait=True, cancel_futures=cancel)


def _died(exc: BaseException) -> MeasureError:
    err = MeasureError(
        "a measuring worker process died unexpectedly (out of memory, or killed); run again to continue"
    )
    err.__cause__ = exc
    return err


# ----------------------------------------------------------------------------------- reuse


def find_measurement(
    model_path: str | os.PathLike[str],
    imatrix_path: str | os.PathLike[str] | None = None,
    types: Sequence[str] | str | None = None,
) -> Measurement | None:
    """The complete cached measurement of this model (and imatrix) from :func:`measure_model`'s default
    location, or ``None``. ``types`` (names or a comma-separated string): it must cover these types
    too (any sampling is accepted). The imatrix is matched by :func:`imatrix_fingerprint`."""
    try:
        model_fp = read_model(Path(model_path)).header_sha256
        im_fp = imatrix_fingerprint(imatrix_path) if imatrix_path is not None else None
    except Exception:
        return None
    target = default_measure_path(model_fp, im_fp)
    try:
        m = Measurement.load(target)
    except (OSError, ValueError, ValidationError):
        return None
    if not m.complete or m.model_fingerprint != model_fp or m.imatrix_fingerprint != im_fp:
        return None
    if types is not None:
        try:
            names = [t.strip() for t in types.split(",") if t.strip()] if isinstance(types, str) else types
            wanted = {ggml_name(quants.parse_qtype(t)) for t in names}
        except (quants.QuantizationError, ValueError):
            return None
        if not wanted <= set(m.types):
            return None
    return m
