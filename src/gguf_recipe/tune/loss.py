"""What a candidate type is predicted to cost in model quality, per tensor.

Two estimates, from the measurement (:mod:`gguf_recipe.measure`):

* **calibrated** (``recipe measure --calibrate TEXT``): llama.cpp measured the KL divergence of the
  model with only this tensor quantized to a probe type. KLD grows with the squared weight error for
  small perturbations, so a candidate's loss is ``kld_probe * error(candidate) / error(probe)``, and
  the losses of different tensors add up. This is in KLD units and ranks tensors by what they do to
  the output, not by their weights. A tensor the calibration did not probe (``--calibrate`` with a
  layer stride) gets its surrogate scaled by its family's KLD-per-surrogate ratio interpolated
  linearly between the nearest probed layers (the median ratio of all probed tensors when its
  family has none).
* **surrogate** (no calibration): the tensor's relative weight error (weighted by the importance
  matrix when there is one) times its number of weights: every weight's relative error counts the
  same. Cheap and usually sensible, but blind to how much each tensor matters downstream. (The
  absolute error ranks worse: on SmolLM2 at Q4_K_M's size it gave a 5% higher KLD than llama.cpp's
  mix, the relative one 12% lower.)
"""

from __future__ import annotations

import itertools
import math
import statistics
from typing import Literal

from ..measure import Measurement, TensorMeasurement
from ..measure.calibrate import Calibration
from .emit import family_of

__all__ = ["LossKind", "loss_kind", "tensor_losses"]

LossKind = Literal["kld", "surrogate"]


def loss_kind(calibration: Calibration | None) -> LossKind:
    return "kld" if calibration is not None else "surrogate"


def tensor_losses(m: Measurement, calibration: Calibration | None = None) -> dict[str, dict[str, float]]:
    """Predicted loss of every measured candidate of every tensor (name → type → loss)."""
    surrogate = {name: _surrogate(tm) for name, tm in m.tensors.items()}
    if calibration is None:
        return surrogate
    out: dict[str, dict[str, float]] = {}
    ratios: dict[str, float] = {}
    for name, tm in m.tensors.items():
        probe = calibration.probes.get(name)
        if probe is None or probe.type not in tm.candidates:
            continue
        ref = tm.candidates[probe.type].error
        if ref <= 0:
            continue
        scale = max(probe.kld, 0.0) / ref
        out[name] = {t: c.error * scale for t, c in tm.candidates.items()}
        s = surrogate[name][probe.type]
        if s > 0:
            ratios[name] = max(probe.kld, 0.0) / s
    fill = statistics.median(ratios.values()) if ratios else 1.0
    by_family: dict[str, list[tuple[int, float]]] = {}
    for name, r in ratios.items():
        fam, layer = family_of(name)
        if layer is not None:
            by_family.setdefault(fam, []).append((layer, r))
    for name in m.tensors:
        if name not in out:
            fam, layer = family_of(name)
            known = sorted(by_family.get(fam, []))
            ratio = _interpolate(known, layer) if known and layer is not None else fill
            out[name] = {t: v * ratio for t, v in surrogate[name].items()}
    return out


def _interpolate(points: list[tuple[int, float]], x: int) -> float:
    """Piecewise-linear through ``points`` (sorted by x), constant beyond the ends."""
    if x <= points[0][0]:
        return points[0][1]
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return points[-1][1]


def _surrogate(tm: TensorMeasurement) -> dict[str, float]:
    norm = math.prod(int(d) for d in tm.shape) / tm.reference if tm.reference > 0 else 0.0
    return {t: c.error * norm for t, c in tm.candidates.items()}
