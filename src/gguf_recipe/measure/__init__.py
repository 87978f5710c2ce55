"""Measure: the quantization error of every quantizable tensor in every candidate type.

``measure_model(model, imatrix=..., types=...)`` writes (and returns) a :class:`Measurement`, keyed
by the model and imatrix fingerprints; ``find_measurement(model, imatrix)`` finds a finished one in the
cache for ``recipe tune``. A stage on top of the compiler, the executor and the quantizers: nothing
below imports it.
"""

from __future__ import annotations

from .core import MIN_ROWS, n_sample_rows, sample_rows
from .result import (
    MEASURE_VERSION,
    METRIC_IMATRIX,
    METRIC_PLAIN,
    Candidate,
    Measurement,
    Sampling,
    TensorMeasurement,
    default_cache_dir,
    default_measure_path,
)
from .run import (
    DEFAULT_MAX_ROWS,
    DEFAULT_MAX_VALUES,
    DEFAULT_TYPES,
    IMATRIX_TYPES,
    MeasureError,
    MeasureInterrupted,
    default_types,
    find_measurement,
    imatrix_fingerprint,
    measure_model,
)

__all__ = [
    "DEFAULT_MAX_ROWS",
    "DEFAULT_MAX_VALUES",
    "DEFAULT_TYPES",
    "IMATRIX_TYPES",
    "MEASURE_VERSION",
    "METRIC_IMATRIX",
    "METRIC_PLAIN",
    "MIN_ROWS",
    "Candidate",
    "MeasureError",
    "MeasureInterrupted",
    "Measurement",
    "Sampling",
    "TensorMeasurement",
    "default_cache_dir",
    "default_measure_path",
    "default_types",
    "find_measurement",
    "imatrix_fingerprint",
    "measure_model",
    "n_sample_rows",
    "sample_rows",
]
