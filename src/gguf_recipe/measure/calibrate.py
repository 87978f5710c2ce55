"""Calibration: what one tensor's quantization error does to the model's output, measured by llama.cpp.

A weight error is only a surrogate for quality: the same relative error costs much more in some
tensors (the tied embeddings, an early ``ffn_down``) than in others. ``calibrate_model`` measures it
the way ExLlamaV3 measures its layers, but end to end with llama.cpp: on a working copy of the source
model, one tensor at a time is replaced by its quantize → dequantize round trip in a *probe* type
(``q4_0`` where the row length allows, quantized as apply would, with the imatrix when given), the
copy is evaluated on a short text, and the KL divergence from the unmodified model's logits is
recorded; then the tensor is restored. For the small perturbations of quantization, KL divergence
grows with the (imatrix-weighted) squared weight error and the effects of different tensors add up,
so ``recipe tune`` predicts a candidate's cost as ``kld(probe) * error(candidate) / error(probe)``
with both errors from the same measurement.

The result is saved (atomically, after every few probes) next to the measurement, keyed by the model
and imatrix fingerprints and the text; an interrupted calibration continues where it stopped.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType
from gguf import quants as gguf_quants
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .. import quants
from ..executor.imatrix import Imatrix, load_imatrix
from ..executor.progress import ProgressReporter, make_progress
from ..executor.source import SourceModel
from ..llamacpp import block_number
from ..recipe.typenames import ggml_name
from .result import Measurement, default_cache_dir

if TYPE_CHECKING:
    from ..evaluate import ReferenceLogits
from .run import MeasureError, MeasureInterrupted, imatrix_fingerprint

__all__ = [
    "CALIBRATION_VERSION",
    "DEFAULT_PROBES",
    "Calibration",
    "Probe",
    "calibrate_model",
    "default_calibration_path",
    "find_calibration",
]

CALIBRATION_VERSION = 1
# the probe of a tensor: the first of these its measurement has (q4_0 fits rows of 32)
DEFAULT_PROBES = ("q4_0", "iq4_nl", "q5_0", "q8_0")
_FLOAT_SOURCES = {
    GGMLQuantizationType.F16: np.float16,
    GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.BF16: None,  # written through _to_bf16
}
_SAVE_EVERY_S = 10.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Probe(_Strict):
    type: str = Field(description="the probe type the tensor was quantized to")
    kld: float = Field(description="mean KL divergence of the model with only this tensor quantized")


class Calibration(_Strict):
    calibration_version: int = CALIBRATION_VERSION
    model_fingerprint: str
    imatrix_fingerprint: str | None = None
    text_name: str
    text_sha256: str
    n_ctx: int
    n_chunks: int
    probe_types: list[str]
    complete: bool = False
    seconds: float = 0.0
    probes: dict[str, Probe] = Field(default_factory=dict)

    def key(self) -> tuple[object, ...]:
        return (
            self.calibration_version,
            self.model_fingerprint,
            self.imatrix_fingerprint,
            self.text_sha256,
            self.n_ctx,
            self.n_chunks,
            tuple(self.probe_types),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Calibration:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))

    def save(self, path: str | os.PathLike[str]) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(self.model_dump_json(indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)


def default_calibration_path(model_fp: str, imatrix_fp: str | None, text_sha256: str) -> Path:
    """``<cache>/<model_fp[:16]>-<imatrix_fp[:16] or 'none'>-calibration-<text[:12]>.json``."""
    im = imatrix_fp[:16] if imatrix_fp else "none"
    return default_cache_dir() / f"{model_fp[:16]}-{im}-calibration-{text_sha256[:12]}.json"


def find_calibration(model_fp: str, imatrix_fp: str | None) -> Calibration | None:
    """The newest complete cached calibration of this model and imatrix (any text), or None."""
    im = imatrix_fp[:16] if imatrix_fp else "none"
    found = sorted(
        default_cache_dir().glob(f"{model_fp[:16]}-{im}-calibration-*.json"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for p in found:
        try:
            c = Calibration.load(p)
        except (OSError, ValueError, ValidationError):
            continue
        if c.complete and c.model_fingerprint == model_fp and c.imatrix_fingerprint == imatrix_fp:
            return c
    return None


def calibrate_model(
    model_path: str | os.PathLike[str],
    text: str,
    measurement: Measurement,
    *,
    text_name: str = "text",
    imatrix: str | os.PathLike[str] | None = None,
    n_ctx: int = 512,
    n_chunks: int = 2,
    probe_types: Sequence[str] = DEFAULT_PROBES,
    names: Sequence[str] | None = None,
    layer_stride: int = 1,
    threads: int | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = True,
    progress: bool | ProgressReporter | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> Calibration:
    """Probe every measured tensor of ``measurement`` (or only ``names``) on ``text``: see the module
    docstring. Needs llama-cpp-python (``gguf-recipe[eval]``) and a single-file F16/BF16/F32 source.

    ``layer_stride``: probe the tensors of every ``layer_stride``-th block only (and of the last block
    and everything outside blocks); ``recipe tune`` interpolates the others' sensitivity from the
    probed layers of the same tensor family (a k-fold cheaper calibration of a deep model).
    ``workdir``: where the working copy of the model goes (default: /dev/shm when it has room, else
    the temp folder); it is removed at the end."""
    from ..evaluate import EvalError, compute_reference

    t0 = time.monotonic()
    path = Path(model_path)
    im: Imatrix | None = load_imatrix(imatrix) if imatrix is not None else None
    im_fp = imatrix_fingerprint(imatrix) if imatrix is not None else None
    if measurement.model_fingerprint != _fingerprint(path):
        raise MeasureError("the measurement was made for another model; measure this one first")
    if measurement.imatrix_fingerprint != im_fp:
        raise MeasureError("the measurement was made with another imatrix (or without one); measure again")
    text_sha = hashlib.sha256(text.encode("utf-8")).hexdigest()
    fresh = Calibration(
        model_fingerprint=measurement.model_fingerprint,
        imatrix_fingerprint=im_fp,
        text_name=text_name,
        text_sha256=text_sha,
        n_ctx=n_ctx,
        n_chunks=n_chunks,
        probe_types=list(probe_types),
    )
    target = (
        Path(out) if out is not None else default_calibration_path(fresh.model_fingerprint, im_fp, text_sha)
    )
    done = _prior(target, fresh) if resume else {}
    if layer_stride < 1:
        raise ValueError("layer_stride must be at least 1")
    chosen = (
        list(measurement.tensors) if names is None else [n for n in measurement.tensors if n in set(names)]
    )
    wanted = _strided(chosen, layer_stride)
    todo = [n for n in wanted if n not in done]

    def snapshot(complete: bool) -> Calibration:
        c = fresh.model_copy()
        # every probe made so far (also those of a finer stride before), in the measurement's order
        c.probes = {n: done[n] for n in measurement.tensors if n in done}
        c.complete = complete
        c.seconds = round(time.monotonic() - t0, 3)
        return c

    if not todo:
        result = snapshot(True)
        result.save(target)
        return result
    try:
        ref = compute_reference(path, text, n_ctx=n_ctx, n_chunks=n_chunks, threads=threads)
    except EvalError as exc:
        raise MeasureError(str(exc)) from None
    reporter = make_progress(progress)
    ok = False
    with SourceModel(path) as src:
        if len(src.paths) > 1:
            raise MeasureError("calibration needs a single-file model (merge the split first)")
        with _working_copy(path, workdir) as copy, open(copy, "r+b") as fh:
            reporter.start(len(wanted), len(wanted), len(wanted) - len(todo))
            last_save = time.monotonic()
            try:
                for i, name in enumerate(todo):
                    reporter.tensor_start(i, name, 1, "probe")
                    probe = _probe_type(measurement, name, probe_types)
                    done[name] = Probe(
                        type=probe, kld=_probe_kld(src, fh, copy, name, probe, im, ref, threads)
                    )
                    reporter.advance(1)
                    reporter.tensor_done(i, name)
                    if time.monotonic() - last_save >= _SAVE_EVERY_S:
                        snapshot(False).save(target)
                        last_save = time.monotonic()
                ok = True
            except KeyboardInterrupt as exc:
                snapshot(False).save(target)
                raise MeasureInterrupted(
                    f"interrupted after {len(done)} of {len(wanted)} probes; saved in {target}. "
                    "Run the same command again to continue"
                ) from exc
            except EvalError as exc:
                raise MeasureError(str(exc)) from None
            finally:
                reporter.finish(ok)
    result = snapshot(True)
    result.save(target)
    return result


def _strided(names: list[str], stride: int) -> list[str]:
    if stride == 1:
        return names
    layers = [block_number(n) for n in names]
    last = max((b for b in layers if b is not None), default=0)
    return [n for n, b in zip(names, layers, strict=True) if b is None or b % stride == 0 or b == last]


def _fingerprint(path: Path) -> str:
    from ..model.reader import read_model

    return read_model(path).header_sha256


def _prior(target: Path, fresh: Calibration) -> dict[str, Probe]:
    try:
        prior = Calibration.load(target)
    except (OSError, ValueError, ValidationError):
        return {}
    return dict(prior.probes) if prior.key() == fresh.key() else {}


def _probe_type(m: Measurement, name: str, probe_types: Sequence[str]) -> str:
    cands = m.tensors[name].candidates
    for t in probe_types:
        if t in cands and cands[t].error > 0:
            return t
    raise MeasureError(f"{name}: none of the probe types {', '.join(probe_types)} was measured for it")


@contextmanager
def _working_copy(path: Path, workdir: str | os.PathLike[str] | None) -> Iterator[Path]:
    size = path.stat().st_size
    if workdir is None:
        shm = Path("/dev/shm")
        workdir = shm if shm.is_dir() and shutil.disk_usage(shm).free > 2 * size else None
    tmp = Path(tempfile.mkdtemp(prefix="gguf-recipe-calibrate-", dir=workdir))
    try:
        copy = tmp / path.name
        shutil.copyfile(path, copy)
        yield copy
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _probe_kld(
    src: SourceModel,
    fh: BinaryIO,
    copy: Path,
    name: str,
    probe: str,
    im: Imatrix | None,
    ref: ReferenceLogits,
    threads: int | None,
) -> float:
    from ..evaluate import kld_against

    info = src.tensors[name]
    if info.qtype not in _FLOAT_SOURCES:
        raise MeasureError(
            f"{name}: calibration needs an F16, BF16 or F32 source, found {ggml_name(info.qtype)}"
        )
    original = src.read_raw_rows(info, 0, info.n_rows).tobytes()
    x = src.read_f32_rows(info, 0, info.n_rows, allow_requantize=True)
    shape = tuple(int(d) for d in info.shape)
    degraded = _round_trip(x, name, shape, quants.parse_qtype(probe), im)
    offset = src.headers[0].data_offset + info.offset
    _write_at(fh, offset, _encode(degraded, info.qtype))
    try:
        return float(kld_against(copy, ref, threads=threads).kld_mean)
    finally:
        _write_at(fh, offset, original)


def _round_trip(
    x: npt.NDArray[np.float32],
    name: str,
    shape: tuple[int, ...],
    t: GGMLQuantizationType,
    im: Imatrix | None,
) -> npt.NDArray[np.float32]:
    """Quantize → dequantize the whole tensor as apply would (per matrix with its importance weights)."""
    weights = im.weights_for(name, shape) if im is not None else None
    rows_per_mat = int(shape[1]) if len(shape) >= 2 else 1
    out = np.empty_like(x)
    n_mats = max(x.shape[0] // rows_per_mat, 1)
    for k in range(n_mats):
        rows = slice(k * rows_per_mat, (k + 1) * rows_per_mat)
        w = weights[k] if weights is not None else None
        q = quants.quantize(x[rows], t, w)
        out[rows] = np.asarray(gguf_quants.dequantize(q, t), dtype=np.float32).reshape(x[rows].shape)
    return out


def _encode(x: npt.NDArray[np.float32], qtype: GGMLQuantizationType) -> bytes:
    if qtype == GGMLQuantizationType.BF16:
        bits = x.astype(np.float32).view(np.uint32)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16  # round to nearest even, as ggml
        return rounded.astype(np.uint16).tobytes()
    dtype = _FLOAT_SOURCES[qtype]
    assert dtype is not None
    return x.astype(dtype).tobytes()


def _write_at(fh: BinaryIO, offset: int, data: bytes) -> None:
    fh.seek(offset)
    fh.write(data)
    fh.flush()
