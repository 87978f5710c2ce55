"""The measurement file: per tensor and candidate type, the bytes it takes and the error it makes.

The JSON layout is a contract with ``recipe tune``; field names do not change within a
``measure_version``. Floats are written by pydantic (shortest repr), so a file is byte-identical
whenever the measured numbers are.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from .. import __version__

__all__ = [
    "MEASURE_VERSION",
    "METRIC_IMATRIX",
    "METRIC_PLAIN",
    "Candidate",
    "Measurement",
    "Sampling",
    "TensorMeasurement",
    "default_cache_dir",
    "default_measure_path",
]

MEASURE_VERSION = 1
METRIC_IMATRIX = "imatrix-weighted squared error"
METRIC_PLAIN = "squared error (no imatrix)"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Candidate(_Strict):
    bytes: int = Field(description="tensor bytes in this type: exactly what apply writes")
    error: float = Field(
        description="estimated sum over the whole tensor of w_j * (x_j - dequant(quant(x))_j)^2 "
        "(w = importance weights, or 1 without an imatrix entry)"
    )


class TensorMeasurement(_Strict):
    shape: list[int] = Field(description="ggml order: ne0 (row length) first")
    source_type: str
    n_rows: int = Field(description="rows of all matrices (experts) together")
    sampled_rows: int = Field(description="rows measured; equal to n_rows when the error is exact")
    imatrix: bool = Field(description="weighted (and quantized) with importance weights")
    reference: float = Field(
        description="estimated sum over the tensor of w_j * x_j^2 (error / reference = relative error)"
    )
    candidates: dict[str, Candidate]
    impossible: dict[str, str] = Field(
        default_factory=dict, description="requested type -> why it cannot be used"
    )

    def relative_error(self, qtype: str) -> float:
        c = self.candidates[qtype]
        return c.error / self.reference if self.reference > 0 else 0.0


class Sampling(_Strict):
    max_rows: int
    seed: int
    max_values: int = Field(
        description="at most this many values (rows x ne0) measured per tensor, but at least 16 rows"
    )


class Measurement(_Strict):
    measure_version: int = MEASURE_VERSION
    tool_version: str = __version__
    model: str
    model_fingerprint: str
    imatrix: str | None = None
    imatrix_fingerprint: str | None = None
    metric: str
    sampling: Sampling
    types: list[str]
    complete: bool = False
    seconds: float = 0.0
    n_elements: int
    skipped: int = Field(
        description="tensors that are not quantized (norms, 1-D tensors...) and not measured"
    )
    tensors: dict[str, TensorMeasurement] = Field(default_factory=dict)

    # not saved: what this run did (resumed, started over...), for the CLI to show
    _notes: list[str] = PrivateAttr(default_factory=list)
    _path: Path | None = PrivateAttr(default=None)

    @property
    def notes(self) -> list[str]:
        return self._notes

    @property
    def path(self) -> Path | None:
        """Where it was loaded from or last saved to."""
        return self._path

    def key(self) -> tuple[object, ...]:
        """What must match for a saved measurement to be continued or reused (the types as a set)."""
        return (
            self.measure_version,
            self.model_fingerprint,
            self.imatrix_fingerprint,
            tuple(sorted(self.types)),
            self.sampling.max_rows,
            self.sampling.seed,
            self.sampling.max_values,
        )

    def to_json(self) -> str:
        return self.model_dump_json(indent=1)

    @classmethod
    def from_json(cls, text: str) -> Measurement:
        return cls.model_validate_json(text)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Measurement:
        p = Path(path)
        m = cls.from_json(p.read_text(encoding="utf-8"))
        m._path = p
        return m

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write atomically (a temp file beside it, then rename), creating the folder if needed."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(self.to_json() + "\n", encoding="utf-8")
            os.replace(tmp, p)
        finally:
            if tmp.exists():
                tmp.unlink()
        self._path = p


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/gguf-recipe/measure`` (default ``~/.cache/gguf-recipe/measure``)."""
    base = os.environ.get("XDG_CACHE_HOME") or ""
    root = Path(base) if base.strip() else Path.home() / ".cache"
    return root / "gguf-recipe" / "measure"


def default_measure_path(model_fingerprint: str, imatrix_fingerprint: str | None) -> Path:
    """The cache file of a model (and imatrix): ``<model_fp[:16]>-<imatrix_fp[:16] or 'none'>.json``."""
    im = imatrix_fingerprint[:16] if imatrix_fingerprint else "none"
    return default_cache_dir() / f"{model_fingerprint[:16]}-{im}.json"
